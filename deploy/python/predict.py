"""Predict DICOM series with an exported model: no training config and no model code needed.

    python deploy/python/predict.py --model_dir output/inference --input /data/stage_2_test --output out \
        [--backend paddle|onnxruntime --threads 4 --device auto|cpu|gpu --no-mkldnn]
        [--precision fp16 --trt]     # GPU: mixed precision, TensorRT (docs/inference.md "GPU")

Reads MODEL_DIR/inference.yml (preprocessing, labels) and inference.json / inference.pdmodel +
inference.pdiparams (or inference.onnx), and writes the same files as tools/infer.py:
OUT/studies.csv, OUT/series.csv, OUT/predictions.csv, OUT/submission.csv, OUT/skipped.csv,
OUT/studies/<study_id>.json, OUT/series/<series_id>.{png,json}.
Exit status: 0 all input files predicted, 3 some skipped, 4 nothing predicted, 5 outputs could not be written
(disk full, read-only), 6 another run holds the output folder, 2 bad arguments / model.
"""
from __future__ import annotations

import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.isdir(os.path.join(_REPO, "ppihd")):
    sys.path.insert(0, _REPO)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="folder written by tools/export_model.py")
    p.add_argument("--input", "-i", nargs="+", required=True, help="DICOM files and/or folders (any nesting)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--backend", choices=("paddle", "onnxruntime"), default="paddle")
    p.add_argument("--device", default="auto", help="auto (GPU when paddle has CUDA and a GPU, else CPU) | cpu | gpu | gpu:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN on CPU (paddle back-end)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="paddle back-end (Infer.precision, default fp32): fp16 = GPU mixed precision "
                        "(or TensorRT fp16 with --trt; compute capability >= 7.0); bf16 = oneDNN bfloat16 on "
                        "AVX512-BF16/AMX CPUs (Paddle 3.x; export with -o Export.bf16=True), 3.06-3.42x the fp32 "
                        "speed for Swin-B; neither is bit-equal to fp32 (docs/inference.md)")
    p.add_argument("--trt", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: TensorRT subgraphs (Infer.trt, default off; paddlepaddle-gpu with TensorRT), built once "
                        "for 1 to --trt-max-slices slices (longer series go in chunks of at most that many) and "
                        "kept in --trt-cache-dir; a Paddle 3 export is converted on the first visible GPU "
                        "(CUDA_VISIBLE_DEVICES=N --device gpu for GPU N)")
    p.add_argument("--trt-max-slices", type=int, default=None,
                   help="largest series piece the engines take (Infer.trt_max_slices; default the chunk length); "
                        "longer series go in chunks of at most this many slices")
    p.add_argument("--trt-opt-slices", type=int, default=None,
                   help="slice count the engines are tuned for (Infer.trt_opt_slices)")
    p.add_argument("--trt-workspace-mb", type=int, default=None,
                   help="TensorRT builder workspace, MB (Infer.trt_workspace_mb)")
    p.add_argument("--trt-cache-dir", default=None, help="folder for the built engines (Infer.trt_cache_dir; "
                                                         "default MODEL_DIR/trt)")
    p.add_argument("--threshold", type=float, default=None, help="series.json threshold (default inference.yml)")
    p.add_argument("--chunk-slices", type=int, default=None,
                   help="series longer than this go in overlapping chunks (default: inference.yml Infer.chunk_slices, "
                        "128); 0 = always the whole series")
    p.add_argument("--chunk-overlap", type=int, default=None)
    p.add_argument("--predict-series", choices=("usable", "primary"), default=None,
                   help="every axial CT series of a study, or only its primary one (Infer.predict_series)")
    p.add_argument("--slab-mm", type=float, default=None,
                   help="average thin series into slabs of this thickness, mm (Infer.slab_mm, default 5); 0 = off")
    p.add_argument("--study-aggregation", choices=("primary_max", "all_max"), default=None,
                   help="study probability from the primary series or from every predicted series")
    p.add_argument("--num-workers", type=int, default=0, help="header-scan processes")
    p.add_argument("--no-plots", action="store_true", help="skip the per-series PNG")
    p.add_argument("--no-sr", action="store_true", help="skip the DICOM SR per study (Infer.dicom_sr)")
    p.add_argument("--no-html", action="store_true", help="skip report.html (Infer.report_html)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ppihd.utils.env import get_logger, setup_threads, show_progress

    threads = setup_threads(args.threads)
    from ppihd.engine.exporter import model_infer_settings, read_inference_yml
    from ppihd.engine.backends import OnnxBackend, PaddleInferenceBackend, trt_plan
    from ppihd.engine.predictor import run_inference
    from ppihd.utils.config import deep_merge
    from ppihd.utils.schema import DEFAULTS

    log = get_logger()
    if args.device == "auto":
        import paddle

        has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        args.device = "gpu" if has_gpu else "cpu"
    try:
        meta = read_inference_yml(args.model_dir)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    data_cfg = deep_merge(DEFAULTS["Data"], meta["Preprocess"])
    # precision / trt*: this machine's flags or the schema defaults, never the exporting machine's
    infer_cfg = deep_merge(DEFAULTS["Infer"], model_infer_settings(meta.get("Infer") or {}))
    for key, val in (("threshold", args.threshold), ("chunk_slices", args.chunk_slices),
                     ("chunk_overlap", args.chunk_overlap), ("predict_series", args.predict_series),
                     ("slab_mm", args.slab_mm), ("study_aggregation", args.study_aggregation),
                     ("precision", args.precision), ("trt", args.trt), ("trt_max_slices", args.trt_max_slices),
                     ("trt_opt_slices", args.trt_opt_slices), ("trt_cache_dir", args.trt_cache_dir),
                     ("trt_workspace_mb", args.trt_workspace_mb)):
        if val is not None:
            infer_cfg[key] = val
    if args.no_plots:
        infer_cfg["save_plots"] = False
    if args.no_sr:
        infer_cfg["dicom_sr"] = False
    if args.no_html:
        infer_cfg["report_html"] = False
    infer_cfg["batch_series"] = 1  # the exported graph takes one series at a time
    precision = infer_cfg["precision"]
    paddle_only = ([f"--precision {precision}"] if precision != "fp32" else []) + (["--trt"] if infer_cfg["trt"] else [])
    if args.backend != "paddle" and paddle_only:
        log.error("%s: only the paddle back-end has %s (not --backend %s)", " and ".join(paddle_only),
                  "these options" if len(paddle_only) > 1 else "this option", args.backend)
        return 2
    log.info("backend %s on %s, %d CPU threads, %s%s", args.backend, args.device, threads, precision,
             ", TensorRT" if infer_cfg["trt"] else "")
    try:
        if args.backend == "onnxruntime":
            backend = OnnxBackend(args.model_dir, device=args.device, threads=threads)
        else:
            backend = PaddleInferenceBackend(
                args.model_dir, device=args.device, threads=threads, mkldnn=not args.no_mkldnn, precision=precision,
                trt=trt_plan(infer_cfg, int(data_cfg["image_size"]), args.model_dir))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    res = run_inference(args.input, args.output, backend, data_cfg, infer_cfg, num_workers=args.num_workers,
                        progress=show_progress(not args.no_progress), logger=log, tool="deploy/python/predict.py",
                        provenance=meta.get("Provenance"))
    return int(res["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
