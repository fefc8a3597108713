"""repro/pdes package."""
