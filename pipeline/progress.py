"""Long stages are generators that yield :class:`Progress` and return their result.

Why generators: the CLI drives them with a tqdm bar, and napari's generator thread workers get progress for free
and can cancel between two steps (``close()`` raises ``GeneratorExit`` at the ``yield``, where each stage keeps
its last checkpoint). :func:`run` drives one to the end for plain Python use.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    stage: str
    step: int
    total: int
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    notice: str = ""  # told to the user once: a notification in the plugin, a line in the CLI

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


Job = Generator[Progress, None, T]


def run(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Drive a stage generator to the end and return its result."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)
