#!/usr/bin/env python
"""The paper's whole recipe as one resumable command (docs/reproduce.md).

    python tools/reproduce.py -c configs/swin_b_seq.yaml --data data/rsna --out runs/paper \\
        -o Arch.pretrained=weights/SwinTransformer_base_patch4_window7_224_pretrained.pdparams -o Global.device=gpu
    python tools/reproduce.py ... --gpus 0,1,2,3                      # training steps on 4 GPUs
    python tools/reproduce.py ... --gpus 0,1,2,3 --ips 10.0.0.1,10.0.0.2   # several machines: this on 10.0.0.1,
    python tools/reproduce.py ... --gpus 0,1,2,3 --ips 10.0.0.1,10.0.0.2 --follower   # this on 10.0.0.2 (docs)
    python tools/reproduce.py -c configs/demo/swin_micro_seq.yaml --data data/demo --out output/reproduce-demo
    python tools/reproduce.py ... --dry-run                           # print the commands, run nothing

Steps, each a subprocess of an existing tool, inputs and outputs files (the run folder RUN, the data ROOT):

    preprocess    tools/preprocess.py                 -> <cache>/index.csv  (the cache of ROOT, shared by runs)
    pretrain      tools/pretrain_slices.py (demo configs only, as make demo) -> RUN/single/slice_pretrain/
    train         tools/train.py                      -> RUN/single/best_model.pdparams, history.json
    eval          tools/eval.py (val split)           -> RUN/single/eval/metrics.json
    infer         tools/infer.py -o Infer.slab_mm=null (every slice, as the paper) -> RUN/single/test/
    pseudo_rK     tools/pseudo_label.py (all models so far, eq. 3 weights by val rank) -> RUN/roundK/pseudo.csv
    train_rK, eval_rK, infer_rK   the FixMatch round K with the FixMatch config (RUN/roundK/)
    ensemble      tools/ensemble.py (eq. 3: the rounds = group pseudo, the single model = group plain; ranks
                  by validation log loss, 1 = best)  -> RUN/submission.csv
    score         tools/score_submission.py (when test labels exist) -> RUN/scores.json, the results table

A step is skipped when its completion marker RUN/.steps/<step>.json holds the hash of its command and of its
inputs' sizes and mtimes and its outputs exist; otherwise it runs (a training step that was interrupted resumes
from its ``latest`` checkpoint: ``-o Global.checkpoints=<dir>/latest``). Every step's output goes to
RUN/logs/<step>.log too. The status table (step, state, time, key metric) is printed and written to
RUN/status.json after every step. Exit status: 0 done; 2 bad command line; otherwise the failing step's exit
status (e.g. 4 from tools/pseudo_label.py when no series is kept), with the step named.

Several machines (``--ips``): the first machine (the first address) runs the pipeline; every other machine runs
the same command with ``--follower``, which watches RUN/status.json (RUN on a shared file system, at the same
path everywhere) and, whenever the first machine starts a training step, runs that step's launcher command
here (Paddle's launcher gives each machine its node rank from the position of its address in ``--ips``). The
first machine refreshes a heartbeat in status.json every HEARTBEAT_S seconds; a follower starts no step while the
heartbeat is older than STALE_S (a first machine killed without a final state) and stops its local launch when
the step's attempt there changes (the first machine started again), then follows the new one. A
follower exits 0 when the first machine's run is done; 1 when it failed or was interrupted (the local launch is
stopped); 2 when RUN holds no status.json of this run or no fresh heartbeat (after ``--wait`` seconds), was written for another folder
or another command, or this machine's address is not in ``--ips``; a local launch's own failure: its status.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ppihd.utils.fileio import atomic_path  # noqa: E402

#: The FixMatch config that goes with each single-model config (--fixmatch-config overrides).
FIXMATCH_CONFIGS = {
    "configs/demo/swin_micro_seq.yaml": "configs/fixmatch/demo_micro_fixmatch.yaml",
    "configs/swin_b_seq.yaml": "configs/fixmatch/swin_b_seq_fixmatch.yaml",
}
#: Config sections a tool does not read: a change there does not re-run its step (the hash covers the rest).
NOT_READ = {
    "preprocess": ("Global", "DataLoader", "Arch", "Loss", "Optimizer", "Metric", "Infer", "Export", "PseudoLabel",
                   "Ensemble", "SlicePretrain"),
    "pretrain": ("Infer", "Export", "PseudoLabel", "Ensemble"),
    "train": ("Infer", "Export", "PseudoLabel", "Ensemble", "SlicePretrain"),
    "eval": ("Infer", "Export", "PseudoLabel", "Ensemble", "SlicePretrain"),
    "infer": ("Loss", "Optimizer", "Export", "PseudoLabel", "Ensemble", "SlicePretrain"),
    "pseudo_label": ("Data", "DataLoader", "Arch", "Loss", "Optimizer", "Metric", "Infer", "Export", "Ensemble",
                     "SlicePretrain"),
    "ensemble": ("Data", "DataLoader", "Arch", "Loss", "Optimizer", "Metric", "Infer", "Export", "PseudoLabel",
                 "SlicePretrain"),
}
TEST_LABEL_FILES = ("synthetic_test_labels.csv", "stage_2_test_labels.csv")


class StepFailed(RuntimeError):
    def __init__(self, step: str, code: int, msg: str):
        super().__init__(msg)
        self.step, self.code = step, code


def _tool(name: str) -> List[str]:
    return [sys.executable, os.path.join(ROOT, "tools", name)]


def file_state(path: str) -> Any:
    """What a step's hash records of an input: (size, mtime_ns) of a file; of a folder the count, total size and
    newest mtime of its direct entries; None if missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not os.path.isdir(path):
        return [st.st_size, st.st_mtime_ns]
    n = size = newest = 0
    with os.scandir(path) as it:
        for e in it:
            s = e.stat()
            n, size, newest = n + 1, size + s.st_size, max(newest, s.st_mtime_ns)
    return [n, size, newest]


class Step:
    """One pipeline step. ``build()`` returns the tool's argv (without the launcher), its inputs and outputs; it
    is called when the step is reached, so it may read earlier steps' outputs (e.g. validation ranks)."""

    def __init__(self, name: str, build: Callable[[], Dict[str, Any]], metric: Callable[[], str] = lambda: "",
                 train_dir: Optional[str] = None, ok_codes: Sequence[int] = (0,)):
        self.name, self.build, self.metric = name, build, metric
        self.train_dir, self.ok_codes = train_dir, tuple(ok_codes)


class Pipeline:
    def __init__(self, a: argparse.Namespace):
        from ppihd.utils.config import is_demo_config, load_config

        self.a = a
        self.run = os.path.abspath(a.out)
        self.data = os.path.abspath(a.data)
        self.config = os.path.abspath(a.config)
        rel = os.path.relpath(self.config, ROOT).replace(os.sep, "/")
        fm = os.path.abspath(a.fixmatch_config) if a.fixmatch_config else (
            os.path.join(ROOT, FIXMATCH_CONFIGS[rel]) if rel in FIXMATCH_CONFIGS else None)
        if a.rounds > 0 and not fm:
            raise SystemExit(f"reproduce: error: no FixMatch config known for {a.config}; pass --fixmatch-config "
                             f"(known: {', '.join(FIXMATCH_CONFIGS)}) or --rounds 0")
        self.fixmatch = fm
        self.cfg = load_config(self.config, self.common_overrides())
        self.fm_cfg = load_config(self.fixmatch, self.common_overrides()) if self.fixmatch else None
        self.demo = is_demo_config(self.config)
        self.pretrain = self.demo if a.slice_pretrain == "auto" else a.slice_pretrain == "on"
        d = self.cfg["Data"]
        self.test_dir = os.path.join(self.data, d["test_dir"])
        self.train_labels = os.path.join(self.data, d["label_csv"]) if d["label_csv"] else None
        self.test_labels = a.test_labels
        if self.test_labels is None:
            found = [os.path.join(self.data, f) for f in TEST_LABEL_FILES if os.path.isfile(os.path.join(self.data, f))]
            self.test_labels = found[0] if found else None
        sample = os.path.join(self.data, "stage_2_sample_submission.csv")
        self.sample = a.sample or (sample if os.path.isfile(sample) else None)
        from ppihd.data.cache import resolve_index_file

        self.index = resolve_index_file(self.cfg)
        self.models: List[Dict[str, str]] = []  # name, dir, group
        self.status: List[Dict[str, Any]] = []

    # -- commands ----------------------------------------------------------------------------------------------
    def common_overrides(self) -> List[str]:
        return [f"Data.root={os.path.abspath(self.a.data)}"] + list(self.a.override)

    def cfg_args(self, config: str, out_dir: Optional[str] = None, extra: Sequence[str] = ()) -> List[str]:
        args = ["-c", config]
        for o in self.common_overrides() + ([f"Global.output_dir={out_dir}"] if out_dir else []) + list(extra):
            args += ["-o", o]
        return args

    def settings(self, tool: str, config: str, out_dir: Optional[str] = None, extra: Sequence[str] = ()) -> Any:
        """The resolved config a step's tool reads (its hash input instead of the ``-o`` list)."""
        from ppihd.utils.config import load_config

        ov = self.common_overrides() + ([f"Global.output_dir={out_dir}"] if out_dir else []) + list(extra)
        cfg = load_config(config, ov)
        return {k: v for k, v in cfg.items() if k not in NOT_READ[tool]}

    def launcher(self) -> List[str]:
        a = self.a
        if not (a.gpus or a.nproc):
            return []
        cmd = [sys.executable, "-m", "paddle.distributed.launch"]
        if a.gpus:
            cmd += ["--devices", a.gpus]
        if a.nproc:
            cmd += ["--nproc_per_node", str(a.nproc)]
        if a.ips:
            cmd += ["--ips", a.ips]
        return cmd

    def rel(self, p: str) -> str:
        return os.path.relpath(p, self.run)

    # -- metrics (short strings for the status table) ------------------------------------------------------------
    @staticmethod
    def _json(path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def val_wll(self, model_dir: str) -> Optional[float]:
        m = self._json(os.path.join(model_dir, "eval", "metrics.json"))
        return None if m is None else float(m["head2"]["weighted_log_loss"])

    def test_score(self, submission: str) -> Optional[float]:
        if not self.test_labels or not os.path.isfile(submission):
            return None
        from ppihd.metric.submission import read_labels, read_submission, score

        return float(score(read_submission(submission), read_labels(self.test_labels))["weighted_log_loss"])

    # -- the steps ---------------------------------------------------------------------------------------------
    def steps(self) -> List[Step]:
        steps: List[Step] = []
        index = self.index

        def preprocess() -> Dict[str, Any]:
            ins = [os.path.join(self.data, self.cfg["Data"]["train_dir"]), self.test_dir]
            if self.train_labels:
                ins.append(self.train_labels)
            return {"argv": _tool("preprocess.py") + self.cfg_args(self.config) + ["--no-progress"],
                    "settings": self.settings("preprocess", self.config), "inputs": ins, "outputs": [index]}

        def preprocess_metric() -> str:
            import pandas as pd

            idx = pd.read_csv(index, usecols=["split", "status", "series_id"])
            ok = idx[idx["status"] == "ok"]
            return ", ".join(f"{s} {g['series_id'].nunique()} series/{len(g)} slices"
                             for s, g in ok.groupby("split"))

        steps.append(Step("preprocess", preprocess, preprocess_metric))
        single = os.path.join(self.run, "single")
        start: List[str] = []  # the start weights of every training step
        if self.pretrain:
            sp = os.path.join(single, "slice_pretrain")
            backbone = os.path.join(sp, "backbone.pdparams")
            start = [f"Arch.pretrained={backbone}"]
            steps.append(Step(
                "pretrain",
                lambda: {"argv": _tool("pretrain_slices.py") + self.cfg_args(self.config, single),
                         "settings": self.settings("pretrain", self.config, single), "inputs": [index],
                         "outputs": [backbone, os.path.join(sp, "metrics.json")]},
                lambda: "val wLL {val_wll:.5f} (prior {baseline:.5f})".format(
                    **self._json(os.path.join(sp, "metrics.json"))["best"])))
        pre_inputs = [start[0].split("=", 1)[1]] if start else []
        self.models = [{"name": "single", "dir": single, "group": "plain", "config": self.config, "sfx": ""}]
        self._model_steps(steps, "", self.config, single, start, pre_inputs)
        for k in range(1, self.a.rounds + 1):
            rdir = os.path.join(self.run, f"round{k}")
            pseudo = os.path.join(rdir, "pseudo.csv")
            previous = list(self.models)
            steps.append(Step(f"pseudo_r{k}", self._pseudo_build(previous, pseudo), self._pseudo_metric(pseudo)))
            self.models.append({"name": f"fixmatch round {k}", "dir": rdir, "group": "pseudo",
                                "config": self.fixmatch, "sfx": f"_r{k}"})
            self._model_steps(steps, f"_r{k}", self.fixmatch, rdir, start + [f"Data.pseudo_label_csv={pseudo}"],
                              pre_inputs + [pseudo])
        sub = os.path.join(self.run, "submission.csv")
        models = list(self.models)
        steps.append(Step("ensemble", self._ensemble_build(models, sub),
                          lambda: self._fmt_test(sub)))
        if self.test_labels:
            scores = os.path.join(self.run, "scores.json")

            def score_build() -> Dict[str, Any]:
                subs = [os.path.join(m["dir"], "test", "submission.csv") for m in models] + [sub]
                names = [m["name"] for m in models] + ["ensemble (eq. 3)"]
                argv = _tool("score_submission.py") + ["--submission", *subs, "--names", *names,
                                                       "--labels", self.test_labels, "--json", scores]
                if self.sample:
                    argv += ["--sample", self.sample]
                if self.train_labels:
                    argv += ["--prior", self.train_labels]
                return {"argv": argv, "inputs": subs + [self.test_labels], "outputs": [scores]}

            steps.append(Step("score", score_build, lambda: self._fmt_test(sub)))
        return steps

    def _fmt_test(self, sub: str) -> str:
        s = self.test_score(sub)
        return "" if s is None else f"test wLL {s:.5f}"

    def _model_steps(self, steps: List[Step], sfx: str, config: str, out: str, start: List[str],
                     start_inputs: List[str]) -> None:
        best = os.path.join(out, "best_model")
        index = self.index

        def train_metric() -> str:
            h = self._json(os.path.join(out, "history.json")) or {}
            return "" if h.get("best_metric") is None else f"val wLL {h['best_metric']:.5f} @ {h['best_iter']}"

        dev = ["Global.device=gpu"] if self.a.gpus else []  # the launcher gives each rank its GPU
        steps.append(Step(
            "train" + sfx,
            lambda: {"argv": _tool("train.py") + self.cfg_args(config, out, start + dev),
                     "settings": self.settings("train", config, out, start + dev), "inputs": [index] + start_inputs,
                     "outputs": [best + ".pdparams", os.path.join(out, "history.json")]},
            train_metric, train_dir=out))
        ev = os.path.join(out, "eval")

        def eval_metric() -> str:
            m = self._json(os.path.join(ev, "metrics.json"))
            return "" if m is None else (f"val wLL {m['head2']['weighted_log_loss']:.5f} "
                                         f"(prior {m['baseline']['weighted_log_loss']:.5f})")

        steps.append(Step(
            "eval" + sfx,
            lambda: {"argv": _tool("eval.py") + self.cfg_args(config, out, [f"Global.pretrained_model={best}"])
                     + ["--output", ev],
                     "settings": self.settings("eval", config, out, [f"Global.pretrained_model={best}"]),
                     "inputs": [index, best + ".pdparams"],
                     "outputs": [os.path.join(ev, "metrics.json")]},
            eval_metric))
        test = os.path.join(out, "test")
        infer_o = [f"Global.pretrained_model={best}", "Infer.slab_mm=null"]
        if self.a.no_plots:
            infer_o.append("Infer.save_plots=false")
        steps.append(Step(
            "infer" + sfx,
            lambda: {"argv": _tool("infer.py") + self.cfg_args(config, None, infer_o)
                     + ["--input", self.test_dir, "--output", test, "--no-progress"],
                     "settings": self.settings("infer", config, None, infer_o),
                     "inputs": [self.test_dir, best + ".pdparams"],
                     "outputs": [os.path.join(test, "predictions.csv"), os.path.join(test, "submission.csv")]},
            lambda: self._fmt_test(os.path.join(test, "submission.csv")), ok_codes=(0, 3)))

    def ranks(self, models: List[Dict[str, str]]) -> Optional[List[int]]:
        """Rank of each model by validation weighted log loss (1 = best; ties keep the order); None if a model
        has no eval/metrics.json yet (dry run)."""
        vals = [self.val_wll(m["dir"]) for m in models]
        if any(v is None for v in vals):
            return None
        order = sorted(range(len(vals)), key=lambda i: (vals[i], i))
        r = [0] * len(vals)
        for pos, i in enumerate(order):
            r[i] = pos + 1
        return r

    def _weights_args(self, models: List[Dict[str, str]]) -> List[str]:
        if len(models) == 1:
            return []
        r = self.ranks(models)
        ranks = [str(x) for x in r] if r is not None else ["<rank-by-val-wLL>"] * len(models)
        return ["--ranks", *ranks, "--groups", *[m["group"] for m in models]]

    def _pseudo_build(self, models: List[Dict[str, str]], pseudo: str) -> Callable[[], Dict[str, Any]]:
        def build() -> Dict[str, Any]:
            preds = [os.path.join(m["dir"], "test", "predictions.csv") for m in models]
            argv = (_tool("pseudo_label.py") + self.cfg_args(self.fixmatch) + ["--pred", *preds]
                    + self._weights_args(models) + ["--out", pseudo])   # thresholds: the config's PseudoLabel
            if self.train_labels:
                argv += ["--train-labels", self.train_labels]
            metrics = [os.path.join(m["dir"], "eval", "metrics.json") for m in models] if len(models) > 1 else []
            return {"argv": argv, "settings": self.settings("pseudo_label", self.fixmatch),
                    "inputs": preds + metrics, "outputs": [pseudo]}
        return build

    def _pseudo_metric(self, pseudo: str) -> Callable[[], str]:
        def metric() -> str:
            import pandas as pd

            df = pd.read_csv(pseudo, dtype={"series_uid": str})
            return f"kept {df['series_uid'].nunique()} series/{len(df)} slices, {int(df['any'].sum())} any+"
        return metric

    def _ensemble_build(self, models: List[Dict[str, str]], sub: str) -> Callable[[], Dict[str, Any]]:
        def build() -> Dict[str, Any]:
            subs = [os.path.join(m["dir"], "test", "submission.csv") for m in models]
            w = self._weights_args(models) or ["--weights", "1"]
            argv = _tool("ensemble.py") + self.cfg_args(self.config) + ["--inputs", *subs] + w   # the config's Ensemble
            metrics = [os.path.join(m["dir"], "eval", "metrics.json") for m in models]
            return {"argv": argv + ["--out", sub], "settings": self.settings("ensemble", self.config),
                    "inputs": subs + metrics, "outputs": [sub]}
        return build

    # -- running -----------------------------------------------------------------------------------------------
    def marker(self, name: str, kind: str = "done") -> str:
        return os.path.join(self.run, ".steps", f"{name}.{kind}.json")

    @staticmethod
    def step_hash(argv: List[str], inputs: List[str], settings: Any = None) -> str:
        """sha256 of the command (without the interpreter; with ``settings``, the resolved config the tool reads
        replaces the ``-o`` list) and of the inputs' :func:`file_state`."""
        if settings is not None:
            argv = [x for i, x in enumerate(argv) if x != "-o" and (i == 0 or argv[i - 1] != "-o")]
        h = hashlib.sha256(json.dumps({"argv": argv[1:], "settings": settings,
                                       "inputs": {p: file_state(p) for p in inputs}},
                                      sort_keys=True, default=str).encode())
        return h.hexdigest()

    def write_json(self, path: str, obj: Any) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)

    def write_status(self, state: str = "running") -> None:
        """RUN/status.json: the run's ``state`` (running, done, failed (N), interrupted) and the step rows; a
        running training step under the launcher also has ``launch`` (what :func:`follow` runs on the other
        machines)."""
        if not self.a.dry_run:
            with self._status_lock:   # the heartbeat thread writes too (one temporary name per process)
                self._state = state
                self._write_status_file()

    def _write_status_file(self) -> None:
        self.write_json(os.path.join(self.run, "status.json"), {"run": self.run, "state": self._state,
                                                                 "steps": self.status, "session": self.session,
                                                                 "heartbeat": time.time()})

    def _heartbeat(self, stop: threading.Event) -> None:
        """Rewrite RUN/status.json (the last state written, a new heartbeat time) every :data:`HEARTBEAT_S`
        seconds while :meth:`execute` runs: a follower does not start a step of a first machine that stopped
        beating (killed without a final state)."""
        while not stop.wait(HEARTBEAT_S):
            with self._status_lock:
                self._write_status_file()

    def execute(self) -> int:
        steps = self.steps()
        self.status = [{"step": s.name, "state": "pending", "seconds": None, "metric": ""} for s in steps]
        self.session, self._status_lock = uuid.uuid4().hex, threading.Lock()   # one per execute(), for followers
        if not self.a.dry_run:
            os.makedirs(os.path.join(self.run, "logs"), exist_ok=True)
        self.write_status()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        if not self.a.dry_run:
            beat.start()
        try:
            return self._execute(steps)
        finally:
            stop.set()
            if beat.is_alive():
                beat.join()

    def _execute(self, steps: List[Step]) -> int:
        for i, s in enumerate(steps):
            row = self.status[i]
            try:
                self.run_step(s, row)
            except StepFailed as e:
                row.update(state=f"failed ({e.code})")
                self.write_status(f"failed ({e.code})")
                print(self.table())
                self.print_results()
                print(f"reproduce: step {e.step} failed with exit status {e.code}: {e}", file=sys.stderr)
                return e.code
            except KeyboardInterrupt:
                row.update(state="interrupted")
                self.write_status("interrupted")
                print(self.table())
                print(f"reproduce: interrupted in step {s.name}; run the same command again to resume",
                      file=sys.stderr)
                return 130
            self.write_status()
        self.write_status("done")
        print(self.table())
        if not self.a.dry_run:
            self.print_results()
        return 0

    def run_step(self, s: Step, row: Dict[str, Any]) -> None:
        b = s.build()
        argv, inputs, outputs = b["argv"], b["inputs"], b["outputs"]
        key = self.step_hash(argv, inputs, b.get("settings"))
        done = self._json(self.marker(s.name))
        launch = self.launcher() if s.train_dir else []
        if s.train_dir and launch:
            launch = launch + ["--log_dir", os.path.join(s.train_dir, "launch_log")]
        if done and done.get("hash") == key and all(os.path.exists(o) for o in outputs):
            row.update(state="skipped", seconds=done.get("seconds"), metric=done.get("metric", ""))
            print(f"== {s.name}: skipped (done {done.get('finished')}, inputs and command unchanged)")
            return
        extra: List[str] = []
        started = self._json(self.marker(s.name, "started"))
        if s.train_dir and started and started.get("hash") == key \
                and os.path.isfile(os.path.join(s.train_dir, "latest.json")):
            extra = ["-o", f"Global.checkpoints={os.path.join(s.train_dir, 'latest')}"]
        elif s.train_dir and any(os.path.isfile(os.path.join(s.train_dir, f"{n}.json")) for n in ("latest", "best_model")):
            extra = ["-o", "Global.start_over=true"]   # its inputs or settings changed: the old run is replaced
        full = (launch + argv[1:] if launch else argv) + extra  # the launcher takes the script, not python
        if self.a.dry_run:
            row.update(state="dry-run")
            print(f"== {s.name}\n{shlex.join(full)}")
            return
        print(f"== {s.name}{' (resuming from latest)' if extra else ''}\n{shlex.join(full)}", flush=True)
        self.write_json(self.marker(s.name, "started"), {"hash": key, "argv": argv, "time": time.time()})
        row.update(state="running")
        if launch:   # for the followers on the other machines (--ips): the script and its arguments
            row["launch"] = {"attempt": uuid.uuid4().hex, "argv": argv[1:], "extra": extra}
        self.write_status()
        t0 = time.time()
        env = dict(os.environ)
        if launch and self.a.nproc and not self.a.gpus:
            env["OMP_NUM_THREADS"] = "1"
            if not env.get("CUDA_VISIBLE_DEVICES"):  # an empty value makes the launcher pick the GPU type
                env.pop("CUDA_VISIBLE_DEVICES", None)
        log_path = os.path.join(self.run, "logs", f"{s.name}.log")
        with open(log_path, "ab") as log:
            log.write(f"\n$ {shlex.join(full)}\n".encode())
            proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            tail: List[bytes] = []
            try:
                for line in proc.stdout:
                    tail = (tail + [line])[-4:]
                    log.write(line)
                    log.flush()
                    if not self.a.quiet:
                        sys.stdout.buffer.write(line)
                        sys.stdout.flush()
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        seconds = round(time.time() - t0, 1)
        row["seconds"] = seconds
        if rc not in s.ok_codes:
            last = b"".join(tail).decode(errors="replace").rstrip()
            raise StepFailed(s.name, rc, f"its last output lines:\n{last}\n(whole output: {log_path})")
        missing = [o for o in outputs if not os.path.exists(o)]
        if missing:
            raise StepFailed(s.name, 1, f"exit status {rc} but outputs missing: {', '.join(missing)}")
        try:
            metric = s.metric()
        except Exception as e:  # a metric is a summary; a bad one must not fail a finished step
            metric = f"(metric unavailable: {e})"
        row.update(state="done" if rc == 0 else f"done (exit {rc})", metric=metric)
        self.write_json(self.marker(s.name), {"hash": key, "argv": argv, "inputs": inputs, "outputs": outputs,
                                              "seconds": seconds, "metric": metric, "exit": rc,
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")})

    def table(self) -> str:
        w = max(len(r["step"]) for r in self.status)
        lines = [f"{'step':<{w}}  {'state':<12} {'time':>8}  key metric"]
        for r in self.status:
            t = "" if r["seconds"] is None else f"{r['seconds']:.1f} s"
            lines.append(f"{r['step']:<{w}}  {r['state']:<12} {t:>8}  {r['metric']}")
        total = sum(r["seconds"] or 0 for r in self.status if r["state"].startswith(("done", "failed")))
        lines.append(f"{'(this run)':<{w}}  {'':<12} {total:>6.1f} s  steps run now; skipped steps show their own time")
        return "\n".join(lines)

    def print_results(self) -> None:
        """Single model, each FixMatch round, the ensemble and the constant prior: validation and test weighted log
        loss (test: where test labels exist). Also after a failed step, with what exists (blank = not there)."""
        def test_of(path: str) -> Optional[float]:
            try:
                return self.test_score(path)
            except Exception:  # a half-written or foreign file: no score
                return None

        state = {r["step"]: r["state"] for r in self.status}

        def ok(step: str) -> bool:  # finished in this run or skipped as finished: its files are current
            return state.get(step, "").startswith(("done", "skipped"))

        rows = [(m["name"], self.val_wll(m["dir"]) if ok("eval" + m["sfx"]) else None,
                 test_of(os.path.join(m["dir"], "test", "submission.csv")) if ok("infer" + m["sfx"]) else None)
                for m in self.models]
        rows.append(("ensemble (eq. 3)", None,
                     test_of(os.path.join(self.run, "submission.csv")) if ok("ensemble") else None))
        ev = self._json(os.path.join(self.models[0]["dir"], "eval", "metrics.json"))
        prior_test = None
        if self.test_labels and self.train_labels:
            try:
                from ppihd.metric.submission import constant_submission, prior_rates, read_labels, score

                labels = read_labels(self.test_labels)
                ids = self.sample_ids() or list(labels.index)
                prior = constant_submission(ids, prior_rates(self.train_labels))
                prior_test = float(score(prior, labels)["weighted_log_loss"])
            except Exception:
                prior_test = None
        rows.append(("constant prior", ev["baseline"]["weighted_log_loss"] if ev else None, prior_test))
        fmt = lambda v: "" if v is None else f"{v:.5f}"  # noqa: E731
        out = [f"{'model':<18} {'val wLL':>9} {'test wLL':>9}"]
        out += [f"{n:<18} {fmt(v):>9} {fmt(t):>9}" for n, v, t in rows]
        text = "\n".join(out)
        r = self.ranks(self.models) if ok("ensemble") else None
        if r is not None and len(self.models) > 1:
            text += "\nensemble ranks (by val wLL): " + ", ".join(f"{m['name']} {k}" for m, k in zip(self.models, r))
        if not self.test_labels:
            text += "\n(no test labels: pass --test-labels to score the test submissions)"
        print(text)
        with atomic_path(os.path.join(self.run, "results.txt")) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    def sample_ids(self) -> Optional[List[str]]:
        if not self.sample:
            return None
        import pandas as pd

        return pd.read_csv(self.sample, dtype={"ID": str})["ID"].tolist()


def launcher_ip() -> str:
    """This machine's address as Paddle's launcher finds it (``paddle.distributed.launch.context.node.Node``,
    2.6 and 3.x): its node rank is the position of this address in ``--ips`` (0 when it is missing)."""
    import socket

    try:
        return socket.gethostbyname(socket.getfqdn(socket.gethostname()))
    except OSError:
        return "127.0.0.1"


#: seconds between two reads of RUN/status.json by a follower
FOLLOW_POLL_S = 1.0
#: seconds between two heartbeats of the first machine in RUN/status.json (:meth:`Pipeline.execute`)
HEARTBEAT_S = 10.0
#: a follower starts no step of a status.json whose heartbeat is older than this (the first machine looks dead)
STALE_S = 60.0


def follow(pipe: Pipeline) -> int:
    """``--follower``: run, on this machine, the launcher command of every training step the first machine starts
    (RUN/status.json, :meth:`Pipeline.write_status`), until the first machine's run ends. Exit status: see the
    module docstring."""
    a = pipe.a
    status_path = os.path.join(pipe.run, "status.json")
    ip = launcher_ip()
    ips = a.ips.split(",")
    if ip not in ips:
        print(f"reproduce --follower: error: this machine's address {ip} (as paddle.distributed.launch finds it) is "
              f"not in --ips {a.ips}; the launcher would make it node 0 again. Use the addresses the machines see "
              "themselves under", file=sys.stderr)
        return 2
    if ip == ips[0]:
        print(f"reproduce --follower: error: {ip} is the first address of --ips: run the pipeline there (without "
              "--follower) and --follower on the other machines", file=sys.stderr)
        return 2
    mine = {s.name: s for s in pipe.steps() if s.train_dir}
    waited, t0 = False, time.time()
    while not os.path.isfile(status_path):
        if time.time() - t0 >= a.wait:
            print(f"reproduce --follower: error: no {status_path} after {a.wait:g} s: start tools/reproduce.py with "
                  f"--out {pipe.run} on the first machine ({ips[0]}), and give this machine the same (shared) run "
                  "folder at the same path", file=sys.stderr)
            return 2
        if not waited:
            print(f"waiting for the first machine to write {status_path}", flush=True)
            waited = True
        time.sleep(FOLLOW_POLL_S)
    def stamp() -> Any:   # the first machine replaces the file on every write (atomic rename): a new inode
        try:
            st_ = os.stat(status_path)
            return st_.st_ino, st_.st_mtime_ns, st_.st_size
        except FileNotFoundError:
            return None

    first, st = stamp(), pipe._json(status_path)
    if st is not None and _ended(st) is not None:   # a previous run's final state: wait for the first machine
        print(f"{status_path} says the run {st.get('state')}; waiting up to {a.wait:g} s for the first machine "
              "to start it again", flush=True)
        while stamp() == first and time.time() - t0 < a.wait:
            time.sleep(FOLLOW_POLL_S)
    done_attempts, unreadable, stale_since = set(), 0, None
    while True:
        st = pipe._json(status_path)
        if st is None or not isinstance(st.get("steps"), list):
            unreadable += 1       # written atomically: a file that stays unreadable is not the pipeline's
            if unreadable * FOLLOW_POLL_S >= 30:
                print(f"reproduce --follower: error: {status_path} is not a status.json of tools/reproduce.py",
                      file=sys.stderr)
                return 2
            time.sleep(FOLLOW_POLL_S)
            continue
        unreadable = 0
        if st.get("run") != pipe.run:
            print(f"reproduce --follower: error: {status_path} was written for the run folder {st.get('run')}, "
                  f"this machine sees it at {pipe.run}: mount the shared run folder at the same path on every "
                  "machine", file=sys.stderr)
            return 2
        for row in st["steps"]:
            job = row.get("launch")
            if row.get("state") != "running" or not job or job.get("attempt") in done_attempts:
                continue
            age = time.time() - float(st.get("heartbeat") or 0)
            if age > STALE_S:   # killed without a final state: its old attempt must not start here
                if stale_since is None:
                    stale_since = time.time()
                    print(f"reproduce --follower: {status_path} says step {row['step']} is running, but its last "
                          f"heartbeat is {age:.0f} s old (> {STALE_S:g} s): the first machine looks dead or not yet "
                          f"restarted; waiting up to {a.wait:g} s for it", file=sys.stderr, flush=True)
                if time.time() - stale_since >= a.wait:
                    print(f"reproduce --follower: error: the first machine wrote no heartbeat to {status_path} "
                          f"for {a.wait:g} s of waiting: restart tools/reproduce.py there (--out {pipe.run})",
                          file=sys.stderr)
                    return 2
                break
            stale_since = None
            done_attempts.add(job["attempt"])
            rc = _follow_step(pipe, mine, row["step"], job, ip, status_path)
            if rc:
                return rc
        code = _ended(st)
        if code == 0:
            print(f"the first machine's run is done ({status_path})")
            return 0
        if code is not None:
            print(f"reproduce --follower: the first machine's run {st.get('state')} ({status_path}; its logs in "
                  f"{os.path.join(pipe.run, 'logs')})", file=sys.stderr)
            return code
        time.sleep(FOLLOW_POLL_S)


def _ended(status: Dict[str, Any]) -> Optional[int]:
    """A follower's exit status for the first machine's run state: 0 done, 1 failed / interrupted, None running."""
    state = str(status.get("state"))
    return 0 if state == "done" else 1 if state.startswith(("failed", "interrupted")) else None


def _follow_step(pipe: Pipeline, mine: Dict[str, Step], name: str, job: Dict[str, Any], ip: str,
                 status_path: str) -> int:
    """Run one training step's launcher command here; 0 when it ended well or the first machine started again
    (the local launch of the old attempt stopped), else the exit status to return."""
    if name not in mine:
        print(f"reproduce --follower: error: the first machine runs the training step {name}, which this command "
              f"does not have (its training steps: {', '.join(mine)}): start it with the first machine's "
              "-c/--data/--out/--rounds/-o", file=sys.stderr)
        return 2
    s = mine[name]
    argv = s.build()["argv"][1:]
    if argv != job.get("argv"):
        print(f"reproduce --follower: error: step {name} differs between the first machine and this one:\n"
              f"  first machine: {shlex.join(job.get('argv') or [])}\n  this machine:  {shlex.join(argv)}\n"
              "start the follower with the same -c/--data/--out/-o (and the checkout at the same path)",
              file=sys.stderr)
        return 2
    full = pipe.launcher() + ["--log_dir", os.path.join(s.train_dir, f"launch_log.{ip}")] + argv + job["extra"]
    print(f"== {name}\n{shlex.join(full)}", flush=True)
    if pipe.a.dry_run:
        return 0
    proc = subprocess.Popen(full)
    while True:
        try:
            rc = proc.wait(timeout=FOLLOW_POLL_S)
        except subprocess.TimeoutExpired:
            st = pipe._json(status_path)
            if st is None:   # being replaced (or briefly unreadable): read it at the next poll
                continue
            row = next((r for r in st.get("steps", []) if r.get("step") == name), {})
            attempt = (row.get("launch") or {}).get("attempt")
            # another attempt (the first machine restarted) or this one ended there without finishing: stop it
            if _ended(st) == 1 or attempt != job["attempt"] or (
                    row.get("state") != "running" and not str(row.get("state")).startswith("done")):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if _ended(st) != 1 and attempt != job["attempt"]:   # follow the first machine's new attempt
                    print(f"reproduce --follower: the first machine started again (step {name}: "
                          f"{row.get('state')}); stopped its old attempt here ({status_path})", file=sys.stderr)
                    return 0
                print(f"reproduce --follower: step {name} {row.get('state') or st.get('state')} on the first "
                      f"machine; stopped it here ({status_path})", file=sys.stderr)
                return 1
            continue
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            print(f"reproduce --follower: step {name} failed on this machine with exit status {rc} (its worker "
                  f"logs: {os.path.join(s.train_dir, f'launch_log.{ip}')})", file=sys.stderr)
        return rc


def _flags(ap) -> None:
    ap.add_argument("--data", required=True, help="data root (RSNA layout: stage_2_train/, stage_2_test/, csv)")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--rounds", type=int, default=2, help="FixMatch rounds (default 2: the paper's 2 pseudo models)")
    ap.add_argument("--fixmatch-config", default=None, help="FixMatch config (default: the one for -c, see "
                                                            "FIXMATCH_CONFIGS)")
    ap.add_argument("--gpus", default=None, help="run the training steps under paddle.distributed.launch on "
                                                 "these devices, e.g. 0,1,2,3")
    ap.add_argument("--ips", default=None, help="machines for the launcher, e.g. 10.0.0.1,10.0.0.2 (docs)")
    ap.add_argument("--nproc", type=int, default=None,
                    help="processes per machine for the launcher (CPU: --nproc 2 runs 2 gloo ranks)")
    ap.add_argument("--slice-pretrain", choices=["auto", "on", "off"], default="auto",
                    help="stage-1 slice pre-training (auto: for demo configs only, as make demo)")
    ap.add_argument("--test-labels", default=None, help="test labels to score with (default: "
                                                        "<data>/synthetic_test_labels.csv if present)")
    ap.add_argument("--sample", default=None, help="sample submission for the ID check (default: "
                                                   "<data>/stage_2_sample_submission.csv if present)")
    ap.add_argument("--no-plots", action="store_true", help="no per-series PNGs from the inference steps")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--quiet", action="store_true", help="steps' output only to RUN/logs/<step>.log")
    ap.add_argument("--follower", action="store_true",
                    help="on machines 2..N of --ips: run the training steps the first machine starts (RUN shared)")
    ap.add_argument("--wait", type=float, default=600.0,
                    help="--follower: seconds to wait for the first machine's RUN/status.json (default 600)")


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    # -c: the single-model config; -o: an override for every step that takes a config
    return run_tool(_reproduce, argv, description=__doc__, flags=_flags)


def _reproduce(a, cfg, log) -> int:
    if a.rounds < 0:
        log.error("--rounds must be >= 0")
        return 2
    if a.ips and not (a.gpus or a.nproc):
        log.error("--ips needs --gpus (or --nproc)")
        return 2
    if a.follower and not a.ips:
        log.error("--follower needs --ips (the machines; this one must not be the first)")
        return 2
    pipe = Pipeline(a)   # a ConfigError: exit 2 (run_tool)
    if a.follower:
        return follow(pipe)
    if not a.dry_run:
        os.makedirs(pipe.run, exist_ok=True)
        import fcntl

        lock = open(os.path.join(pipe.run, ".lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"reproduce: error: another tools/reproduce.py is running on {pipe.run}", file=sys.stderr)
            return 2
    return pipe.execute()


if __name__ == "__main__":
    sys.exit(main())
