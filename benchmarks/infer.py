#!/usr/bin/env python
"""CPU inference speed of the full model against this machine's matmul peak (fp32 and bf16), per back-end and precision.

    python benchmarks/infer.py                     # Swin-B (configs/swin_b_seq.yaml), 32-slice 224² series
    python benchmarks/infer.py --quick             # micro model, 2 slices of 224²: a smoke run (~1 min)
    python benchmarks/infer.py --paths pi-onednn,pi-onednn-bf16 --slices 16

Steps (each in a fresh process, so its peak RSS is its own):
1. ``peak``: the fp32 and bf16 matmul limit, ``benchmarks/peak.py`` (best of paddle, numpy's BLAS, a one-matmul
   Paddle Inference + oneDNN program and PyTorch if at hand, 1024-4096², the same thread count).
2. ``export``: the model (seeded random init, or ``--weights``) -> ``tools/export_model.py``'s exporter
   (Paddle Inference graph, ``paddle2onnx --optimize_tool None``), plus an int8 ONNX file
   (onnxruntime ``quantize_dynamic``, per-channel int8 weights, after onnxruntime's basic graph optimisation
   turned the weights into initializers).
3. one child per path: load, 1 warm-up, ``--repeats`` timed runs of one ``[1, S, 3, H, W]`` series; seconds
   per slice (best), GFLOP/s with the backbone's analytic cost (Swin-B 15.43 GMACs = 30.9 GFLOP per slice),
   fraction of the peak of the path's precision (bf16 paths: the bf16 peak), speed-up vs dygraph and vs the deployed fp32 path, peak RSS, and the largest
   probability difference from the fp32 dygraph output on the same input.

Paths: ``dygraph`` (eval, no_grad), ``pi-native`` (Paddle Inference, oneDNN off), ``pi-onednn`` (the deployed
path: ``deploy/python/predict.py`` default), ``ort`` (onnxruntime fp32), ``pi-onednn-bf16`` (the deployed bf16
path, ``predict.py --precision bf16``: fp32 stem program + ``enable_mkldnn_bfloat16`` body program),
``pi-onednn-bf16-plain`` (the same, body traced without ``Export.bf16_kernels``: the A/B of that switch),
``pi-onednn-bf16-whole`` (the one graph all in bf16), ``pi-onednn-int8`` (``enable_mkldnn_int8`` on the fp32
graph), ``ort-int8``
(dynamic quantisation), ``ort-bf16`` (probe: can onnxruntime's CPU provider run a bf16 MatMul?).
Results: printed table, ``<workdir>/infer.json``; see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (emit, machine_info, machine_lines, run_child, save_json, set_threads,  # noqa: E402
                                table, time_best)

SCRIPT = os.path.abspath(__file__)
ALL_PATHS = ("dygraph", "pi-native", "pi-onednn", "ort", "pi-onednn-bf16", "pi-onednn-bf16-plain",
             "pi-onednn-bf16-whole", "pi-onednn-int8", "ort-int8", "ort-bf16")
PLAIN_DIR = "model_bf16_plain"  # pi-onednn-bf16-plain: the two bf16 programs with Export.bf16_kernels=False
DEPLOYED = "pi-onednn"


# ----------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------
def child_peak(sizes: str, rounds: int, threads: int, torch_python: str, workdir: str) -> None:
    """The fp32 and bf16 limit: ``benchmarks/peak.py``'s best of the libraries at hand."""
    set_threads(threads)
    import paddle

    from benchmarks.peak import PeakRunners

    paddle.set_device("cpu")
    peaks = PeakRunners(threads, [int(x) for x in sizes.split(",")], torch_python=torch_python or None,
                        workdir=os.path.join(workdir, "peak"), log=lambda s: None)
    for _ in range(rounds):
        peaks.round()
    peaks.close()
    res = peaks.summary()
    emit(dict(res, **{f"{dt}_gflops": r["gflops"] for dt, r in res["best"].items()}, text=peaks.describe()))


def peak_of(path: str, peak) -> "float | None":
    """The GFLOP/s a path is measured against: the bf16 peak for bf16 paths, the fp32 peak for fp32 ones
    (int8 paths: none measured)."""
    if "int8" in path:
        return None
    return peak.get("bf16_gflops") if "bf16" in path else peak.get("fp32_gflops")


def _load_cfg(config: str, overrides):
    from ppihd.utils.config import load_config

    return load_config(config, overrides or [])


def child_export(config: str, overrides, workdir: str, weights: str, threads: int, onnx: bool,
                 plain_bf16: bool = False) -> None:
    set_threads(threads)
    import paddle

    from ppihd.arch import build_model
    from ppihd.arch.summary import backbone_macs, count_params
    from ppihd.engine.exporter import export_onnx, export_paddle, export_paddle_bf16

    cfg = _load_cfg(config, overrides)
    size = int(cfg["Data"]["image_size"])
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    if weights:
        from ppihd.utils.checkpoint import load_weights
        load_weights(model, weights)
    model.eval()
    paddle.save(model.state_dict(), os.path.join(workdir, "model.pdparams"))
    macs = backbone_macs(model.backbone, size, size)["total"]
    out = {"image_size": size, "gflop_per_slice": 2.0 * macs / 1e9, "params_m": count_params(model) / 1e6,
           "variant": cfg["Arch"]["backbone"]["variant"], "errors": {}}
    t0 = time.time()
    files = export_paddle(model, os.path.join(workdir, "model"), size)
    out["export_s"] = round(time.time() - t0, 1)
    out.update(files)
    export_paddle_bf16(model, os.path.join(workdir, "model"), size)  # the two programs of --precision bf16
    if plain_bf16:
        export_paddle_bf16(model, os.path.join(workdir, PLAIN_DIR), size, bf16_kernels=False)
    if onnx:
        try:
            out["onnx_file"] = export_onnx(files["model_file"], files["params_file"],
                                           os.path.join(workdir, "model", "inference.onnx"))
        except Exception as e:  # recorded; the ONNX paths report it
            out["errors"]["onnx"] = f"{type(e).__name__}: {e}"[-500:]
        if "onnx_file" in out:
            try:
                out["onnx_int8_file"] = quantize_int8(out["onnx_file"], os.path.join(workdir, "int8"))
            except Exception as e:
                out["errors"]["ort-int8"] = f"{type(e).__name__}: {e}"[-500:]
    emit(out)


def quantize_int8(onnx_file: str, out_dir: str) -> str:
    """onnxruntime dynamic quantisation: int8 per-channel weights of MatMul/Gemm, activations quantised per
    run (uint8). paddle2onnx feeds the weights through Identity nodes, which quantize_dynamic does not follow,
    so onnxruntime's *basic* graph optimisation (constant folding, no fusions) runs first and its output is
    quantised."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(out_dir, exist_ok=True)
    basic = os.path.join(out_dir, "basic.onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = basic
    ort.InferenceSession(onnx_file, so, providers=["CPUExecutionProvider"])
    dst = os.path.join(out_dir, "inference_int8.onnx")
    quantize_dynamic(basic, dst, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    os.remove(basic)
    return dst


def paddle_inference_predictor(model_file: str, params_file: str, threads: int, mkldnn: bool = True,
                               bf16: bool = False, int8: bool = False):
    """A Paddle Inference CPU predictor configured as ``PaddleInferenceBackend`` does, on one given program,
    with the precision switches the deployed back-end does not offer (the whole graph in bf16; int8)."""
    from paddle import inference as pinf

    from ppihd.engine.backends import PaddleInferenceBackend

    cfg = PaddleInferenceBackend.make_config(pinf, (model_file, params_file), "cpu", threads, mkldnn, bf16)
    if int8 and mkldnn:
        cfg.enable_mkldnn_int8()
    return pinf.create_predictor(cfg)


def _pi_runner(pred):
    """images ``[S, 3, H, W]`` -> probabilities ``[S, 6]`` through one predictor."""
    import numpy as np

    from ppihd.engine.backends import PaddleInferenceBackend

    return lambda images: PaddleInferenceBackend.run(pred, np.ascontiguousarray(images[None]))[0]


def probe_ort_bf16() -> str:
    """Try a one-node bf16 MatMul on onnxruntime's CPU provider; return what happened."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "bf16",
                          [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, [4, 4]),
                           helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [4, 4])],
                          [helper.make_tensor_value_info("c", TensorProto.BFLOAT16, [4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    try:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        import ml_dtypes  # noqa: F401  (numpy bf16 dtype)
        a = np.ones((4, 4), dtype="bfloat16")
        s.run(None, {"a": a, "b": a})
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"


def child_run(path: str, meta_file: str, workdir: str, slices: int, repeats: int, threads: int) -> None:
    threads = set_threads(threads)
    import numpy as np

    with open(meta_file) as f:
        meta = json.load(f)
    size = int(meta["image_size"])
    rng = np.random.default_rng(0)
    images = rng.random((slices, 3, size, size), dtype=np.float32)
    info = {"path": path, "threads": threads, "slices": slices}
    t_load = time.time()
    if path == "ort-bf16":
        emit({**info, "error": "not run: " + probe_ort_bf16()})
        return
    if path.startswith("pi-"):  # as PaddleInferenceBackend does: freed activations stay mapped between runs
        from ppihd.engine.runtime import keep_freed_memory

        info["keep_freed_memory"] = keep_freed_memory()
    if path == "dygraph":
        import paddle

        from ppihd.arch import build_model
        from ppihd.engine.backends import DygraphBackend

        cfg = _load_cfg(meta["config"], meta.get("overrides"))
        model = build_model(cfg["Arch"])
        model.set_state_dict(paddle.load(os.path.join(workdir, "model.pdparams")))
        predict = DygraphBackend(model).predict_series
    elif path == DEPLOYED:  # the class deploy/python/predict.py uses
        from ppihd.engine.backends import PaddleInferenceBackend

        predict = PaddleInferenceBackend(os.path.dirname(meta["model_file"]), "cpu", threads,
                                         mkldnn=True).predict_series
    elif path == "pi-native":  # oneDNN is on by default in Paddle 3 configs: switch it off explicitly
        predict = _pi_runner(paddle_inference_predictor(meta["model_file"], meta["params_file"], threads,
                                                        mkldnn=False))
    elif path in ("pi-onednn-bf16", "pi-onednn-bf16-plain"):  # the deployed bf16 path: fp32 stem + bf16 body
        from ppihd.engine.backends import PaddleInferenceBackend

        d = os.path.dirname(meta["model_file"]) if path == "pi-onednn-bf16" else os.path.join(workdir, PLAIN_DIR)
        predict = PaddleInferenceBackend(d, "cpu", threads, precision="bf16").predict_series
    elif path.startswith("pi-onednn-"):  # -bf16-whole: the one graph all in bf16; -int8: enable_mkldnn_int8
        bf16, int8 = path.endswith("bf16-whole"), path.endswith("int8")
        predict = _pi_runner(paddle_inference_predictor(meta["model_file"], meta["params_file"], threads,
                                                        bf16=bf16, int8=int8))
    elif path in ("ort", "ort-int8"):
        from ppihd.engine.backends import OnnxBackend

        key = "onnx_file" if path == "ort" else "onnx_int8_file"
        if not meta.get(key):
            emit({**info, "error": meta.get("errors", {}).get(path if path != "ort" else "onnx", f"no {key}")})
            return
        predict = OnnxBackend(meta[key], "cpu", threads).predict_series
    else:
        raise SystemExit(f"unknown path {path}; expected one of {ALL_PATHS}")
    info["load_s"] = round(time.time() - t_load, 1)
    out = {}

    def run():
        out["p"] = predict(images)

    t = time_best(run, repeats=repeats, warmup=1)
    np.save(os.path.join(workdir, f"probs_{path}.npy"), np.asarray(out["p"], np.float32))
    emit({**info, "s_per_slice": t["best"] / slices, "median_s_per_slice": t["median"] / slices,
          "runs_s": [round(v, 3) for v in t["all"]]})


# ----------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("-o", "--override", action="append", default=[], help="config override, e.g. Data.image_size=96")
    p.add_argument("--weights", default="", help="checkpoint (.pdparams) to load; default: seeded random init")
    p.add_argument("--slices", type=int, default=32, help="slices of the benchmark series (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path after one warm-up (best is kept)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--paths", default=",".join(ALL_PATHS), help=f"comma list from {','.join(ALL_PATHS)}")
    p.add_argument("--peak-sizes", default="1024,2048,4096", help="matmul sides of the peak (benchmarks/peak.py)")
    p.add_argument("--torch-python", default="", help="an interpreter with torch for the peak (optional)")
    p.add_argument("--workdir", default="output/bench/infer")
    p.add_argument("--quick", action="store_true", help="micro model, 2 slices, 1 repeat (smoke run)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    a = p.parse_args(argv)

    if a.child is not None:
        kind, rest = a.child[0], a.child[1:]
        if kind == "peak":
            child_peak(rest[0], int(rest[1]), int(rest[2]), rest[3], rest[4])
        elif kind == "export":
            cfgp, wd, w, th, onnx, ov = rest[0], rest[1], rest[2], int(rest[3]), rest[4] == "1", json.loads(rest[5])
            child_export(cfgp, ov, wd, w, th, onnx, rest[6] == "1")
        elif kind == "run":
            child_run(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5]))
        return 0

    threads = a.threads or os.cpu_count() or 1
    if a.quick:
        a.override = ["Arch.backbone.variant=micro"] + a.override
        a.slices, a.repeats, a.peak_sizes, a.timeout = min(a.slices, 2), 1, "256,512", min(a.timeout, 300)
    paths = [x.strip() for x in a.paths.split(",") if x.strip()]
    bad = [x for x in paths if x not in ALL_PATHS]
    if bad:
        p.error(f"unknown --paths {bad}; expected from {ALL_PATHS}")
    wd = os.path.abspath(a.workdir)
    os.makedirs(wd, exist_ok=True)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)

    peak = run_child(SCRIPT, ["peak", a.peak_sizes, 5, threads, a.torch_python, wd], timeout=a.timeout)
    if "error" in peak:
        print(f"peak: {peak['error']}", file=sys.stderr)
        return 1
    print(f"{peak['text']} (5 rounds, load {peak['load_avg_1m']})", flush=True)

    need_onnx = any(x.startswith("ort") and x != "ort-bf16" for x in paths)
    exp = run_child(SCRIPT, ["export", a.config, wd, a.weights, threads, int(need_onnx), json.dumps(a.override),
                             int("pi-onednn-bf16-plain" in paths)], timeout=a.timeout)
    if "error" in exp:
        print(f"export failed: {exp['error']}", file=sys.stderr)
        return 1
    meta = dict(exp, config=a.config, overrides=a.override)
    meta_file = save_json(os.path.join(wd, "meta.json"), meta)
    gflop = float(exp["gflop_per_slice"])
    print(f"model: {exp['variant']}, {exp['params_m']:.1f} M parameters, {exp['image_size']}², "
          f"{gflop:.2f} GFLOP per slice (backbone); series of {a.slices} slices", flush=True)

    import numpy as np

    rows = []
    for path in paths:
        r = run_child(SCRIPT, ["run", path, meta_file, wd, a.slices, a.repeats, threads], timeout=a.timeout)
        r["path"] = path
        if "s_per_slice" in r:
            r["gflops"] = gflop / r["s_per_slice"]
            ref_peak = peak_of(path, peak)
            r["pct_peak"] = 100.0 * r["gflops"] / ref_peak if ref_peak else None
        rows.append(r)
        msg = r.get("error") or f"{r['s_per_slice']:.4f} s/slice, {r['peak_rss_mb']:.0f} MB"
        print(f"  {path}: {msg} (load {r.get('load_avg_1m', '-')})", flush=True)
    by = {r["path"]: r for r in rows}
    ref_name = "dygraph" if "s_per_slice" in by.get("dygraph", {}) else DEPLOYED
    ref_file = os.path.join(wd, f"probs_{ref_name}.npy")
    ref = np.load(ref_file) if os.path.isfile(ref_file) else None
    for r in rows:
        if "s_per_slice" not in r:
            continue
        if "s_per_slice" in by.get("dygraph", {}):
            r["x_dygraph"] = by["dygraph"]["s_per_slice"] / r["s_per_slice"]
        if "s_per_slice" in by.get(DEPLOYED, {}):
            r["x_deployed"] = by[DEPLOYED]["s_per_slice"] / r["s_per_slice"]
        f = os.path.join(wd, f"probs_{r['path']}.npy")
        if ref is not None and os.path.isfile(f):
            r["max_dp"] = float(np.abs(np.load(f) - ref).max())
    cols = ["path", "s_per_slice", "gflops", "pct_peak", "x_dygraph", "x_deployed", "peak_rss_mb", "max_dp",
            "load_avg_1m"]
    heads = ["path", "s/slice", "GFLOP/s", "% peak (own precision)", "x dygraph", "x deployed", "peak RSS MB",
             f"max |dp| vs {ref_name}", "load"]
    print(f"\nthreads {threads}; fp32 peak {peak.get('fp32_gflops', 0):.0f} GFLOP/s, bf16 peak "
          f"{peak.get('bf16_gflops') or 0:.0f} GFLOP/s; {a.slices} slices of {exp['image_size']}²; "
          f"{gflop:.2f} GFLOP/slice; deployed = {DEPLOYED}")
    print(table(rows, cols, heads))
    for r in rows:
        if "error" in r:
            print(f"  {r['path']}: {r['error']}")
    save_json(os.path.join(wd, "infer.json"), {"machine": info, "threads": threads, "peak": peak, "model": meta,
                                               "rows": rows, "args": vars(a)})
    print(f"results: {os.path.join(wd, 'infer.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
