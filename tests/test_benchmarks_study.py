"""benchmarks/peak.py, peer_torch.py and study.py run end to end in their --quick mode and write sane results.

Timings are never asserted (shared CI machine). What is asserted: the peak measures the libraries it names and
takes the best of them; the theoretical figure follows the CPU's flags; the study run produced the study answer
(studies.csv) and every phase of the breakdown; the PyTorch peer says so and exits 0 when torch is absent.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
#: an interpreter with torch + timm (never a dependency of ppihd; not in CI): the torch parts run only with it
TORCH_PYTHON = os.environ.get("PPIHD_TORCH_PYTHON", "")


def _run(script, *args, timeout=900, env=None):
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), "--quick", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_peak_quick(tmp_path):
    out = _run("peak.py", "--workdir", str(tmp_path), "--libs", "paddle,numpy,paddle-inference")
    res = json.loads((tmp_path / "peak.json").read_text())
    assert res["threads"] == os.cpu_count()
    libs = {(r["lib"], r["dtype"], r["n"]) for r in res["rows"]}
    for lib in ("paddle", "numpy", "paddle-inference"):  # every library at both quick sizes, fp32
        assert {(lib, "fp32", 256), (lib, "fp32", 512)} <= libs, libs
    fp32 = [r["gflops"] for r in res["rows"] if r["dtype"] == "fp32"]
    assert res["best"]["fp32"]["gflops"] == max(fp32) > 0  # the peak is the best library at the best size
    # the BLAS named is the one numpy reports
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    assert blas in res["numpy_blas"]
    flags = set(res["machine"]["flags"])
    th = res["theoretical"]
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert "bf16" in res["best"], res["errors"]  # oneDNN bf16 through Paddle Inference
        if "amx_bf16" not in flags:  # vdpbf16ps: a pair of bf16 products per fp32 lane = 2x the fp32 FMA rate
            assert th["bf16_flop_per_cycle_core"] == 2 * th["fp32_flop_per_cycle_core"]
    else:
        assert "bf16" not in res["best"] and th["bf16_gflops"] is None
    assert "fp32 peak" in out


def test_peer_torch_says_so_without_torch(tmp_path):
    if TORCH_PYTHON:
        pytest.skip("PPIHD_TORCH_PYTHON is set: the torch run is tested below")
    res = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if res.returncode == 0:
        pytest.skip("torch is importable in this interpreter: the no-torch message cannot be shown")
    out = _run("peer_torch.py", "--workdir", str(tmp_path))
    assert "torch is not importable" in out and "not measured" in out
    assert not (tmp_path / "peer_torch.json").exists()


@pytest.mark.skipif(not TORCH_PYTHON, reason="torch is not a dependency of ppihd (not in CI): set PPIHD_TORCH_PYTHON "
                    "to an interpreter with torch + timm to run the peer benchmark")
def test_peer_torch_quick(tmp_path):
    out = _run("peer_torch.py", "--workdir", str(tmp_path), "--torch-python", TORCH_PYTHON, timeout=1800)
    res = json.loads((tmp_path / "peer_torch.json").read_text())
    rows = {r["path"]: r for r in res["rows"]}
    assert {"ppihd:fp32", "timm:fp32"} <= set(rows)
    assert rows["timm:fp32"]["x_ppihd"] == pytest.approx(rows["timm:fp32"]["median_s_per_slice"]
                                                        / rows["ppihd:fp32"]["median_s_per_slice"])
    assert "x ppihd" in out


def test_study_quick(tmp_path):
    out = _run("study.py", "--workdir", str(tmp_path), "--drivers", "infer,predict-fp32", timeout=1800)
    res = json.loads((tmp_path / "study.json").read_text())
    fixture = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "ge_head_ct_tilt")
    n_dcm = len([f for f in os.listdir(fixture) if f.endswith(".dcm")])
    assert res["slices"] == n_dcm == 28
    for d in ("infer", "predict-fp32"):
        cli = res["results"][d]["cli"][0]
        assert cli["exit_code"] == 0 and cli["studies"] == 1
        child = res["results"][d]["child"][0]
        assert child["exit_code"] == 0 and child["studies"] == 1 and child["missing_hooks"] == []
        with open(tmp_path / "out" / d / "child0" / "studies.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == 1   # one study, one answer
        cold = child["cold"]
        for phase in ("import", "model load", "scan", "decode+preprocess", "model", "write"):
            assert cold[phase] > 0, (d, phase, cold)
        # the phases cover the driver's main() (other = the uncovered rest, never negative)
        covered = sum(cold[p] for p in ("model load", "scan", "decode+preprocess", "model", "write", "other"))
        assert covered == pytest.approx(cold["total"], rel=1e-6, abs=1e-6)
        warm = child["warm"][0]
        assert warm["exit_code"] == 0 and warm["model"] > 0
        assert warm["model load"] == 0   # warm = the model already loaded
    assert "where the write time goes" in out
