"""polygon."""
