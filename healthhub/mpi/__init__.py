"""The master patient index: links the Patient records of one person kept by several hospitals."""
