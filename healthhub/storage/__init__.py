"""Resource storage: typed tables, the repository (only writer) and Bundle processing."""
