"""Dropout masks for eager training on CPU, drawn by NumPy's PCG64 generator.

Paddle's CPU dropout kernel draws each value from its Mersenne twister one at a time: 12 ms
(forward and backward) for the (2, 4, 384, 384) attention probabilities of a 2x384 batch, where a
float32 mask from PCG64 and one multiply take 6 (24 such layers a step in MobileBERT). The
generator is seeded with the run's seed (training.rundir.seed_dropout) and its state is saved and
restored with the other generators' in a checkpoint, so a resumed run draws the same masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_generator = np.random.Generator(np.random.PCG64(0))


def seed(value: int) -> None:
    global _generator
    _generator = np.random.Generator(np.random.PCG64(value))


def state() -> dict[str, Any]:
    """The generator's state as JSON values (PCG64's 128-bit integers are Python ints)."""
    return _generator.bit_generator.state


def set_state(saved: dict[str, Any]) -> None:
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = saved           # raises ValueError / TypeError / KeyError when malformed
    global _generator
    _generator = generator


def scaled_mask(shape, probability: float) -> np.ndarray:
    """float32 of `shape`: 0 with `probability`, else 1 / (1 - probability) (inverted dropout)."""
    uniform = _generator.random(tuple(shape), dtype=np.float32)
    return np.where(uniform >= probability, np.float32(1.0 / (1.0 - probability)), np.float32(0.0))
