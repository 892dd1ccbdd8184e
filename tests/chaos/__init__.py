"""The chaos run: the whole system under load and injected faults, then a ledger check."""
