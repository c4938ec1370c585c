"""Ablation configs (paper Table 3) and the CI-sized end-to-end run of tools/run_ablation.py."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from independent import CLASSES, last_eval, rsna_labels, sklearn_weighted_log_loss
from ppihd.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABL = os.path.join(ROOT, "configs", "ablation")


def assert_scores_recomputed(df, data, out):
    """Each row's test_wll equals sklearn's weighted log loss of its written test predictions against the
    synthetic test labels, and its val_wll the head-2 loss of the last validation in its history.json."""
    labels = rsna_labels(os.path.join(data, "synthetic_test_labels.csv"))
    for config, test_wll, val_wll in zip(df["config"], df["test_wll"], df["val_wll"]):
        name = os.path.splitext(os.path.basename(config))[0]  # the row's output directory
        pred = pd.read_csv(os.path.join(out, name, "test_predictions.csv"))
        want = sklearn_weighted_log_loss(labels.loc[pred["sop_uid"]].to_numpy(), pred[list(CLASSES)].to_numpy())
        assert test_wll == pytest.approx(want, abs=1e-6), name
        assert val_wll == pytest.approx(last_eval(os.path.join(out, name, "history.json"))["head2"], abs=1e-6), name

# Paper Table 3: (row config, log loss, Inter, RBE, DS, PN, DW, SW, FM) — copied from the paper, not the code.
TABLE3 = [
    ("01_intra", 0.09495, 0, 0, 0, 0, 0, 0, 0),
    ("02_inter", 0.06582, 1, 0, 0, 0, 0, 0, 0),
    ("03_rbe", 0.06490, 1, 1, 0, 0, 0, 0, 0),
    ("04_ds", 0.06117, 1, 1, 1, 0, 0, 0, 0),
    ("05_pn", 0.05808, 1, 1, 1, 1, 0, 0, 0),
    ("06_dw", 0.05409, 1, 1, 1, 1, 1, 0, 0),
    ("07_sw", 0.05117, 1, 1, 1, 1, 1, 1, 0),
    ("08_fm", 0.04368, 1, 1, 1, 1, 1, 1, 1),
]


# the one key each row adds to its previous row (paper Table 3 legend)
ADDS = {"02_inter": ("Inter", {"Arch": {"inter_slice": True}}),
        "03_rbe": ("RBE", {"Data": {"remove_black_edges": True}}),
        "04_ds": ("DS", {"Arch": {"deep_supervision": True}}),
        "05_pn": ("PN", {"Arch": {"backbone": {"post_norm": True}}}),
        "06_dw": ("DW", {"Loss": {"dynamic_weight": True}}),
        "07_sw": ("SW", {"Loss": {"static_weight": True}}),
        "08_fm": ("FM", {"Data": {"pseudo_label_csv": "output/ablation/pseudo.csv"}, "Loss": {"unlabeled_weight": 1.0}})}


@pytest.mark.parametrize("row", TABLE3, ids=[r[0] for r in TABLE3])
def test_each_row_config_switches_the_paper_components(row):
    name, paper, inter, rbe, ds, pn, dw, sw, fm = row
    cfg = load_config(os.path.join(ABL, f"{name}.yaml"))
    assert cfg["Arch"]["inter_slice"] is bool(inter)
    assert cfg["Data"]["remove_black_edges"] is bool(rbe)
    assert cfg["Arch"]["deep_supervision"] is bool(ds)
    assert cfg["Arch"]["backbone"]["post_norm"] is bool(pn)
    assert cfg["Loss"]["dynamic_weight"] is bool(dw)
    assert cfg["Loss"]["static_weight"] is bool(sw)
    assert bool(cfg["Data"]["pseudo_label_csv"]) is bool(fm)
    assert cfg["Ablation"]["paper_log_loss"] == paper and cfg["Global"]["output_dir"] == f"output/ablation/{name}"
    # everything else is the paper's setting
    assert cfg["Arch"]["backbone"]["variant"] == "base" and cfg["Global"]["iters"] == 80000


@pytest.mark.parametrize("i", range(1, len(TABLE3)), ids=[r[0] for r in TABLE3[1:]])
def test_each_row_is_its_previous_row_plus_the_component_it_adds(i):
    name, prev = TABLE3[i][0], TABLE3[i - 1][0]
    with open(os.path.join(ABL, f"{name}.yaml")) as f:
        raw = yaml.safe_load(f)
    comp, keys = ADDS[name]
    assert raw.pop("_base_") == f"{prev}.yaml"
    assert raw.pop("Ablation")["adds"] == comp
    assert raw.pop("Global") == {"output_dir": f"output/ablation/{name}"}
    assert raw == keys


def test_first_row_turns_every_later_component_off_over_the_paper_config():
    with open(os.path.join(ABL, "01_intra.yaml")) as f:
        raw = yaml.safe_load(f)
    assert raw["_base_"] == "../swin_b_seq.yaml" and raw["Ablation"]["adds"] is None
    paper = load_config(os.path.join(ROOT, "configs", "swin_b_seq.yaml"))
    first = load_config(os.path.join(ABL, "01_intra.yaml"))
    for section, key in (("Arch", "inter_slice"), ("Data", "remove_black_edges"), ("Arch", "deep_supervision"),
                         ("Loss", "dynamic_weight"), ("Loss", "static_weight")):
        assert paper[section][key] is True and first[section][key] is False
    assert paper["Arch"]["backbone"]["post_norm"] is True and first["Arch"]["backbone"]["post_norm"] is False


def test_rows_read_from_the_configs_match_the_paper():
    from ppihd.engine.ablation import load_rows

    rows = load_rows(ABL)
    assert [(r.name, r.paper) for r in rows] == [(t[0], t[1]) for t in TABLE3]
    comps = ("Inter", "RBE", "DS", "PN", "DW", "SW", "FM")
    for r, t in zip(rows, TABLE3):
        assert set(r.components) == {c for c, flag in zip(comps, t[2:]) if flag}
        assert r.pseudo is bool(t[8])
    assert [r.label for r in rows][:2] == ["Intra-Ext only", "+ Inter-Ext"]
    # the switches the runner applies: the whole chain of row files, without the run-specific keys
    assert rows[4].switches["Arch"] == {"inter_slice": True, "deep_supervision": True, "backbone": {"post_norm": True}}
    assert rows[7].switches["Loss"] == {"dynamic_weight": True, "static_weight": True, "unlabeled_weight": 1.0}
    assert "Global" not in rows[7].switches and "pseudo_label_csv" not in rows[7].switches["Data"]


def test_a_row_without_its_ablation_section_is_a_clear_error(tmp_path):
    from ppihd.engine.ablation import load_rows
    from ppihd.utils.config import ConfigError

    (tmp_path / "01_x.yaml").write_text("Arch:\n  inter_slice: false\n")
    with pytest.raises(ConfigError) as e:
        load_rows(str(tmp_path))
    assert str(tmp_path / "01_x.yaml") in str(e.value) and "Ablation.row" in str(e.value)


@pytest.mark.slow
def test_ablation_runner_end_to_end_ci(tmp_path):
    from ppihd.synthetic import generate_dataset

    data = str(tmp_path / "data")
    generate_dataset(data, n_train=6, n_test=3, size=64, slices_min=4, slices_max=6, progress=False)
    out = str(tmp_path / "out")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_ablation.py"), "--data", data, "--out", out,
                        "--ci", "--tau-s", "0.5", "--rows", "01_intra", "07_sw", "08_fm"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = pd.read_csv(os.path.join(out, "ablation.csv"))
    assert df["row"].tolist() == ["Intra-Ext only", "+ SW", "+ FM"]
    assert df["paper"].tolist() == [0.09495, 0.05117, 0.04368]
    # every row trained and was scored on the synthetic test labels and on the validation split
    assert_scores_recomputed(df, data, out)
    assert (df["iters"] == 2).all()
    assert "3/3 test series" in df["note"].iloc[2]
    # the no-RBE row used its own cache (different preprocessing settings), the others the default one
    assert os.path.isdir(os.path.join(data, "cache_32_norbe")) and os.path.isdir(os.path.join(data, "cache_32"))
    row1 = load_config(os.path.join(out, "01_intra", "row_config.yaml"))
    assert row1["Data"]["cache_dir"].endswith("cache_32_norbe") and row1["Arch"]["inter_slice"] is False
    row8 = load_config(os.path.join(out, "08_fm", "row_config.yaml"))
    assert row8["Data"]["pseudo_label_csv"] == os.path.join(out, "pseudo.csv")
    log8 = open(os.path.join(out, "08_fm", "train.log")).read()
    assert " lu " in log8 and " l1 " in log8
    md = open(os.path.join(out, "ablation.md")).read()
    assert "| + FM | • | • | • | • | • | • | • | 0.04368 |" in md
    assert "Constant-prior baseline (train-split positive rates): test 0." in md


def test_ablation_runner_stage1_is_shared_per_cache_and_norm(tmp_path):
    """--stage1: one slice pre-training per (cache, post_norm), loaded by every row with that setting."""
    from ppihd.synthetic import generate_dataset

    data = str(tmp_path / "data")
    generate_dataset(data, n_train=6, n_test=3, size=64, slices_min=4, slices_max=6, progress=False)
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "run_ablation.py"), "--data", data, "--out", out, "--ci",
           "--stage1", "--rows", "03_rbe", "04_ds", "05_pn"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pre = os.path.join(out, "stage1_rbe_prenorm", "slice_pretrain", "backbone.pdparams")
    post = os.path.join(out, "stage1_rbe_postnorm", "slice_pretrain", "backbone.pdparams")
    assert os.path.isfile(pre) and os.path.isfile(post)
    assert sorted(n for n in os.listdir(out) if n.startswith("stage1_")) == ["stage1_rbe_postnorm", "stage1_rbe_prenorm"]
    got = {row: load_config(os.path.join(out, row, "row_config.yaml"))["Arch"]["pretrained"]
           for row in ("03_rbe", "04_ds", "05_pn")}
    assert got == {"03_rbe": pre, "04_ds": pre, "05_pn": post}
    assert load_config(os.path.join(out, "stage1_rbe_postnorm", "stage1_config.yaml"))["Arch"]["backbone"][
        "post_norm"] is True
    assert r.stdout.count("slice pre-training ->") == 2
    df = pd.read_csv(os.path.join(out, "ablation.csv"))
    assert_scores_recomputed(df, data, out)
    assert df["note"].str.contains("stage 1: stage1_rbe_").all()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resumes: nothing is rerun
    assert again.returncode == 0 and again.stdout.count("finished before, not rerun") == 2
    assert "slice pre-training ->" not in again.stdout
