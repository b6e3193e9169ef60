"""Rate limits shared by every process: counters in Redis or the database (counters.py, models.py)."""
