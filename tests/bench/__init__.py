"""The pipeline benchmark (`make bench`): throughput, latency and CPU per order, printed as numbers."""
