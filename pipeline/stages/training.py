"""What the two training stages share: the learning-rate schedule.
"""
from __future__ import annotations


def poly_lr(base: float, step: int, total: int, power: float = 0.9, min_lr: float = 0.0) -> float:
    return (base - min_lr) * (1 - step / max(total, 1)) ** power + min_lr
