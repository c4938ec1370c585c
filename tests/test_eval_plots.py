"""Eval plots (ppihd.engine.eval_plots) against an independent computation with scikit-learn
(calibration_curve, roc_curve, precision_recall_curve, average_precision_score, roc_auc_score), and tools/eval.py
end to end on a tiny synthetic cache: the PNGs next to metrics.json and predictions.csv's sop_uid column, checked
against the cache index written by tools/preprocess.py."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ppihd import LABELS

PNGS = ("roc_pr.png", "calibration.png", "per_class.png")


def _preds(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < [0.05, 0.2, 0.1, 0.3, 0.25, 0.5]).astype(float)
    p = np.clip(0.6 * y + rng.random((n, 6)) * 0.5, 0, 1)
    p[:40] = np.round(p[:40], 1)          # ties and scores exactly on the bin edges (0.1, 0.3, 1.0, 0.0, ...)
    p[40:45] = [0.0, 0.3, 0.5, 0.7, 1.0, 0.6][:6]
    y[:, 0] = 0.0                          # epidural: no positive slice -> no ROC / PR
    mask = np.ones_like(y)
    mask[-30:, 2] = 0                      # 30 slices with an unknown label: not scored
    return {"series_id": [f"s{i // 10}" for i in range(n)], "slice_idx": np.arange(n) % 10, "labels": y,
            "label_mask": mask, "prob2": p, "prob1": None}


def _is_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > 300 and im.height > 100
        assert len(set(im.convert("L").resize((64, 64)).getdata())) > 5


def test_curves_equal_sklearn(tmp_path):
    from ppihd.engine.eval_plots import write_eval_plots

    preds = _preds()
    paths = write_eval_plots(preds, str(tmp_path), metrics=None, n_bins=10)
    assert sorted(os.path.basename(p) for p in paths) == sorted(("curves.json",) + PNGS)
    for name in PNGS:
        _is_png(tmp_path / name)
    cur = json.load(open(tmp_path / "curves.json"))
    keep = preds["label_mask"].min(axis=1) > 0
    y_all, p_all = preds["labels"][keep], preds["prob2"][keep]
    assert cur["n_slices"] == int(keep.sum()) == 370
    for c, lab in enumerate(LABELS):
        r = cur["classes"][lab]
        y, p = y_all[:, c], p_all[:, c]
        assert r["n"] == len(y) and r["positives"] == int(y.sum())
        # calibration: sklearn returns the non-empty bins only
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
        bins = [b for b in r["calibration"] if b["count"]]
        np.testing.assert_allclose([b["fraction_positive"] for b in bins], frac, rtol=0, atol=1e-12)
        np.testing.assert_allclose([b["mean_predicted"] for b in bins], mean, rtol=0, atol=1e-12)
        # counts per bin, sklearn's binning (searchsorted on the interior edges: bin k = (edge_k, edge_k+1])
        counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
        assert [b["count"] for b in r["calibration"]] == counts.tolist()
        assert r["ece"] == pytest.approx(float(np.sum(np.abs(frac - mean) * counts[counts > 0]) / len(y)), abs=1e-12)
        if lab == "epidural":
            assert r["roc"] is None and r["pr"] is None and "one label value" in r["reason"]
            continue
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
        np.testing.assert_allclose(r["roc"]["fpr"], fpr, atol=1e-12)
        np.testing.assert_allclose(r["roc"]["tpr"], tpr, atol=1e-12)
        assert r["roc"]["thresholds"][0] is None and not np.isfinite(thr[0])
        np.testing.assert_allclose(r["roc"]["thresholds"][1:], thr[1:], atol=1e-12)
        assert r["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        prec, rec, pthr = precision_recall_curve(y, p, drop_intermediate=False)
        np.testing.assert_allclose(r["pr"]["precision"], prec, atol=1e-12)
        np.testing.assert_allclose(r["pr"]["recall"], rec, atol=1e-12)
        np.testing.assert_allclose(r["pr"]["thresholds"], pthr, atol=1e-12)
        assert r["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert r["sensitivity"] == pytest.approx(float((p[y > 0] > 0.5).mean()))
        assert r["specificity"] == pytest.approx(float((p[y == 0] <= 0.5).mean()))


def test_tools_eval_writes_plots_and_sop_uids(tmp_path):
    """tools/eval.py on a tiny synthetic cache (4 series) with a random micro model."""
    from ppihd.synthetic import generate_dataset

    from infer_utils import DEMO_CFG, load_tool, save_tiny_checkpoint

    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    generate_dataset(data, n_train=8, n_test=0, size=64, slices_min=3, slices_max=5, progress=False,
                     hemorrhage_fraction=0.5)
    common = ["-c", DEMO_CFG, "-o", f"Data.root={data}", "-o", "Data.image_size=32",
              "-o", f"Global.output_dir={out}", "-o", "Global.progress_bar=false", "-o", "Data.num_workers=0",
              "-o", "Global.num_threads=2"]
    assert load_tool("tools/preprocess.py").main(common + ["--no-progress"]) == 0
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"), image_size=32)
    ev = tmp_path / "ev"
    assert load_tool("tools/eval.py").main(common + ["-o", f"Global.pretrained_model={ckpt}", "--output", str(ev)]) == 0
    for name in PNGS:
        _is_png(ev / name)
    assert (ev / "metrics.json").is_file() and (ev / "curves.json").is_file()
    df = pd.read_csv(ev / "predictions.csv", dtype={"series_id": str, "sop_uid": str})
    assert list(df.columns[:3]) == ["series_id", "slice_idx", "sop_uid"]
    # the cache index (tools/preprocess.py) says which file each (series, cache row) came from
    from ppihd.data.cache import resolve_index_file
    from ppihd.utils.config import load_config
    cfg = load_config(DEMO_CFG, [f"Data.root={data}", "Data.image_size=32"])
    idx = pd.read_csv(resolve_index_file(cfg), dtype=str)
    want = {(r.series_id, int(r.slice_idx)): r.sop_uid for r in idx.itertuples()}
    assert len(df) == ((idx["split"] == "val") & (idx["status"] == "ok")).sum()   # every val slice, once
    assert [want[(s, int(i))] for s, i in zip(df["series_id"], df["slice_idx"])] == df["sop_uid"].tolist()
    assert df["sop_uid"].nunique() == len(df)
    # the curves drawn are those of these rows (labelled slices), by sklearn
    cur = json.load(open(ev / "curves.json"))
    lab = df[[f"label_{n}" for n in LABELS]].to_numpy()
    keep = ~np.isnan(lab).any(axis=1)
    y, p = lab[keep, 5], df["prob_any"].to_numpy()[keep]
    frac, mean = calibration_curve(y, p, n_bins=10)
    got = [b for b in cur["classes"]["any"]["calibration"] if b["count"]]
    np.testing.assert_allclose([b["fraction_positive"] for b in got], frac, atol=1e-12)
    np.testing.assert_allclose([b["mean_predicted"] for b in got], mean, atol=5e-6)   # CSV keeps 6 digits
