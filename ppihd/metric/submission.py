"""Score a Kaggle-format submission (``ID,Label`` rows ``ID_<sop>_<label>``) against labels with the competition
metric (:func:`ppihd.metric.log_loss.weighted_log_loss`), and check its IDs against the sample submission.

Labels may be Kaggle's long format (``stage_2_train.csv``-style ``ID,Label``; exact duplicate rows, which RSNA's
files contain, are dropped, conflicting duplicates are an error) or the synthetic set's
``synthetic_test_labels.csv`` (same format). A wide table (``sop_uid`` + the six label columns) is accepted too.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import LABEL_WEIGHTS, LABELS
from ..postprocess.tables import id_label_table
from .log_loss import per_class_log_loss, weighted_log_loss


class SubmissionError(ValueError):
    """A submission or label file that cannot be scored (format, IDs, values)."""


def _examples(ids: Sequence[str], n: int = 5) -> str:
    ids = list(ids)
    more = f" and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(map(str, ids[:n])) + more


def _read_long(path: str, what: str) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise SubmissionError(f"{what} {path}: file not found")
    df = pd.read_csv(path, dtype={"ID": str, "sop_uid": str})
    table = id_label_table(df)   # wide (one row per image) -> ID,Label
    if table is not None:
        return table
    raise SubmissionError(f"{what} {path}: expected columns ID,Label (or sop_uid + {', '.join(LABELS)}), found "
                          f"{', '.join(map(str, df.columns))}")


def read_ids(path: str) -> List[str]:
    """The submission's IDs in file order, duplicates included (for :func:`check_against_sample`)."""
    return _read_long(path, "submission")["ID"].astype(str).tolist()


def read_submission(path: str) -> pd.Series:
    """``ID -> probability`` in file order; duplicate IDs, missing or out-of-range values are errors."""
    df = _read_long(path, "submission")
    dup = df["ID"][df["ID"].duplicated()]
    if len(dup):
        raise SubmissionError(f"submission {path}: {len(dup)} duplicate IDs: {_examples(dup.unique())}")
    v = pd.to_numeric(df["Label"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(v) | (v < 0) | (v > 1)
    if bad.any():
        raise SubmissionError(f"submission {path}: {int(bad.sum())} probabilities missing or outside [0, 1]: "
                              f"{_examples(df['ID'][bad])}")
    return pd.Series(v, index=df["ID"].to_numpy())


def read_labels(path: str) -> pd.Series:
    """``ID -> 0/1``; exact duplicate rows dropped, conflicting duplicates are an error."""
    df = _read_long(path, "labels").drop_duplicates()
    dup = df["ID"][df["ID"].duplicated()]
    if len(dup):
        raise SubmissionError(f"labels {path}: {len(dup.unique())} IDs with conflicting labels: "
                              f"{_examples(dup.unique())}")
    v = pd.to_numeric(df["Label"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():
        raise SubmissionError(f"labels {path}: {int(bad.sum())} labels that are not 0/1: {_examples(df['ID'][bad])}")
    return pd.Series(v, index=df["ID"].to_numpy())


def check_against_sample(sub_ids: Sequence[str], sample_path: str, sub_path: str = "submission") -> None:
    """The submission must hold exactly the sample submission's IDs, once each. Raises :class:`SubmissionError`
    naming the missing, extra and duplicate IDs."""
    sample = _read_long(sample_path, "sample submission")["ID"]
    sub = pd.Series(list(sub_ids), dtype=object)
    problems = []
    dup = sub[sub.duplicated()].unique()
    if len(dup):
        problems.append(f"{len(dup)} duplicate IDs: {_examples(dup)}")
    want, have = pd.Index(sample.unique()), pd.Index(sub.unique())
    missing, extra = want.difference(have, sort=False), have.difference(want, sort=False)
    if len(missing):
        problems.append(f"{len(missing)} IDs of {sample_path} missing: {_examples(missing)}")
    if len(extra):
        problems.append(f"{len(extra)} IDs not in {sample_path}: {_examples(extra)}")
    if problems:
        raise SubmissionError(f"{sub_path} does not match the sample submission:\n  " + "\n  ".join(problems))


def split_id(ids: Sequence[str]) -> pd.DataFrame:
    """``ID_<sop>_<label>`` -> columns ``image``, ``label``; an unknown label suffix is an error."""
    parts = pd.Series(list(ids), dtype=object).str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2:
        raise SubmissionError(f"IDs must look like ID_<sop>_<label>, e.g. ID_0a1b2c3d4_any; got {_examples(ids)}")
    bad = ~parts[1].isin(LABELS)
    if bad.any():
        raise SubmissionError(f"{int(bad.sum())} IDs do not end in one of {', '.join(LABELS)}: "
                              f"{_examples(pd.Series(list(ids))[bad.to_numpy()])}")
    return pd.DataFrame({"image": parts[0].to_numpy(), "label": parts[1].to_numpy()})


def to_matrix(s: pd.Series, what: str) -> pd.DataFrame:
    """Long ``ID -> value`` to a wide ``image x LABELS`` table; an image without all six labels is an error."""
    parts = split_id(s.index)
    wide = pd.DataFrame({"image": parts["image"], "label": parts["label"], "v": s.to_numpy()}).pivot(
        index="image", columns="label", values="v").reindex(columns=list(LABELS))
    incomplete = wide.index[wide.isna().any(axis=1)]
    if len(incomplete):
        raise SubmissionError(f"{what}: {len(incomplete)} images without all six labels: {_examples(incomplete)}")
    return wide


def score(sub: pd.Series, labels: pd.Series, eps: float = 1e-7,
          weights: Sequence[float] = LABEL_WEIGHTS) -> Dict[str, object]:
    """Weighted log loss of ``sub`` on the images it holds (all must have labels), and per class."""
    p = to_matrix(sub, "submission")
    missing = sub.index.difference(labels.index, sort=False)
    if len(missing):
        raise SubmissionError(f"{len(missing)} submission IDs have no label: {_examples(missing)}")
    y = to_matrix(labels.reindex(sub.index), "labels").reindex(p.index)
    pc = per_class_log_loss(y.to_numpy(), p.to_numpy(), eps)
    return {"weighted_log_loss": weighted_log_loss(y.to_numpy(), p.to_numpy(), weights, eps),
            "log_loss": {lab: float(v) for lab, v in zip(LABELS, pc)},
            "n_images": int(len(p)), "eps": float(eps)}


def constant_submission(ids: Sequence[str], rates: Dict[str, float]) -> pd.Series:
    """The constant-prior model: each ID gets its class's rate."""
    parts = split_id(ids)
    return pd.Series([float(rates[lab]) for lab in parts["label"]], index=list(ids))


def format_table(rows: List[Dict[str, object]]) -> str:
    """Rows of ``{"name", "weighted_log_loss", "log_loss": {...}}`` as a fixed-width text table."""
    short = [lab[:6] for lab in LABELS]
    width = max([len("submission")] + [len(str(r["name"])) for r in rows])
    head = f"{'submission':<{width}}  {'wLogLoss':>9}" + "".join(f"{s:>9}" for s in short)
    lines = [head]
    for r in rows:
        lines.append(f"{str(r['name']):<{width}}  {r['weighted_log_loss']:>9.5f}"
                     + "".join(f"{r['log_loss'][lab]:>9.5f}" for lab in LABELS))
    return "\n".join(lines)


def prior_rates(train_labels: str) -> Dict[str, float]:
    """Per-class positive rate of a training label file (Kaggle long format), duplicates dropped."""
    y = to_matrix(read_labels(train_labels), f"labels {train_labels}")
    return {lab: float(y[lab].mean()) for lab in LABELS}


def names_for(paths: Sequence[str], names: Optional[Sequence[str]]) -> List[str]:
    if names is None:
        return list(paths)
    if len(names) != len(paths):
        raise SubmissionError(f"{len(paths)} --submission files but {len(names)} --names")
    return list(names)
