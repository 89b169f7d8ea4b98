"""The trainer the training Job runs: `train()` and the `modelloop-train` CLI (cli.py)."""
from .errors import EXIT_CODES, TrainingError
from .trainer import train

__all__ = ["EXIT_CODES", "TrainingError", "train"]
