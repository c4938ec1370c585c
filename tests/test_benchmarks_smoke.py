"""The benchmark scripts run end to end in their --quick mode and write sane results.

Timings are never asserted (shared CI machine); what is asserted is structure and correctness that does not
depend on speed: every fp32 back-end gives the dygraph model's probabilities, the memory fit is built from
real points, the loader delivered every slice of every epoch, the scaling fits and plots exist.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(script, *args, timeout=600):
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), "--quick", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_infer_quick(tmp_path):
    """Every requested path ran (a path that reports an error fails the test: onnxruntime is a dev requirement;
    the bf16 paths may only be refused for the one reason a CPU without bfloat16 gives)."""
    from ppihd.engine.runtime import cpu_supports_bf16

    paths = ("dygraph", "pi-onednn", "pi-native", "ort", "pi-onednn-bf16", "pi-onednn-bf16-plain")
    out = _run("infer.py", "--workdir", str(tmp_path), "--paths", ",".join(paths))
    assert "| path" in out and "GFLOP/s" in out
    res = json.loads((tmp_path / "infer.json").read_text())
    rows = {r["path"]: r for r in res["rows"]}
    assert set(rows) == set(paths)
    bf16 = ("pi-onednn-bf16", "pi-onednn-bf16-plain")
    gflop = res["model"]["gflop_per_slice"]
    for path in paths:
        r = rows[path]
        if path in bf16 and not cpu_supports_bf16():
            assert "this CPU has no native bfloat16" in r["error"], r
            continue
        assert "error" not in r, r
        assert r["peak_rss_mb"] > 100, r
        # the table's derived columns are the closed forms of the measured time
        assert r["gflops"] == pytest.approx(gflop / r["s_per_slice"], rel=1e-12)
        # each path against the peak of its own precision (benchmarks/peak.py)
        peak = res["peak"]["bf16_gflops" if path in bf16 else "fp32_gflops"]
        assert r["pct_peak"] == pytest.approx(100.0 * r["gflops"] / peak, rel=1e-12)
        assert r["x_dygraph"] == pytest.approx(rows["dygraph"]["s_per_slice"] / r["s_per_slice"], rel=1e-12)
    # dygraph is the reference; the fp32 back-ends compute the same function (same weights, same input)
    assert rows["dygraph"]["max_dp"] == 0.0 and rows["dygraph"]["x_dygraph"] == 1.0
    for path in ("pi-onednn", "pi-native", "ort"):
        assert rows[path]["max_dp"] < 1e-4, rows[path]
    if cpu_supports_bf16():  # bf16: close, not equal
        for path in bf16:
            assert 0 < rows[path]["max_dp"] < 0.05, rows[path]
    # the analytic cost of the micro backbone at 224² (ppihd.arch.summary): 0.37 GMACs -> ~0.74 GFLOP
    assert 0.5 < gflop < 1.0


def test_train_memory_quick(tmp_path):
    out = _run("train_memory.py", "--workdir", str(tmp_path))
    assert "GPU estimate GB" in out
    res = json.loads((tmp_path / "train_memory.json").read_text())
    assert [(r["recompute"], r["slices"]) for r in res["rows"]] == [(False, 2), (False, 4), (True, 2), (True, 4)]
    for r in res["rows"]:
        assert "error" not in r, r
        assert r["peak_rss_mb"] >= r["rss_model_mb"] > 0
    est = {e["recompute"]: e for e in res["estimate"]}
    params = res["rows"][0]["params"]
    # weights + grads + momentum = 12 bytes per parameter
    assert est[True]["state_gb"] == pytest.approx(12 * params / 2 ** 30)


def test_loader_quick(tmp_path):
    """Every loader row delivered the whole training split of the cache it read (counted from its index)."""
    import pandas as pd

    out = _run("loader.py", "--workdir", str(tmp_path))
    assert "slices/s" in out
    res = json.loads((tmp_path / "loader.json").read_text())
    idx = pd.read_csv(tmp_path / "cache_96" / "index.csv")
    train = idx[(idx["split"] == "train") & (idx["status"] == "ok")]
    assert sorted((r["kind"], r["uint8"], r["workers"]) for r in res["rows"]) == sorted(
        (k, u, w) for k in ("threads", "processes") for u in (True, False) for w in (0, 1))  # --quick
    for r in res["rows"]:
        # one epoch: the first (untimed) batch plus the timed rest is every slice of every training series
        assert (r["slices"] + r["first_batch_slices"], r["series"]) == (len(train), train["series_id"].nunique()), r
        assert r["slices_per_s"] == pytest.approx(r["slices"] / r["seconds"], rel=1e-12)
    demo = res["demo_training"]
    assert demo["slices_per_s"] == pytest.approx(demo["slices"] / demo["seconds"], rel=1e-12)


def test_scaling_quick(tmp_path):
    figs = tmp_path / "figs"
    out = _run("scaling.py", "--workdir", str(tmp_path), "--fig-dir", str(figs))
    assert "linear fit" in out
    res = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["slices"] for r in res["inference"]] == [1, 4, 16]
    assert [r["files"] for r in res["preprocess"]] == [8, 16, 24]
    # the sequence model is a fraction of a percent of the MACs at these lengths (analytic, not timed)
    assert all(r["seq_share_pct"] < 1.0 for r in res["inference"])
    assert (figs / "bench_scaling_inference.png").stat().st_size > 1000
    assert (figs / "bench_scaling_preprocess.png").stat().st_size > 1000


def test_infer_ab_quick(tmp_path):
    """Interleaved A/B: the fp32 program alone and in the 2-stream throughput mode give the same probabilities."""
    out = _run("infer_ab.py", "--workdir", str(tmp_path), "--streams", "1,2")
    assert "% peak" in out
    res = json.loads((tmp_path / "infer_ab.json").read_text())
    assert len(res["rounds"]) == 2
    assert {(r["variant"], r["streams"]) for r in res["rows"]} == {("fp32", 1), ("fp32", 2)}
    for r in res["rows"]:
        assert r["max_dp"] < 1e-5, r
        assert r["gflops"] == pytest.approx(res["gflop_per_slice"] / r["s_per_slice"], rel=1e-12)
        assert r["pct_peak"] == pytest.approx(100.0 * r["gflops"] / res["peak"]["best"]["fp32"]["gflops"], rel=1e-12)


def test_infer_ab_quick_bf16_variants(tmp_path):
    """bf16 / bf16-plain: the --precision bf16 programs with and without Export.bf16_kernels, interleaved with
    fp32; bf16 is close to fp32, and the variants reject the multi-stream mode by name."""
    from ppihd.engine.runtime import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16")
    _run("infer_ab.py", "--workdir", str(tmp_path), "--variants", "fp32,bf16,bf16-plain")
    res = json.loads((tmp_path / "infer_ab.json").read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"fp32", "bf16", "bf16-plain"}
    assert rows["fp32"]["max_dp"] == 0
    for v in ("bf16", "bf16-plain"):
        assert 0 < rows[v]["max_dp"] < 0.05, rows[v]
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "infer_ab.py"), "--quick", "--workdir",
                          str(tmp_path), "--variants", "bf16", "--streams", "1,2"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "--streams 1 only" in res.stderr
