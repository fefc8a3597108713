"""repro/grid package."""
