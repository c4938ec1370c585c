#!/usr/bin/env python
"""Accuracy of the below-fp32 inference paths with a trained model: probabilities vs the fp32 deployed path on
the real fixture and on the synthetic validation series, and the validation log-loss change.

    python benchmarks/lowprec.py -c output/demo/config.yaml --weights output/demo/best_model.pdparams
    python benchmarks/lowprec.py -c configs/demo/swin_micro_seq.yaml --weights W -o Data.root=data/demo

The model (config + trained weights; Swin-B cannot be trained on this CPU, so the CPU demo model is the
trained model available here) is exported with the package's exporter; then every path predicts
(a) the real head-CT fixture (``/work/shared/fixtures/ge_head_ct_tilt`` or ``--fixture``), preprocessed with the
model's ``Data`` settings, and (b) the ``val`` split of the cache of ``Data.root``. Reported per path: max and
mean |p - p_fp32| on each, the competition weighted log loss on (b) and its relative change against fp32.
Paths: ``pi-onednn`` (fp32 reference, the deployed path), ``ort`` (fp32), ``pi-onednn-bf16`` (the deployed
bf16 path: fp32 stem + bf16 body, ``predict.py --precision bf16``), ``pi-onednn-bf16-whole`` (the one graph all in
bf16), ``ort-int8``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import machine_info, machine_lines, save_json, set_threads, table  # noqa: E402

FIXTURE = "/work/shared/fixtures/ge_head_ct_tilt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True)
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--weights", required=True, help="trained checkpoint (.pdparams)")
    p.add_argument("--fixture", default=FIXTURE)
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="output/bench/lowprec")
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    import numpy as np
    import paddle

    from benchmarks.infer import _pi_runner, paddle_inference_predictor, quantize_int8
    from ppihd import LABELS
    from ppihd.arch import build_model
    from ppihd.data.dataset import SeriesDataset
    from ppihd.data.series import group_series, load_series, scan
    from ppihd.engine.exporter import export_onnx, export_paddle, export_paddle_bf16
    from ppihd.engine.backends import OnnxBackend, PaddleInferenceBackend
    from ppihd.utils.checkpoint import load_weights
    from ppihd.metric.log_loss import weighted_log_loss
    from ppihd.utils.config import load_config

    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    cfg = load_config(a.config, a.override)
    size = int(cfg["Data"]["image_size"])
    wd = os.path.abspath(a.workdir)
    os.makedirs(wd, exist_ok=True)
    model = build_model(cfg["Arch"])
    load_weights(model, a.weights)
    model.eval()
    files = export_paddle(model, os.path.join(wd, "model"), size)
    export_paddle_bf16(model, os.path.join(wd, "model"), size)
    onnx_file = export_onnx(files["model_file"], files["params_file"], os.path.join(wd, "model", "inference.onnx"))
    int8_file = quantize_int8(onnx_file, os.path.join(wd, "int8"))
    del model
    paddle.device.cuda.empty_cache() if paddle.device.is_compiled_with_cuda() else None

    # inputs: the fixture series and the validation series
    headers, skipped = scan(a.fixture, num_workers=1, progress=False)
    fixture = []
    for s in group_series(headers, order=cfg["Data"]["slice_order"]):
        arr, _ = load_series(s, cfg["Data"])
        fixture.append(np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
    ds = SeriesDataset(cfg, a.split)
    val = [ds.get(i, np.random.default_rng(i)) for i in range(len(ds))]
    y_val = np.concatenate([it["labels"] for it in val])
    print(f"fixture: {sum(len(f) for f in fixture)} slices in {len(fixture)} series ({len(skipped)} files skipped); "
          f"{a.split}: {len(val)} series, {len(y_val)} slices, positives per class "
          f"{dict(zip(LABELS, y_val.sum(0).astype(int).tolist()))}", flush=True)

    backends = {
        "pi-onednn": PaddleInferenceBackend(os.path.dirname(files["model_file"]), "cpu", threads, True).predict_series,
        "ort": OnnxBackend(onnx_file, "cpu", threads).predict_series,
        "pi-onednn-bf16": PaddleInferenceBackend(os.path.dirname(files["model_file"]), "cpu", threads,
                                                 precision="bf16").predict_series,
        "pi-onednn-bf16-whole": _pi_runner(paddle_inference_predictor(files["model_file"], files["params_file"],
                                                                      threads, bf16=True)),
        "ort-int8": OnnxBackend(int8_file, "cpu", threads).predict_series,
    }
    preds = {}
    for name, fn in backends.items():
        preds[name] = {"fixture": np.concatenate([fn(f) for f in fixture]),
                       "val": np.concatenate([fn(it["images"]) for it in val])}
    ref = preds["pi-onednn"]
    ll_ref = weighted_log_loss(y_val, ref["val"], cfg["Metric"]["class_weights"], cfg["Metric"]["eps"])
    rows = []
    for name, pr in preds.items():
        ll = weighted_log_loss(y_val, pr["val"], cfg["Metric"]["class_weights"], cfg["Metric"]["eps"])
        rows.append({"path": name,
                     "fixture_max_dp": float(np.abs(pr["fixture"] - ref["fixture"]).max()),
                     "fixture_mean_dp": float(np.abs(pr["fixture"] - ref["fixture"]).mean()),
                     "val_max_dp": float(np.abs(pr["val"] - ref["val"]).max()),
                     "val_mean_dp": float(np.abs(pr["val"] - ref["val"]).mean()),
                     "val_logloss": ll, "logloss_change_pct": 100.0 * (ll - ll_ref) / ll_ref})
    print(f"\nmodel {cfg['Arch']['backbone']['variant']} at {size}², weights {a.weights}; reference: pi-onednn fp32")
    print(table(rows, ["path", "fixture_max_dp", "fixture_mean_dp", "val_max_dp", "val_mean_dp", "val_logloss",
                       "logloss_change_pct"],
                ["path", "fixture max |dp|", "fixture mean |dp|", f"{a.split} max |dp|", f"{a.split} mean |dp|",
                 f"{a.split} log loss", "log-loss change %"]))
    out = save_json(os.path.join(wd, "lowprec.json"), {"machine": info, "rows": rows, "args": vars(a)})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
