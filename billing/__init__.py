"""Billing: consumes new orders, consults fraud, charges the buyer once, reports the outcome."""
