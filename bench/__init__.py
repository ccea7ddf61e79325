"""Benchmarks: our throughput next to a limit measured in the same run (`make bench`)."""
