"""Study-level scoring: the inference ``studies.csv`` against a labels CSV (one row per study).

Metrics per class (numpy only, no sklearn at run time):

* ROC-AUC as the Mann-Whitney statistic on mid-ranks: the probability that a random positive study scores above a
  random negative one, ties counted 1/2.
* Sensitivity / specificity at a threshold with the package's convention: a study is positive when ``p > t``.
* The Youden point: over the distinct scores ``s`` as thresholds (rule ``p > s``), the one maximising
  ``sens + spec - 1`` (ties: the highest threshold, i.e. the fewest positive calls).
* Bootstrap 95 % percentile intervals: studies resampled with replacement (``numpy.random.default_rng(seed)``);
  a resample holding one label value only is dropped and the number of resamples used is reported.

Labels CSV. Id column: the first of :data:`ID_COLUMNS` present (case-insensitive). Class columns: the class names of
``ppihd.LABELS`` or the abbreviations of :data:`CLASS_ALIASES` (case-insensitive), any subset. Reader columns
``R<k>:<class>`` (``R1:ICH``, ``R2:ICH``, ``R3:ICH``) are combined by majority vote (positive when more than half
of the readers say 1) for a class that has no plain column.

CQ500 (Chilamkurthy et al. 2018, qure.ai) ``reads.csv``, as confirmed from several public repositories' code that
reads it (the file itself was not available here): columns ``name`` (``CQ500-CT-427``), ``Category`` (``B1`` /
``B2``) and, for each of three radiologists ``R1``-``R3``, 0/1 columns ``R<k>:ICH``, ``R<k>:IPH``, ``R<k>:IVH``,
``R<k>:SDH``, ``R<k>:EDH``, ``R<k>:SAH`` and further findings (``Fracture``, ``CalvarialFracture``,
``OtherFracture``, ``MassEffect``, ``MidlineShift``, ``BleedLocation-Left``, ``BleedLocation-Right``,
``ChronicBleed``), which are not hemorrhage classes and are ignored. The paper calls its gold standard the
consensus of the three readers; that code takes it as the majority (at least 2 of 3). The ``name`` values are not
DICOM StudyInstanceUIDs; they match ``study_folder`` when the folder is named ``CQ500-CT-427`` or ``CQ500CT427``
(ids are compared exactly, then lower-cased with everything but letters and digits removed, then with each
space-separated word of the folder name so normalised: CQ500's ``CQ500-CT-427`` matches ``CQ500CT427 CQ500CT427``).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import LABELS

#: Label-CSV id columns, in order of preference (matched case-insensitively).
ID_COLUMNS = ("study_uid", "StudyInstanceUID", "study_folder", "study", "name", "folder")
#: External-test-set abbreviations (CQ500, ...) of the six classes.
CLASS_ALIASES = {"ich": "any", "iph": "intraparenchymal", "ivh": "intraventricular", "sah": "subarachnoid",
                 "sdh": "subdural", "edh": "epidural"}
_READER = re.compile(r"^r(\d+)\s*:\s*(.+)$")


class StudyEvalError(ValueError):
    """A labels / predictions file that cannot be scored; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------- metrics
def _binary(y: Any, p: Any) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {p.size}")
    return y > 0.5, p


def midranks(x: Any) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y: Any, p: Any) -> float:
    """Mann-Whitney AUC (ties 1/2); NaN when ``y`` holds one value only."""
    pos, p = _binary(y, p)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    return float((midranks(p)[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_points(y: Any, p: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of calling ``p >= t`` positive for every distinct score ``t`` (descending),
    preceded by ``(0, 0, inf)`` - the points of ``sklearn.metrics.roc_curve(drop_intermediate=False)``."""
    pos, p = _binary(y, p)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], pos[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], ps.size - 1]  # last index of each tie group
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / pos.sum()]
        fpr = np.r_[0.0, fp / (~pos).sum()]
    return fpr, tpr, np.r_[np.inf, ps[last]]


def sens_spec(y: Any, p: Any, threshold: float) -> Tuple[float, float]:
    """Sensitivity and specificity of calling ``p > threshold`` positive (NaN without positives / negatives)."""
    pos, p = _binary(y, p)
    call = p > threshold
    sens = float(call[pos].mean()) if pos.any() else math.nan
    spec = float((~call[~pos]).mean()) if (~pos).any() else math.nan
    return sens, spec


def youden_point(y: Any, p: Any) -> Optional[Dict[str, float]]:
    """``{threshold, sensitivity, specificity, j}`` maximising ``J = sens + spec - 1`` over the distinct scores
    as thresholds (rule ``p > threshold``; ties: the highest threshold). None when ``y`` holds one value only."""
    pos, p = _binary(y, p)
    if pos.all() or not pos.any():
        return None
    fpr, tpr, thr = roc_points(pos, p)
    # "p > s_k" calls the same studies as "p >= s_(k-1)": roc point k-1 (k >= 1; s_0 = inf)
    j = tpr[:-1] - fpr[:-1]
    k = int(np.argmax(j))  # first maximum = highest threshold
    return {"threshold": float(thr[k + 1]), "sensitivity": float(tpr[k]), "specificity": float(1.0 - fpr[k]),
            "j": float(j[k])}


def bootstrap_ci(y: Any, p: Any, threshold: float, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> Dict[str, Any]:
    """Percentile intervals of AUC, sensitivity and specificity over ``resamples`` bootstrap resamples of the
    studies (``default_rng(seed)``); resamples with one label value only are dropped.

    Returns ``{"auc": [lo, hi], "sensitivity": [..], "specificity": [..], "resamples_used": k}``
    (intervals None when no resample is usable).
    """
    pos, p = _binary(y, p)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(resamples)):
        idx = rng.integers(0, pos.size, pos.size)
        yb, pb = pos[idx], p[idx]
        if yb.all() or not yb.any():
            continue
        vals.append((roc_auc(yb, pb),) + sens_spec(yb, pb, threshold))
    out: Dict[str, Any] = {"resamples_used": len(vals)}
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    for k, name in enumerate(("auc", "sensitivity", "specificity")):
        out[name] = [float(v) for v in np.percentile(np.asarray(vals)[:, k], q)] if vals else None
    return out


def _num(v: float) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def evaluate_class(y: Any, p: Any, threshold: float = 0.5, resamples: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """Every study-level number of one class (JSON-ready: NaN / inf become None)."""
    pos, p = _binary(y, p)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    sens, spec = sens_spec(pos, p, threshold)
    call = p > threshold
    res: Dict[str, Any] = {
        "n": int(pos.size), "positives": n1, "negatives": n0,
        "auc": _num(roc_auc(pos, p)), "auc_reason": None,
        "sensitivity": _num(sens), "specificity": _num(spec),
        "confusion": {"tp": int((call & pos).sum()), "fp": int((call & ~pos).sum()),
                      "tn": int((~call & ~pos).sum()), "fn": int((~call & pos).sum())},
        "youden": youden_point(pos, p), "ci": None, "roc": None,
    }
    if n1 == 0 or n0 == 0:
        res["auc_reason"] = f"only {'negative' if n1 == 0 else 'positive'} labels ({n1} positive, {n0} negative)"
        return res
    fpr, tpr, thr = roc_points(pos, p)
    res["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [_num(t) for t in thr]}
    if resamples > 0:
        res["ci"] = bootstrap_ci(pos, p, threshold, resamples, seed)
    return res


# ---------------------------------------------------------------------------------------------------- files
def _read_csv(path: str, what: str):
    import pandas as pd

    if not os.path.isfile(path):
        raise StudyEvalError(f"{what} file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # empty file, bad quoting, ...
        raise StudyEvalError(f"{what} file {path}: cannot read as CSV ({e})") from e


def _class_of(name: str) -> Optional[str]:
    key = name.strip().lower()
    return key if key in LABELS else CLASS_ALIASES.get(key)


def _zero_one(df, col: str, path: str) -> np.ndarray:
    """The 0/1 values of ``df[col]``; a StudyEvalError names the first bad row (file line) and column."""
    vals = df[col].str.strip()
    ok = vals.isin(["0", "1", "0.0", "1.0"])
    if not ok.all():
        i = int(np.argmax(~ok.to_numpy()))
        raise StudyEvalError(f"labels file {path}: row {i + 1} (line {i + 2}, id {df.iloc[i, 0]!r}), column "
                             f"'{col}': value {df[col].iloc[i]!r} is not 0 or 1")
    return vals.astype(float).astype(int).to_numpy()


def read_labels(path: str) -> Tuple[List[str], Dict[str, np.ndarray], Dict[str, Any]]:
    """``(ids, {class: 0/1 array}, info)`` from a labels CSV; ``info`` = ``{id_column, sources: {class: text}}``.

    Raises:
        StudyEvalError: missing file, no id column, no class column, duplicate ids, values other than 0/1.
    """
    df = _read_csv(path, "labels")
    lower = {c.strip().lower(): c for c in df.columns}
    id_col = next((lower[k.lower()] for k in ID_COLUMNS if k.lower() in lower), None)
    if id_col is None:
        raise StudyEvalError(f"labels file {path}: no id column (one of {', '.join(ID_COLUMNS)}); "
                             f"columns found: {', '.join(map(str, df.columns)) or 'none'}")
    df = df[[id_col] + [c for c in df.columns if c != id_col]]
    ids = df[id_col].str.strip().tolist()
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise StudyEvalError(f"labels file {path}: id column '{id_col}' repeats {', '.join(dup[:10])}")
    plain: Dict[str, str] = {}
    readers: Dict[str, List[str]] = {}
    for col in df.columns[1:]:
        m = _READER.match(col.strip().lower())
        cls = _class_of(m.group(2)) if m else _class_of(col)
        if cls is None:
            continue
        if m:
            readers.setdefault(cls, []).append(col)
        elif cls in plain:
            raise StudyEvalError(f"labels file {path}: columns '{plain[cls]}' and '{col}' both give class {cls}")
        else:
            plain[cls] = col
    if not plain and not readers:
        raise StudyEvalError(f"labels file {path}: no class column (class names {', '.join(LABELS)}, "
                             f"abbreviations {', '.join(a.upper() for a in CLASS_ALIASES)}, or reader columns "
                             f"like R1:ICH); columns found: {', '.join(map(str, df.columns))}")
    labels, sources = {}, {}
    for cls in LABELS:
        if cls in plain:
            labels[cls] = _zero_one(df, plain[cls], path)
            sources[cls] = f"column '{plain[cls]}'" + (" (reader columns ignored)" if cls in readers else "")
        elif cls in readers:
            votes = np.stack([_zero_one(df, c, path) for c in readers[cls]], axis=1)
            labels[cls] = (2 * votes.sum(axis=1) > votes.shape[1]).astype(int)
            sources[cls] = f"majority vote of {len(readers[cls])} readers ({', '.join(readers[cls])})"
    return ids, labels, {"id_column": id_col, "sources": sources}


def read_predictions(path: str):
    """The ``studies.csv`` table with the six probability columns as float (empty -> NaN)."""
    df = _read_csv(path, "predictions")
    missing = [c for c in ("study_uid", "study_folder") + LABELS if c not in df.columns]
    if missing:
        raise StudyEvalError(f"predictions file {path}: missing column(s) {', '.join(missing)}; "
                             f"columns found: {', '.join(map(str, df.columns))}")
    import pandas as pd

    for c in LABELS:
        num = pd.to_numeric(df[c].str.strip().replace("", "nan"), errors="coerce")
        bad = num.isna() & ~df[c].str.strip().isin(["", "nan", "NaN"])
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise StudyEvalError(f"predictions file {path}: row {i + 1} (line {i + 2}), column '{c}': "
                                 f"{df[c].iloc[i]!r} is not a number")
        df[c] = num.astype(float)
    return df


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


def match_studies(ids: List[str], preds, pred_path: str = "studies.csv"
                  ) -> Tuple[List[Optional[int]], Dict[str, int]]:
    """Row of ``preds`` for each label id: ``study_uid`` first, else ``study_folder`` (exact, then lower-case
    letters and digits only). Returns ``(rows, {how: count})``; an id matching several studies is an error."""
    index: Dict[str, Dict[str, List[int]]] = {"study_uid": {}, "study_folder": {}, "study_folder (normalised)": {},
                                              "a word of study_folder (normalised)": {}}
    for i, (uid, folder) in enumerate(zip(preds["study_uid"], preds["study_folder"])):
        for how, key in (("study_uid", uid.strip()), ("study_folder", folder.strip()),
                         ("study_folder (normalised)", _norm(folder))):
            if key:
                index[how].setdefault(key, []).append(i)
        for word in sorted({_norm(w) for w in folder.split()} - {""}):  # CQ500's "CQ500CT427 CQ500CT427"
            index["a word of study_folder (normalised)"].setdefault(word, []).append(i)
    rows: List[Optional[int]] = []
    counts = {how: 0 for how in index}
    for sid in ids:
        row = None
        for how, key in (("study_uid", sid), ("study_folder", sid), ("study_folder (normalised)", _norm(sid)),
                         ("a word of study_folder (normalised)", _norm(sid))):
            hit = index[how].get(key) if key else None
            if hit:
                if len(hit) > 1:
                    raise StudyEvalError(f"predictions file {pred_path}: label id {sid!r} matches {len(hit)} "
                                         f"studies by {how} (lines {', '.join(str(h + 2) for h in hit[:5])})")
                row = hit[0]
                counts[how] += 1
                break
        rows.append(row)
    taken = [r for r in rows if r is not None]
    if len(set(taken)) < len(taken):
        r = next(r for r in taken if taken.count(r) > 1)
        raise StudyEvalError(f"predictions file {pred_path}: the study on line {r + 2} is matched by several "
                             f"label ids ({', '.join(s for s, x in zip(ids, rows) if x == r)})")
    return rows, counts


def evaluate_studies(pred_path: str, labels_path: str, threshold: float = 0.5, resamples: int = 2000,
                     seed: int = 0) -> Dict[str, Any]:
    """Read both files, match the studies and score every labelled class. JSON-ready result (see
    ``docs/inference.md``, "Scoring studies against labels").

    Raises:
        StudyEvalError: any file problem, or no labelled study matched to a prediction.
    """
    ids, labels, info = read_labels(labels_path)
    preds = read_predictions(pred_path)
    rows, counts = match_studies(ids, preds, pred_path)
    matched = [k for k, r in enumerate(rows) if r is not None]
    if not matched:
        raise StudyEvalError(f"no study matched: none of the {len(ids)} ids in {labels_path} (column "
                             f"'{info['id_column']}', e.g. {', '.join(ids[:3])}) is a study_uid or study_folder "
                             f"of the {len(preds)} studies in {pred_path}")
    prob = preds[list(LABELS)].to_numpy(dtype=np.float64)[[rows[k] for k in matched]]
    lab_classes = list(labels)
    col = [LABELS.index(c) for c in lab_classes]
    has_pred = np.isfinite(prob[:, col]).all(axis=1)
    if not has_pred.any():
        raise StudyEvalError(f"no study matched with a prediction: the {len(matched)} matched studies of "
                             f"{pred_path} have empty probabilities")
    used = set(rows[k] for k in matched)
    unmatched_pred = [i for i in range(len(preds)) if i not in used]
    no_pred = [ids[k] for k, ok in zip(matched, has_pred) if not ok]
    classes = {}
    for cls in lab_classes:
        y = labels[cls][matched][has_pred]
        classes[cls] = evaluate_class(y, prob[has_pred, LABELS.index(cls)], threshold, resamples, seed)
        classes[cls]["label_source"] = info["sources"][cls]

    def listing(values):
        values = [str(v) for v in values]
        return {"count": len(values), "ids": values}

    return {
        "predictions_file": pred_path, "labels_file": labels_path,
        "threshold": float(threshold), "rule": "a study is called positive when p > threshold",
        "bootstrap": {"resamples": int(resamples), "seed": int(seed), "interval": "95% percentile",
                      "unit": "study"},
        "id_column": info["id_column"], "matched_by": counts,
        "n_labels": len(ids), "n_predictions": int(len(preds)), "n_matched": len(matched),
        "n_evaluated": int(has_pred.sum()),
        "unmatched_labels": listing(ids[k] for k, r in enumerate(rows) if r is None),
        "unmatched_predictions": listing(preds["study_uid"].iloc[i] or preds["study_folder"].iloc[i]
                                         for i in unmatched_pred),
        "missing_prediction": listing(no_pred),
        "classes": classes,
    }


def format_table(res: Dict[str, Any]) -> str:
    """A compact text table of :func:`evaluate_studies`' result."""
    def f(v, ci=None):
        s = "  -  " if v is None else f"{v:.3f}"
        return s + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    t = res["threshold"]
    lines = [f"{'class':<17}{'n':>5}{'pos':>5}  {'AUC [95% CI]':<22}{f'sens (p>{t:g})':<22}"
             f"{f'spec (p>{t:g})':<22}Youden t (sens/spec)"]
    for cls, r in res["classes"].items():
        ci = r["ci"] or {}
        y = r["youden"]
        lines.append(f"{cls:<17}{r['n']:>5}{r['positives']:>5}  {f(r['auc'], ci.get('auc')):<22}"
                     f"{f(r['sensitivity'], ci.get('sensitivity')):<22}{f(r['specificity'], ci.get('specificity')):<22}"
                     + (f"{y['threshold']:.3f} ({y['sensitivity']:.2f}/{y['specificity']:.2f})" if y
                        else r["auc_reason"] or ""))
    lines.append(f"{res['n_evaluated']} studies scored of {res['n_labels']} labelled; "
                 f"{res['unmatched_labels']['count']} labels without a study, "
                 f"{res['missing_prediction']['count']} studies without a prediction, "
                 f"{res['unmatched_predictions']['count']} predicted studies without labels; "
                 f"CI: {res['bootstrap']['resamples']} bootstrap resamples, seed {res['bootstrap']['seed']}")
    return "\n".join(lines)
