"""repro/models package."""
