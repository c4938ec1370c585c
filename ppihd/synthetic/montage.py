"""A figure of the synthetic phantoms (docs/figures/synthetic_montage.png, ``tools/make_demo_data.py --montage``)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .lesions import SUBTYPES
from .phantom import SeriesPhantom, SliceRender, make_series


def save_montage(path: str, seed: int = 0, size: int = 512, per_subtype: int = 3) -> str:
    """Brain-window (40/80) montage (PNG): one row per subtype with ``per_subtype`` positive slices as
    written (noise included) plus the first one again with the ground-truth blood outlined in red; a last
    row of normal slices at several heights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = per_subtype + 1
    nrow = len(SUBTYPES) + 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.3 * nrow))

    def show(ax, sl: SliceRender, title: str, outline: Optional[str] = None) -> None:
        ax.imshow(np.clip(sl.hu / 80.0, 0, 1), cmap="gray", vmin=0, vmax=1)   # brain window 40/80
        if outline is not None:
            cnt, _ = cv2.findContours(sl.lesions[outline].astype(np.uint8), cv2.RETR_EXTERNAL,
                                      cv2.CHAIN_APPROX_NONE)
            for c in cnt:
                c = np.vstack([c[:, 0, :], c[:1, 0, :]])
                ax.plot(c[:, 0], c[:, 1], color="red", lw=0.6)
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for i, st in enumerate(SUBTYPES):
        picked: List[Tuple[SeriesPhantom, int]] = []
        s = 0
        while len(picked) < per_subtype and s < 200:
            ph = make_series(seed * 1000 + 97 * i + s, size=size, n_slices=30, subtypes=[st])
            ks = [k for k in range(ph.n_slices) if st in ph.render(k, noise=False).lesions]
            if ks:
                picked.append((ph, ks[len(ks) // 2]))
            s += 1
        for j, (ph, k) in enumerate(picked):
            show(axes[i, j], ph.render(k), f"{st} (slice {k}/{ph.n_slices})")
        if picked:
            ph, k = picked[0]
            show(axes[i, ncol - 1], ph.render(k), f"{st}: truth in red", outline=st)
    ph0 = make_series(seed * 1000 + 999, size=size, n_slices=30, hemorrhage=False)
    for j, k in enumerate(np.linspace(2, ph0.n_slices - 3, ncol).astype(int)):
        show(axes[nrow - 1, j], ph0.render(int(k)), f"normal (slice {int(k)}/{ph0.n_slices})")
    fig.suptitle("ppihd synthetic head-CT phantoms, brain window 40/80", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
