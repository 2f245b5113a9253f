"""rewatch-trl."""
