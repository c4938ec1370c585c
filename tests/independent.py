"""Second implementations the tests compare the package against (not imported from ppihd)."""
import json

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

# RSNA 2019 competition: class order and weights (any counts twice), clip eps (docs/numbers.md, metric)
CLASSES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
WEIGHTS = (1, 1, 1, 1, 1, 2)
EPS = 1e-7


def sklearn_weighted_log_loss(y, p) -> float:
    """sum_c w_c * sklearn log_loss(y_c, clip(p_c)) / sum_c w_c, column c in CLASSES order."""
    y, p = np.asarray(y, np.float64), np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    per_class = [log_loss(y[:, c], p[:, c], labels=[0, 1]) for c in range(len(CLASSES))]
    return float(np.dot(WEIGHTS, per_class) / sum(WEIGHTS))


def rsna_labels(path: str) -> pd.DataFrame:
    """An RSNA ``ID,Label`` file (``ID_<sop>_<class>``) as one row per SOP UID, the six class columns."""
    df = pd.read_csv(path)
    parts = df["ID"].str.rsplit("_", n=1, expand=True)
    df["sop"], df["cls"] = parts[0], parts[1]
    return df.pivot_table(index="sop", columns="cls", values="Label", aggfunc="first")[list(CLASSES)]


def last_eval(history_json: str) -> dict:
    """The last validation record of a training run's history.json."""
    with open(history_json, encoding="utf-8") as f:
        return json.load(f)["eval"][-1]
