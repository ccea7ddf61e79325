"""Online store health checks (freshness, coverage, eviction) and their metrics."""
