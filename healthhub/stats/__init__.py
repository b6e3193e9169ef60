"""Public-health statistics: counts grouped in SQL, published with small cells suppressed (CONTRACT §7)."""
