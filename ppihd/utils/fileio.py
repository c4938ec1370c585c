"""Atomic file writes: write to ``<path>.tmp<pid><suffix>`` then ``os.replace``, so a reader (or a resumed run)
never sees a half-written file. A killed process leaves only ``*.tmp*`` files, which readers ignore."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


def tmp_name(path: str, suffix: str = "") -> str:
    """The temporary name :func:`atomic_path` writes before the move: ``<path>.tmp<pid><suffix>``."""
    return f"{path}.tmp{os.getpid()}{suffix}"


def save_figure(fig, path: str) -> str:
    """Save a matplotlib figure as PNG atomically (tight bounding box) and close it. Returns ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name beside ``path``; on success move it onto ``path``, on error delete it.

    ``suffix`` keeps an extension some writers need (e.g. ``.png`` for matplotlib).
    """
    tmp = tmp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
