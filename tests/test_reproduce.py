"""tools/reproduce.py on a tiny synthetic set (10 labelled + 3 test series of 5-6 slices, 96 px, a few iterations):
the whole recipe runs; killed with SIGKILL in the middle of a training step and started again, it skips the
finished steps, resumes the training from ``latest`` and ends with a byte-identical submission.csv."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = [sys.executable, os.path.join(ROOT, "tools", "reproduce.py")]
TINY = ["Global.iters=8", "Global.eval_interval=0", "Global.save_interval=2", "Global.log_interval=2",
        "SlicePretrain.iters=2", "SlicePretrain.batch_slices=4", "SlicePretrain.eval_interval=2",
        "Global.progress_bar=false", "Data.num_workers=1", "Global.num_threads=1",
        "PseudoLabel.tau_s=0.5"]  # tau_s 0.5: the tiny model is not confident; every series is kept
STEPS = ["preprocess", "pretrain", "train", "eval", "infer", "pseudo_r1", "train_r1", "eval_r1", "infer_r1",
         "ensemble", "score"]


def _cmd(data, out, *extra, rounds=1):
    cmd = TOOL + ["-c", os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml"), "--data", str(data),
                  "--out", str(out), "--rounds", str(rounds), "--no-plots", "--quiet", *extra]
    for o in TINY:
        cmd += ["-o", o]
    return cmd


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    data = base / "data"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--out", str(data),
                    "--series", "10", "--test-series", "3", "--seed", "0", "--size", "96", "--slices-min", "5",
                    "--slices-max", "6", "--hemorrhage-fraction", "0.5", "--no-progress"], check=True)
    return base, data


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    base, data = tiny
    out = base / "run_a"
    r = subprocess.run(_cmd(data, out), capture_output=True, text=True, timeout=600, env=_env())
    return out, r


def _status(out):
    with open(out / "status.json") as f:
        return {row["step"]: row for row in json.load(f)["steps"]}


@pytest.mark.slow
def test_whole_recipe_runs(tiny, uninterrupted):
    base, data = tiny
    out, r = uninterrupted
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = _status(out)
    assert list(st) == STEPS and all(v["state"] == "done" for v in st.values()), st
    # the submission holds exactly the sample submission's IDs
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(data / "stage_2_sample_submission.csv")
    assert sorted(sub["ID"]) == sorted(sample["ID"]) and sub["Label"].between(0, 1).all()
    # the table: single, the round, the ensemble, the constant prior, each with a test score
    scores = {row["name"]: row for row in json.load(open(out / "scores.json"))["rows"]}
    assert set(scores) == {"single", "fixmatch round 1", "ensemble (eq. 3)", "constant prior"}
    res = (out / "results.txt").read_text()
    for name in scores:
        assert name in res and f"{scores[name]['weighted_log_loss']:.5f}" in res
    # the round trained on the pseudo-labels: the config got the file made by pseudo_r1
    cfg = (out / "round1" / "config.yaml").read_text()
    assert str(out / "round1" / "pseudo.csv") in cfg
    pseudo = pd.read_csv(out / "round1" / "pseudo.csv")
    assert pseudo["series_uid"].nunique() == 3  # tau_s 0.5: all 3 test series kept
    # the infer step predicted every slice (Infer.slab_mm=null): 6 rows per test image of the manifest
    manifest = pd.read_csv(data / "synthetic_manifest.csv")
    n_test = int((manifest["split"] == "test").sum())
    assert len(pd.read_csv(out / "single" / "test" / "predictions.csv")) == n_test == len(sample) // 6
    # a second run has nothing to do
    r2 = subprocess.run(_cmd(data, out), capture_output=True, text=True, timeout=300, env=_env())
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert all(v["state"] == "skipped" for v in _status(out).values())
    # a changed setting of one step re-runs that step and the ones after it, not the ones before
    r3 = subprocess.run(_cmd(data, out, "--dry-run") + ["-o", "Ensemble.tau_h=0.9"], capture_output=True,
                        text=True, timeout=300, env=_env())
    assert r3.returncode == 0, r3.stderr[-2000:]
    assert "== preprocess: skipped" in r3.stdout and "== pseudo_r1: skipped" in r3.stdout   # they do not read Ensemble
    ens = r3.stdout.split("== ensemble\n", 1)[1].splitlines()[0]                             # the step's command
    assert "tools/ensemble.py -c " in ens and "-o Ensemble.tau_h=0.9 --inputs" in ens


@pytest.mark.slow
def test_killed_mid_training_resumes_to_the_same_submission(tiny, uninterrupted):
    base, data = tiny
    out_a, ra = uninterrupted
    assert ra.returncode == 0, ra.stderr[-2000:]
    out = base / "run_b"
    # SIGKILL the whole process group (the pipeline and its tools/train.py child) as soon as the single model's
    # first checkpoint (iteration 2 of 8) exists
    proc = subprocess.Popen(_cmd(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    latest = out / "single" / "latest.json"
    t0 = time.time()
    while not latest.exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.load(open(latest))["iteration"]
    assert killed_at < 8, "the pipeline was not stopped inside the training step"
    st = _status(out)
    assert st["preprocess"]["state"] == "done" and st["pretrain"]["state"] == "done"
    assert st["train"]["state"] == "running" and st["eval"]["state"] == "pending"
    assert not (out / "single" / "history.json").exists()
    r = subprocess.run(_cmd(data, out), capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = _status(out)
    assert st["preprocess"]["state"] == "skipped" and st["pretrain"]["state"] == "skipped"
    assert all(st[s]["state"] == "done" for s in STEPS[2:])
    assert "== train (resuming from latest)" in r.stdout and "Global.checkpoints=" in r.stdout
    log = (out / "single" / "train.log").read_text()
    assert f"resumed from {out / 'single' / 'latest'} at iteration {killed_at}" in log
    # same bytes as the uninterrupted run: the trainer's resume restores weights, optimizer, schedule and RNGs,
    # and every later step is a deterministic function of the files before it
    assert (out / "submission.csv").read_bytes() == (out_a / "submission.csv").read_bytes()
    for f in ("single/test/predictions.csv", "round1/pseudo.csv", "round1/test/submission.csv"):
        assert (out / f).read_bytes() == (out_a / f).read_bytes(), f


def test_dry_run_commands_and_launcher(tmp_path):
    """--dry-run prints every command and runs nothing; --gpus/--ips put the training steps (only) under Paddle's
    launcher with the flags this Paddle takes (--devices, --ips; --nproc_per_node for CPU ranks)."""
    cfg = os.path.join(ROOT, "configs", "swin_b_seq.yaml")
    out = tmp_path / "run"
    r = subprocess.run(TOOL + ["-c", cfg, "--data", str(tmp_path / "rsna"), "--out", str(out), "--dry-run",
                               "--gpus", "0,1,2,3", "--ips", "10.0.0.1,10.0.0.2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    blocks = {b.split("\n", 1)[0]: b.split("\n", 1)[1] for b in r.stdout.split("== ")[1:] if "\n" in b}
    assert list(blocks)[:5] == ["preprocess", "train", "eval", "infer", "pseudo_r1"]  # no stage 1 for the paper
    assert "pseudo_r2" in blocks and "train_r2" in blocks and "pseudo_r3" not in blocks  # 2 rounds by default
    launch = f"{sys.executable} -m paddle.distributed.launch --devices 0,1,2,3 --ips 10.0.0.1,10.0.0.2 --log_dir "
    for step in ("train", "train_r1", "train_r2"):
        assert blocks[step].startswith(launch), blocks[step]
        assert "Global.device=gpu" in blocks[step] and f" {os.path.join(ROOT, 'tools', 'train.py')} " in blocks[step]
    for step in ("preprocess", "eval", "infer", "ensemble"):
        assert "paddle.distributed.launch" not in blocks[step]
    assert "configs/fixmatch/swin_b_seq_fixmatch.yaml" in blocks["train_r1"]
    assert "Infer.slab_mm=null" in blocks["infer"]
    assert "--ranks" in blocks["pseudo_r2"] and "--groups plain pseudo" in blocks["pseudo_r2"]
    assert "--groups plain pseudo pseudo" in blocks["ensemble"]
    assert "score" not in blocks  # no test labels in this data root
    r = subprocess.run(TOOL + ["-c", cfg, "--data", str(tmp_path), "--out", str(out), "--dry-run", "--nproc", "2",
                               "--rounds", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "-m paddle.distributed.launch --nproc_per_node 2 --log_dir" in r.stdout
    assert "pseudo_r1" not in r.stdout and "--weights 1" in r.stdout
    r = subprocess.run(TOOL + ["-c", cfg, "--data", str(tmp_path), "--out", str(out), "--ips", "10.0.0.1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--ips needs --gpus" in r.stderr


@pytest.mark.slow
def test_two_cpu_ranks_under_the_launcher(tiny):
    """--nproc 2: the training step runs as 2 gloo ranks under paddle.distributed.launch; the rest of the recipe
    (here without FixMatch rounds) runs on its output."""
    base, data = tiny
    out = base / "run_ranks"
    env = _env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run(_cmd(data, out, "--nproc", "2", "--slice-pretrain", "off", rounds=0), capture_output=True, text=True, timeout=600, env=env)
    logs = ""
    ld = out / "single" / "launch_log"
    for f in sorted(os.listdir(ld)) if ld.is_dir() else []:
        logs += f"\n--- {f}\n" + (ld / f).read_text(errors="replace")[-2000:]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + logs
    st = _status(out)
    assert list(st) == ["preprocess", "train", "eval", "infer", "ensemble", "score"]
    assert all(v["state"] in ("done", "skipped") for v in st.values()), st
    assert "-m paddle.distributed.launch --nproc_per_node 2" in r.stdout
    assert {"workerlog.0", "workerlog.1"} <= set(os.listdir(ld))
    log = (out / "single" / "train.log").read_text()
    assert "2 process(es)" in log
    sub = pd.read_csv(out / "submission.csv")
    assert len(sub) == len(pd.read_csv(data / "stage_2_sample_submission.csv")) and sub["Label"].between(0, 1).all()
