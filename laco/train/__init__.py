"""Staged training of LaCo MLLMs with the Hugging Face Trainer (CPU to multi-GPU through accelerate)."""

from .freezing import count_parameters, part_parameters, set_trainable
from .trainer import LacoTrainer, train

__all__ = ["LacoTrainer", "count_parameters", "part_parameters", "set_trainable", "train"]
