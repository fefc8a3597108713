"""repro: pre-trained neural operators, their scaling and transfer (Subramanian et al. 2023)."""

__version__ = "0.1.0"
