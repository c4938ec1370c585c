#!/usr/bin/env python
"""One real study end to end: DICOM folder -> studies.csv, cold and warm, per driver, with the time broken down.

    python benchmarks/study.py                       # Swin-B (random init, exported), 3 interleaved repeats
    python benchmarks/study.py --repeats 5 --warm 3
    python benchmarks/study.py --quick               # micro model, 1 repeat (smoke run)

The study: the real GE head CT fixture (``../shared/fixtures/ge_head_ct_tilt``, 28 axial slices of 512², one
series; ``--fixture``) copied into ``<workdir>/study``. The model: a seeded random-init Swin-B IHDNet
(``configs/swin_b_seq.yaml``), its weights saved for ``tools/infer.py`` and exported with the package's exporter
(``ppihd.engine.exporter.export_model`` with ``Export.bf16=True``: the fp32 program and the two bf16 programs).

Drivers (``--drivers``): ``infer`` = ``tools/infer.py`` (dygraph), ``predict-fp32`` / ``predict-bf16`` =
``deploy/python/predict.py [--precision bf16]``; all with ``--threads`` (default 2) and ``--no-progress``.
Per repeat and driver, interleaved:

1. **cold, as a user runs it**: the exact command line in a new process, wall time from the parent (interpreter
   start, imports, model load, the first predict with oneDNN's primitive creation, all outputs, exit).
2. **cold, instrumented**: a new process (``--child``) that times its imports (paddle and the ppihd modules the
   driver imports at the top), then runs the driver's ``main()`` with timers around the public functions it
   calls (:data:`HOOKS`: ``scan``, ``load_slabs``, the back-end's ``predict_many``, the model constructors,
   the writers), then **warm**: ``run_inference`` again ``--warm`` times with the same back-end (model loaded)
   on the same study into a fresh output folder (= the next study of the same size).

Phases: ``start`` (process wall seen by the parent minus the child's own imports + main: interpreter start
and exit), ``import``, ``model load`` (Paddle Inference predictor creation; dygraph: build + weights),
``scan`` (header scan), ``decode+preprocess`` (``load_slabs``: pixel decode, HU, windows, crop, resize),
``model`` (``predict_many``), ``write`` (series JSON + PNG, ``studies.csv``, SR + ``report.html``; the
per-slice CSVs are written by the ``OutputWriter`` inside ``other``), ``other`` (the rest of the driver:
config, grouping and study planning, locks, run markers, lazily imported modules). Medians over the repeats;
results: printed tables and ``<workdir>/study.json`` (``study_partial.json`` after every repeat).
"""
from __future__ import annotations

import argparse
import csv
import functools
import glob
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (REPO, emit, load_average, machine_info, machine_lines, median,  # noqa: E402
                                run_child, save_json, table)

SCRIPT = os.path.abspath(__file__)
FIXTURE = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "ge_head_ct_tilt")
DRIVERS = {"infer": "tools/infer.py", "predict-fp32": "deploy/python/predict.py",
           "predict-bf16": "deploy/python/predict.py"}
PHASES = ("start", "import", "model load", "scan", "decode+preprocess", "model", "write", "other")
#: the parts of "write" (the PNG is part of the series reports; shown, not added twice)
WRITES = ("write: series png+json", "write: studies.csv", "write: SR+html")
WRITE_DETAIL = WRITES + ("write: series png (of it)",)

#: (module, attribute, phase) timed in the instrumented child; ``Class.method`` patches a class's own method.
#: The names follow ppihd.engine.predictor as it is; a hook whose target is gone is reported, not fatal.
HOOKS = (
    ("ppihd.engine.predictor", "run_inference", "run"),
    ("ppihd.data.series", "scan", "scan"),
    ("ppihd.data.series", "load_slabs", "decode+preprocess"),
    ("ppihd.engine.backends", "Backend.predict_many", "model"),
    ("ppihd.engine.backends", "DygraphBackend.predict_many", "model"),
    ("ppihd.engine.backends", "PaddleInferenceBackend.__init__", "model load"),
    ("ppihd.arch", "build_model", "model load"),
    ("ppihd.utils.checkpoint", "load_weights", "model load"),
    ("ppihd.engine.predictor", "_write_report", "write: series png+json"),
    ("ppihd.engine.report", "plot_series", "write: series png (of it)"),
    ("ppihd.engine.studies", "write_studies", "write: studies.csv"),
    ("ppihd.engine.publish", "write_study_reports", "write: SR+html"),
)
#: what the drivers import at their top / first lines (timed as "import")
IMPORTS = ("paddle", "ppihd.utils.env", "ppihd.utils.config", "ppihd.engine.exporter", "ppihd.engine.backends",
           "ppihd.engine.predictor",
           "ppihd.arch", "ppihd.data.series", "ppihd.engine.studies", "ppihd.engine.publish")


# ----------------------------------------------------------------------------------------------------------
# the instrumented child
# ----------------------------------------------------------------------------------------------------------
class Phases:
    """Seconds per phase; nested calls of the same phase (a base method calling an override) count once."""

    def __init__(self):
        self.t: Dict[str, float] = {}
        self._depth: Dict[str, int] = {}

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            depth = self._depth.get(phase, 0)
            self._depth[phase] = depth + 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[phase] = depth
                if depth == 0:
                    self.t[phase] = self.t.get(phase, 0.0) + time.perf_counter() - t0
        return timed

    def install(self) -> List[str]:
        """Patch :data:`HOOKS`; returns the hooks whose target does not exist."""
        missing = []
        for mod_name, attr, phase in HOOKS:
            mod = importlib.import_module(mod_name)
            owner, name = mod, attr
            if "." in attr:
                cls, name = attr.split(".")
                owner = getattr(mod, cls, None)
                if owner is None or name not in vars(owner):
                    missing.append(f"{mod_name}.{attr}")
                    continue
            elif not hasattr(mod, name):
                missing.append(f"{mod_name}.{attr}")
                continue
            setattr(owner, name, self.wrap(getattr(owner, name), phase))
        return missing

    def breakdown(self, total: float) -> Dict[str, float]:
        """The phases of one driver run of ``total`` seconds, ``other`` = what no hook covered."""
        out = {p: self.t.get(p, 0.0) for p in ("model load", "scan", "decode+preprocess", "model")}
        out.update({w: self.t.get(w, 0.0) for w in WRITE_DETAIL})
        out["write"] = sum(out[w] for w in WRITES)
        out["other"] = max(0.0, total - sum(out[p] for p in PHASES[2:7]))
        out["total"] = total
        return out


def child_run(driver: str, argv: List[str], threads: int, warm: int, warm_out: str) -> None:
    t_child = time.perf_counter()
    from ppihd.utils.env import setup_threads

    setup_threads(threads)  # what the drivers do with --threads, before paddle is imported
    for m in IMPORTS:
        importlib.import_module(m)
    t_import = time.perf_counter() - t_child
    ph = Phases()
    missing = ph.install()
    import ppihd.engine.predictor as predictor

    captured: Dict[str, Any] = {}
    timed_run = predictor.run_inference

    def capture(*args, **kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        return timed_run(*args, **kwargs)

    predictor.run_inference = capture
    spec = importlib.util.spec_from_file_location("ppihd_bench_driver", os.path.join(REPO, DRIVERS[driver]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.perf_counter()
    rc = mod.main(argv)
    cold = ph.breakdown(time.perf_counter() - t0)
    cold["run_inference"] = ph.t.get("run", 0.0)
    warm_rows = []
    for i in range(warm if "args" in captured else 0):  # a driver that stopped before predicting: no warm run
        ph.t.clear()
        args = list(captured["args"])
        args[1] = os.path.join(warm_out, f"warm{i}")  # run_inference(inputs, out_dir, backend, ...)
        shutil.rmtree(args[1], ignore_errors=True)
        t0 = time.perf_counter()
        res = timed_run(*args, **captured["kwargs"])
        w = ph.breakdown(time.perf_counter() - t0)
        w["exit_code"] = int(res["exit_code"])
        warm_rows.append(w)
    emit({"driver": driver, "exit_code": int(rc), "import": t_import, "cold": cold, "warm": warm_rows,
          "child_s": time.perf_counter() - t_child, "missing_hooks": missing})


def child_export(config: str, overrides: List[str], workdir: str, threads: int) -> None:
    from ppihd.utils.env import setup_threads

    setup_threads(threads)
    import paddle

    from ppihd.arch import build_model
    from ppihd.engine.exporter import export_model
    from ppihd.utils.config import load_config

    cfg = load_config(config, overrides + ["Export.bf16=True"])
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    model.eval()
    weights = os.path.join(workdir, "weights.pdparams")
    paddle.save(model.state_dict(), weights)
    t0 = time.time()
    export_model(model, cfg, os.path.join(workdir, "model"), onnx=False)
    emit({"weights": weights, "model_dir": os.path.join(workdir, "model"), "export_s": time.time() - t0,
          "variant": cfg["Arch"]["backbone"]["variant"]})


# ----------------------------------------------------------------------------------------------------------
# the parent
# ----------------------------------------------------------------------------------------------------------
def driver_argv(driver: str, study: str, out: str, exp: Dict[str, Any], config: str, overrides: List[str],
                threads: int) -> List[str]:
    """The driver's command-line arguments (after the script)."""
    common = ["--input", study, "--output", out, "--threads", str(threads), "--no-progress"]
    if driver == "infer":
        ov = [x for o in overrides for x in ("-o", o)]
        return ["-c", config, *ov, "-o", f"Global.pretrained_model={exp['weights']}", "--device", "cpu", *common]
    return ["--model_dir", exp["model_dir"], *common] + (["--precision", "bf16"] if driver == "predict-bf16" else [])


def _studies_rows(out: str) -> int:
    path = os.path.join(out, "studies.csv")
    if not os.path.isfile(path):
        return 0
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("-o", "--override", action="append", default=[], help="config override of the model")
    p.add_argument("--fixture", default=FIXTURE, help="a folder of one study's DICOM files")
    p.add_argument("--drivers", default=",".join(DRIVERS))
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (cold runs) per driver")
    p.add_argument("--warm", type=int, default=2, help="warm runs per instrumented child")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="output/bench/study")
    p.add_argument("--reuse", action="store_true", help="reuse an earlier run's exported model in --workdir")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--quick", action="store_true", help="micro model, 1 repeat, 1 warm run (smoke run)")
    a = p.parse_args(argv)
    if a.child is not None:
        kind, rest = a.child[0], a.child[1:]
        if kind == "run":
            child_run(rest[0], json.loads(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        elif kind == "export":
            child_export(rest[0], json.loads(rest[1]), rest[2], int(rest[3]))
        return 0
    if a.quick:
        a.override = ["Arch.backbone.variant=micro"] + a.override
        a.repeats, a.warm = 1, 1
    drivers = [d.strip() for d in a.drivers.split(",") if d.strip()]
    bad = [d for d in drivers if d not in DRIVERS]
    if bad:
        p.error(f"unknown --drivers {bad}; expected from {','.join(DRIVERS)}")
    files = sorted(glob.glob(os.path.join(a.fixture, "*.dcm")))
    if not files:
        p.error(f"--fixture {a.fixture}: no .dcm files")
    wd = os.path.abspath(a.workdir)
    study = os.path.join(wd, "study", os.path.basename(os.path.normpath(a.fixture)))
    shutil.rmtree(os.path.join(wd, "study"), ignore_errors=True)
    os.makedirs(study)
    for f in files:
        shutil.copy(f, study)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    print(f"study: {len(files)} files from {a.fixture} -> {study}", flush=True)

    meta = os.path.join(wd, "export.json")
    if a.reuse and os.path.isfile(meta):
        exp = json.load(open(meta))
    else:
        exp = run_child(SCRIPT, ["export", a.config, json.dumps(a.override), wd, a.threads], timeout=a.timeout)
        if "error" in exp:
            print(f"export failed: {exp['error']}", file=sys.stderr)
            return 1
        save_json(meta, exp)
    print(f"model: {exp['variant']} (random init), exported in {exp.get('export_s', 0):.0f} s -> {exp['model_dir']}",
          flush=True)

    env = dict(os.environ, PYTHONPATH=REPO)
    results: Dict[str, Dict[str, list]] = {d: {"cli": [], "child": []} for d in drivers}
    load = [load_average()]
    commands = {}
    for r in range(a.repeats):
        for d in drivers:
            out = os.path.join(wd, "out", d, f"cli{r}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, os.path.join(REPO, DRIVERS[d]),
                   *driver_argv(d, study, out, exp, a.config, a.override, a.threads)]
            commands[d] = " ".join(cmd)
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=a.timeout)
            wall = time.perf_counter() - t0
            n_studies = _studies_rows(out)
            results[d]["cli"].append({"wall": wall, "exit_code": res.returncode, "studies": n_studies})
            if res.returncode != 0 or n_studies < 1:
                print(f"  {d}: exit {res.returncode}, {n_studies} studies: {res.stderr[-1500:]}", flush=True)
            out = os.path.join(wd, "out", d, f"child{r}")
            shutil.rmtree(out, ignore_errors=True)
            argv_d = driver_argv(d, study, out, exp, a.config, a.override, a.threads)
            t0 = time.perf_counter()
            ch = run_child(SCRIPT, ["run", d, json.dumps(argv_d), a.threads, a.warm, out + "-warm"],
                           timeout=a.timeout, env={"PYTHONPATH": REPO})
            ch_wall = time.perf_counter() - t0
            if "error" in ch:
                print(f"  {d} (instrumented): {ch['error']}", flush=True)
                continue
            ch["cold"]["start"] = max(0.0, ch_wall - ch["child_s"])
            ch["cold"]["import"] = ch["import"]
            ch["studies"] = _studies_rows(out)
            results[d]["child"].append(ch)
            w = ch["warm"][-1]["total"] if ch["warm"] else float("nan")
            print(f"  repeat {r + 1}/{a.repeats} {d}: cold (CLI) {wall:.2f} s, instrumented cold "
                  f"{ch_wall:.2f} s (model {ch['cold']['model']:.2f}), warm {w:.2f} s; load {load_average()}",
                  flush=True)
        save_json(os.path.join(wd, "study_partial.json"), {"results": results, "repeats_done": r + 1})
    load.append(load_average())

    rows, missing = [], set()
    for d in drivers:
        chs = results[d]["child"]
        if not chs:
            continue
        missing.update(chs[0]["missing_hooks"])
        cold = {ph: median([c["cold"].get(ph, 0.0) for c in chs]) for ph in PHASES + WRITE_DETAIL}
        cold_total = median([sum(c["cold"].get(ph, 0.0) for ph in PHASES) for c in chs])
        rows.append({"driver": d, "run": "cold (CLI wall)", "total": median([c["wall"] for c in results[d]["cli"]])})
        rows.append(dict(cold, driver=d, run="cold (instrumented)", total=cold_total))
        warms = [w for c in chs for w in c["warm"]]
        if warms:
            wrow = {ph: median([w.get(ph, 0.0) for w in warms]) for ph in PHASES[2:] + WRITE_DETAIL}
            rows.append(dict(wrow, driver=d, run="warm (next study)", total=median([w["total"] for w in warms])))
    n_slices = len(files)
    print(f"\n{n_slices}-slice study, {exp['variant']} (random init), {a.threads} threads, medians of {a.repeats} "
          f"repeats ({a.warm} warm runs each), load {load[0]} -> {load[1]}; CPU flags: {' '.join(info['flags'])}")
    cols = ["driver", "run", "total", *PHASES]
    print(table(rows, cols, ["driver", "run", "total s", *[f"{p} s" for p in PHASES]]))
    print("where the write time goes:")
    print(table([r for r in rows if "write" in r], ["driver", "run", "write", *WRITE_DETAIL],
                ["driver", "run", "write s", *[f"{w[len('write: '):]} s" for w in WRITE_DETAIL]]))
    if missing:
        print(f"hooks not found (their time is in 'other'): {', '.join(sorted(missing))}")
    print("commands (cold, CLI):")
    for d, c in commands.items():
        print(f"  {d}: {c}")
    save_json(os.path.join(wd, "study.json"), {"machine": info, "export": exp, "rows": rows, "results": results,
                                               "commands": commands, "load": load, "slices": n_slices,
                                               "args": vars(a)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
