"""FixMatch data path: pseudo-labelled test series from a (hand-made) cache, mixing, strong augmentation."""
import os

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.data.pseudo import MixedDataset, PseudoLabelDataset, with_pseudo_labels
from ppihd.postprocess.pseudo_label import PseudoLabelError
from ppihd.utils.config import load_config


def _make_cache(root, size=16):
    """Two test series (T1: 3 ok slices, T2: 2 ok + 1 failed) and one train series in the cache layout."""
    cache = os.path.join(root, "cache")
    os.makedirs(os.path.join(cache, "series"))
    rng = np.random.default_rng(0)
    rows = []
    for sid, split, statuses in (("T1", "test", ["ok", "ok", "ok"]), ("T2", "test", ["ok", "bad pixels", "ok"]),
                                 ("R1", "train", ["ok", "ok"])):
        n_ok = statuses.count("ok")
        arr = rng.integers(0, 256, size=(n_ok, size, size, 3), dtype=np.uint8)
        arr[:, 4:10, 4:12] = 255
        np.save(os.path.join(cache, "series", f"{sid}.npy"), arr)
        k = 0
        for j, st in enumerate(statuses):
            rows.append({"path": f"/x/{sid}_{j}.dcm", "sop_uid": f"ID_{sid.lower()}{j}", "patient_id": "P",
                         "study_uid": "S", "series_uid": f"U{sid}", "series_id": sid,
                         "slice_idx": k if st == "ok" else -1, "position": 5.0 * j, "status": st, "split": split,
                         **{lab: (0.0 if split == "train" else np.nan) for lab in LABELS}})
            k += st == "ok"
    pd.DataFrame(rows).to_csv(os.path.join(cache, "index.csv"), index=False)
    return cache


def _pseudo_csv(path, sops_labels):
    recs = []
    for i, (sop, labs) in enumerate(sops_labels):
        recs.append({"patient_id": "P", "study_uid": "S", "series_uid": "U", "sop_uid": sop, "slice_idx": i,
                     "position": 0.0, **dict(zip(LABELS, labs)), "confidence": 0.99})
    pd.DataFrame(recs).to_csv(path, index=False)
    return str(path)


SDH = [0, 0, 0, 0, 1, 1]
NEG = [0] * 6


def _cfg(tmp_path, pseudo, extra=()):
    cache = _make_cache(str(tmp_path))
    return load_config(None, [f"Data.root={tmp_path}", f"Data.cache_dir={cache}", f"Data.pseudo_label_csv={pseudo}",
                              "Data.image_size=16",
                              *extra])


def test_pseudo_dataset_items_keep_labels(tmp_path):
    # T1 fully labelled; T2 has a pseudo-label on its first slice only (the failed slice is not cached)
    p = _pseudo_csv(tmp_path / "pseudo.csv", [("ID_t10", NEG), ("ID_t11", SDH), ("ID_t12", NEG), ("ID_t20", SDH)])
    cfg = _cfg(tmp_path, p)
    ds = PseudoLabelDataset(cfg)
    assert len(ds) == 2 and ds.num_slices == 5
    it = ds.get(0, np.random.default_rng(0))
    assert it["series_id"] == "T1" and it["is_pseudo"] is True
    assert it["images"].shape == (3, 3, 16, 16) and it["images"].dtype == np.float32
    assert 0.0 <= it["images"].min() and it["images"].max() <= 1.0
    np.testing.assert_array_equal(it["labels"], np.array([NEG, SDH, NEG], np.float32))
    np.testing.assert_array_equal(it["label_mask"], np.ones((3, 6), np.float32))
    it2 = ds.get(1, np.random.default_rng(0))
    assert it2["series_id"] == "T2" and it2["images"].shape[0] == 2  # the failed slice is not in the cache
    assert it2["slice_idx"].tolist() == [0, 1] and it2["is_pseudo"] is True
    np.testing.assert_array_equal(it2["labels"], np.array([SDH, NEG], np.float32))
    np.testing.assert_array_equal(it2["label_mask"][:, 0], [1.0, 0.0])  # 2nd cached slice has no pseudo-label
    # the strong augmentation changes pixels but not labels; without it the cache pixels come back exactly
    raw = PseudoLabelDataset(cfg, transform=False).get(0, np.random.default_rng(0))
    cache_arr = np.load(os.path.join(cfg["Data"]["cache_dir"], "series", "T1.npy"))
    np.testing.assert_allclose(raw["images"], cache_arr.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    assert not np.allclose(raw["images"], it["images"])
    np.testing.assert_array_equal(raw["labels"], it["labels"])


def test_mixed_dataset_flags_is_pseudo(tmp_path):
    p = _pseudo_csv(tmp_path / "pseudo.csv", [("ID_t10", NEG), ("ID_t11", SDH), ("ID_t12", NEG)])
    cfg = _cfg(tmp_path, p)

    class Labelled:
        def __len__(self):
            return 2

        def get(self, i, rng):
            return {"images": np.zeros((1, 3, 16, 16), np.float32), "labels": np.zeros((1, 6), np.float32),
                    "label_mask": np.ones((1, 6), np.float32), "series_id": f"L{i}"}

    mixed = with_pseudo_labels(cfg, Labelled())
    assert isinstance(mixed, MixedDataset) and len(mixed) == 3
    flags = [mixed.get(i, np.random.default_rng(i))["is_pseudo"] for i in range(3)]
    assert flags == [False, False, True]
    cfg2 = load_config(None, ["Data.pseudo_label_csv=null"])
    lab = Labelled()
    assert with_pseudo_labels(cfg2, lab) is lab


def test_pseudo_csv_not_matching_cache_is_a_clear_error(tmp_path):
    p = _pseudo_csv(tmp_path / "pseudo.csv", [("ID_zzz", NEG)])
    with pytest.raises(PseudoLabelError, match="none of its 1 slices"):
        PseudoLabelDataset(_cfg(tmp_path, p))


def _make_train_cache(root, size=32):
    """Labelled train/val series and two test series, in the cache layout, with a bright 'lesion' on positives."""
    cache = os.path.join(root, "cache")
    os.makedirs(os.path.join(cache, "series"))
    rng = np.random.default_rng(1)
    rows = []
    for sid, split, pos in (("R1", "train", True), ("R2", "train", False), ("V1", "val", True),
                            ("T1", "test", True), ("T2", "test", False)):
        arr = rng.integers(0, 60, size=(3, size, size, 3), dtype=np.uint8)
        if pos:
            arr[1, 10:20, 10:20] = 250
        np.save(os.path.join(cache, "series", f"{sid}.npy"), arr)
        for j in range(3):
            lab = SDH if (pos and j == 1) else NEG
            rows.append({"path": f"/x/{sid}_{j}.dcm", "sop_uid": f"ID_{sid.lower()}{j}", "patient_id": "P",
                         "study_uid": "S", "series_uid": f"U{sid}", "series_id": sid, "slice_idx": j,
                         "position": 5.0 * j, "status": "ok", "split": split,
                         **{l: (np.nan if split == "test" else float(v)) for l, v in zip(LABELS, lab)}})
    pd.DataFrame(rows).to_csv(os.path.join(cache, "index.csv"), index=False)
    return cache


@pytest.mark.slow
def test_fixmatch_training_logs_l1_l2_and_lu(tmp_path):
    """A few FixMatch iterations on CPU: tiny Swin, 2 labelled + 2 pseudo-labelled series; all three terms logged."""
    import paddle  # noqa: F401

    from ppihd.arch import build_model
    from ppihd.data.augment import build_train_augment
    from ppihd.data.dataset import SeriesDataset
    from ppihd.engine.trainer import Trainer
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer
    from ppihd.utils.env import seed_everything

    cache = _make_train_cache(str(tmp_path))
    p = _pseudo_csv(tmp_path / "pseudo.csv", [("ID_t10", NEG), ("ID_t11", SDH), ("ID_t12", NEG),
                                              ("ID_t20", NEG), ("ID_t21", NEG), ("ID_t22", NEG)])
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "swin_b_seq.yaml"), [
        "Global.device=cpu", f"Global.output_dir={tmp_path / 'out'}", "Global.iters=4", "Global.log_interval=1",
        "Global.eval_interval=0", "Global.save_interval=0", "Global.progress_bar=false",
        f"Data.root={tmp_path}", f"Data.cache_dir={cache}", "Data.image_size=32", f"Data.pseudo_label_csv={p}",
        "DataLoader.Train.num_workers=0", "DataLoader.Train.batch_series=2",
        "Arch.backbone.variant=micro", "Arch.backbone.drop_path_rate=0.0",
        "Optimizer.lr.warmup_steps=1", "Loss.unlabeled_weight=0.5"])
    seed_everything(0)
    train_set = with_pseudo_labels(cfg, SeriesDataset(cfg, "train", transform=build_train_augment(cfg)))
    assert isinstance(train_set, MixedDataset) and len(train_set) == 4
    model = build_model(cfg["Arch"])
    sched = build_lr_scheduler(cfg["Optimizer"], 4)
    opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, None)
    loss_fn = build_loss(cfg["Loss"], deep_supervision=True)
    trainer = Trainer(cfg, model, loss_fn, opt, sched, train_set, SeriesDataset(cfg, "val"))
    hist = trainer.train()
    rows = hist["train"]
    assert len(rows) == 4
    for r in rows:
        assert {"loss", "l2", "l1", "lu"} <= set(r) and all(np.isfinite(r[k]) for k in ("loss", "l2", "l1", "lu"))
        # total = 2 L2 + 1 L1 + 0.5 L_u (the logged terms are per-iteration values; batch_series 2, no accumulation)
        assert r["loss"] == pytest.approx(2 * r["l2"] + r["l1"] + 0.5 * r["lu"], rel=1e-4)
    # MixedDataset: labelled series first, then the pseudo-labelled ones. Each term is exactly 0 on an iteration
    # whose batch holds none of its series and positive otherwise; over two epochs both kinds were trained on.
    n_lab = len(train_set.labelled)
    kinds = [sum(i >= n_lab for i in trainer.batches.indices(r["iter"] - 1)) for r in rows]  # pseudo per batch
    assert [r["lu"] > 0 for r in rows] == [k > 0 for k in kinds]
    assert [r["l2"] > 0 for r in rows] == [k < 2 for k in kinds]
    assert all(r["lu"] == 0 for r, k in zip(rows, kinds) if k == 0) and sum(kinds) == 4  # 2 pseudo series x 2 epochs
    log = open(os.path.join(cfg["Global"]["output_dir"], "train.log")).read()
    assert " l2 " in log and " l1 " in log and " lu " in log
