"""Array conversions shared by the training data, the evaluator and the inference driver.

One definition each, so training, evaluation and deployment see the same numbers:

- :data:`INV255` / :func:`to_unit` / :func:`to_model_input`: uint8 bytes -> float32 in [0, 1] as
  ``float32(x) * float32(1/255)`` (no mean/std; docs/data.md). This differs from ``x / 255`` by one ulp in 126
  of the 256 byte values; the product is what the training data set has always used.
- :func:`sigmoid`: logits -> probabilities in float64.
"""
from __future__ import annotations

import numpy as np

#: float32(1/255): a uint8 byte x becomes float32(x) * INV255 (on the device too: ``ppihd.data.dataset``)
INV255 = np.float32(1.0 / 255.0)


def to_unit(u8: np.ndarray) -> np.ndarray:
    """uint8 array of any shape -> float32 in [0, 1] (``float32(x) * INV255``), same shape."""
    return np.asarray(u8).astype(np.float32) * INV255


def to_model_input(slices_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[S, H, W, 3]`` (cache / preprocessing layout) -> contiguous float32 ``[S, 3, H, W]`` in [0, 1]."""
    return to_unit(np.ascontiguousarray(np.asarray(slices_u8).transpose(0, 3, 1, 2)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64 (any shape)."""
    x = np.asarray(x, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x))
