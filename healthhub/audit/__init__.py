"""The tamper-evident audit trail (CONTRACT §9): who did what, when, from where, with what outcome."""
