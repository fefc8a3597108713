"""repro/train package."""
