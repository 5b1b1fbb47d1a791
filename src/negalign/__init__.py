"""negalign: align language models with human-annotated negatives (D2O, rDPO, baselines)."""

__version__ = "0.1.0"
