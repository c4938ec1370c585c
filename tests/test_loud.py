"""Loud where a day of GPU is at stake: a non-demo config trained from scratch warns (stderr + train.log header);
eval.py on a split without labels is an error saying so (exit 2). (pseudo_label.py keeping nothing -> exit 4:
tests/test_pseudo_label.py.)"""
import importlib.util
import os
import subprocess
import sys

from test_fixmatch import _make_train_cache

from ppihd.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_module():
    spec = importlib.util.spec_from_file_location("train_tool", os.path.join(ROOT, "tools", "train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_which_configs_warn():
    warn = _train_module().from_scratch_warning
    paper = os.path.join(ROOT, "configs", "swin_b_seq.yaml")
    assert "FROM SCRATCH" in warn(load_config(paper))
    assert "FROM SCRATCH" in warn(load_config(os.path.join(ROOT, "configs", "fixmatch", "swin_b_seq_fixmatch.yaml")))
    assert warn(load_config(paper, ["Arch.pretrained=weights/x.pdparams"])) == ""
    assert warn(load_config(paper, ["Global.checkpoints=output/x/latest"])) == ""
    assert warn(load_config(paper, ["Global.pretrained_model=output/x/best_model"])) == ""
    # the CPU demo configs (stage 2 gets its start from tools/pretrain_slices.py) do not warn
    assert warn(load_config(os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml"))) == ""
    assert warn(load_config(os.path.join(ROOT, "configs", "fixmatch", "demo_micro_fixmatch.yaml"))) == ""


def test_from_scratch_warning_and_unlabelled_eval(tmp_path):
    cache = _make_train_cache(str(tmp_path))
    out = tmp_path / "out"
    common = ["-c", os.path.join(ROOT, "configs", "swin_b_seq.yaml"), "-o", "Global.device=cpu",
              "-o", f"Global.output_dir={out}", "-o", "Global.progress_bar=false", "-o", f"Data.root={tmp_path}",
              "-o", f"Data.cache_dir={cache}", "-o", "Data.image_size=32", "-o", "Global.num_threads=1",
              "-o", "Arch.backbone.variant=micro",
              "-o", "DataLoader.Train.num_workers=0"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), *common, "-o", "Global.iters=1",
                        "-o", "Global.eval_interval=0", "-o", "Global.save_interval=0", "-o", "Global.log_interval=1",
                        "-o", "Optimizer.lr.warmup_steps=0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING Arch.pretrained is null" in r.stderr and "FROM SCRATCH" in r.stderr
    assert r.stderr.index("FROM SCRATCH") < r.stderr.index("training iterations")  # at start
    log = (out / "train.log").read_text().splitlines()
    assert "WARNING Arch.pretrained is null" in log[0] and "~16 GPU hours" in log[0]  # the log header
    assert sum("FROM SCRATCH" in line for line in log) == 1
    # eval on the test split (labels unknown): exit 2 with the reason; on val: 0
    ev = [sys.executable, os.path.join(ROOT, "tools", "eval.py"), *common,
          "-o", f"Global.pretrained_model={out / 'best_model'}", "--output", str(tmp_path / "ev")]
    r = subprocess.run(ev + ["--split", "test"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "split 'test' has no labels (2 series, 6 slices" in r.stderr and "tools/score_submission.py" in r.stderr
    assert not (tmp_path / "ev" / "metrics.json").exists()
    r = subprocess.run(ev + ["--split", "val"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
