"""Benchmarks for wa-relay: each scenario prints figures (run with ``make bench``)."""
