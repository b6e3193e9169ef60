"""HealthHub benchmark harness (``make bench`` / ``python bench/run.py``); see bench/RESULTS.md."""
