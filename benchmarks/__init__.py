"""kdcache speed benchmarks: ``python -m benchmarks.run`` (see README, Speed)."""
