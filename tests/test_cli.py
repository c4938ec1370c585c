"""The tools' shared start (ppihd.utils.cli.run_tool): -c/-o through the schema, flags that set config keys,
exit codes 2 and 6; tools/ensemble.py and tools/pseudo_label.py read their Ensemble / PseudoLabel sections."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.utils.cli import run_tool
from ppihd.utils.runlock import LockError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _seen(argv, **kw):
    got = {}

    def main(args, cfg, log):
        got.update(args=args, cfg=cfg)
        return 0
    code = run_tool(main, argv, description="test", **kw)
    return code, got


def test_flags_set_config_keys_after_the_overrides(tmp_path):
    flags = lambda p: p.add_argument("--tau-h", type=float, default=None)  # noqa: E731
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("Ensemble:\n  tau_h: 0.9\n")
    code, got = _seen(["-c", str(cfg_file)], flags=flags, flag_keys={"tau_h": "Ensemble.tau_h"})
    assert code == 0 and got["cfg"]["Ensemble"]["tau_h"] == 0.9                       # the file
    code, got = _seen(["-c", str(cfg_file), "-o", "Ensemble.tau_h=0.8"], flags=flags,
                      flag_keys={"tau_h": "Ensemble.tau_h"})
    assert got["cfg"]["Ensemble"]["tau_h"] == 0.8                                        # -o over the file
    code, got = _seen(["-c", str(cfg_file), "-o", "Ensemble.tau_h=0.8", "--tau-h", "0.7"], flags=flags,
                      flag_keys={"tau_h": "Ensemble.tau_h"})
    assert got["cfg"]["Ensemble"]["tau_h"] == 0.7                                        # the flag over -o
    code, got = _seen([], config="optional")
    assert code == 0 and got["cfg"]["Ensemble"]["tau_h"] == 0.998 and got["cfg"]["_source_"] is None


def test_bad_config_missing_weights_and_locks_map_to_exit_codes(tmp_path, ppihd_log):
    last = lambda: ppihd_log.records.pop().getMessage()  # noqa: E731 - the newest ppihd log line, consumed
    code, got = _seen(["-o", "Ensemble.tau=1"], config="optional")
    assert code == 2 and not got
    assert "unknown key 'Ensemble.tau'" in last()
    code, got = _seen([], config="optional", needs_weights=True)
    assert code == 2 and not got
    assert "Global.pretrained_model is not set" in last()

    def locked(args, cfg, log):
        raise LockError(f"{tmp_path} is held by pid 1")
    assert run_tool(locked, [], description="test", config="optional") == 6
    assert last() == f"{tmp_path} is held by pid 1"
    with pytest.raises(SystemExit) as e:   # a required -c missing: argparse's usage error
        run_tool(locked, [], description="test")
    assert e.value.code == 2


def _write_sub(path, ids, values):
    pd.DataFrame({"ID": ids, "Label": values}).to_csv(path, index=False)
    return str(path)


def test_ensemble_reads_the_ensemble_section(tmp_path):
    ids = [f"ID_{i:09x}_{lab}" for i in range(1) for lab in LABELS]
    a = _write_sub(tmp_path / "a.csv", ids, np.array([0.7, 0.2, 0.5, 0.95, 0.05, 0.4]))
    tool = [sys.executable, os.path.join(ROOT, "tools", "ensemble.py"), "--inputs", a, "--weights", "1"]
    cfg = tmp_path / "e.yaml"
    cfg.write_text("Ensemble:\n  tau_h: 0.6\n  tau_l: 0.1\n")
    r = subprocess.run(tool + ["-c", str(cfg), "--out", str(tmp_path / "s1.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # one model, weight 1: p > 0.6 -> 1 (0.7, 0.95), p < 0.1 -> 0 (0.05), the rest as they are
    assert pd.read_csv(tmp_path / "s1.csv")["Label"].tolist() == [1.0, 0.2, 0.5, 1.0, 0.0, 0.4]
    r = subprocess.run(tool + ["-c", str(cfg), "-o", "Ensemble.tau_l=null", "--tau-h", "0.9",
                               "--out", str(tmp_path / "s2.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "s2.csv")["Label"].tolist() == [0.7, 0.2, 0.5, 1.0, 0.05, 0.4]
    r = subprocess.run(tool + ["-o", "Ensemble.mode=median", "--out", str(tmp_path / "s3.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Ensemble.mode must be paper | reference, got 'median'" in r.stderr


def test_pseudo_label_reads_the_pseudolabel_section(tmp_path):
    # one series of two slices; min over slices and classes of max(p, 1 - p) = 0.9 (the 0.1 / 0.9 entries)
    probs = np.array([[0.01, 0.02, 0.03, 0.9, 0.01, 0.95], [0.02, 0.01, 0.1, 0.02, 0.01, 0.03]])
    pred = pd.DataFrame({"patient_id": "p", "study_uid": "1.2", "series_uid": "1.2.3", "series_id": "s",
                         "sop_uid": ["1.2.3.1", "1.2.3.2"], "slice_idx": [0, 1], "position": [0.0, 5.0],
                         **{lab: probs[:, k] for k, lab in enumerate(LABELS)}, "path": ["a.dcm", "b.dcm"]})
    pred.to_csv(tmp_path / "pred.csv", index=False)
    tool = [sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"), "--pred", str(tmp_path / "pred.csv")]
    r = subprocess.run(tool + ["-o", "PseudoLabel.tau_s=0.85", "--out", str(tmp_path / "p1.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "tau_s=0.85" in r.stdout and "kept 1/1 series" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(tool + ["-o", "PseudoLabel.tau_s=0.85", "--tau-s", "0.95", "--out", str(tmp_path / "p2.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 4 and "kept 0/1 series" in r.stdout   # the flag wins: 0.9 is not > 0.95
