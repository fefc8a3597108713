"""repro/data package."""
