#!/usr/bin/env python
"""Training data loader throughput from the cache, against what training consumes.

    python benchmarks/loader.py                 # synthetic data set (made once in the workdir), 224² and 96²
    python benchmarks/loader.py --root data/demo --sizes 96
    python benchmarks/loader.py --quick         # 4 small series, 96² only (smoke run)

Measures, per image size, loader kind, uint8 hand-over and worker count, the slices per second that the
*training* data path delivers as the model's float32 tensor (``SeriesDataset(cfg, "train",
transform=build_train_augment(cfg))``: cache read, RandomResizedCrop bicubic, flips; collate; then
``images_to_tensor``), timed from the first batch to the last of ``--epochs`` passes. Kinds: ``threads`` =
``SeriesBatches`` with prefetch threads, what ``tools/train.py`` runs; ``processes`` = ``build_dataloader``
(``paddle.io.DataLoader`` worker processes). ``uint8`` = ``DataLoader.Train.uint8`` (the default: series stay
uint8 until the model's process) against the float32 items of before. Also the raw cache read rate
(``np.load`` + float conversion, no augmentation) and the CPU demo's own training rate (the demo model of
``configs/demo/swin_micro_seq.yaml``: forward + backward + SGD step per series, slices per second).

GPU need: a modern GPU runs a 60-slice Swin-B step in about 0.1 s, i.e. ~600 slices/s at 224². The table
states how many loader workers (processes, one core each) reach that at the measured per-worker rate.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import load_average, machine_info, machine_lines, save_json, set_threads, table  # noqa: E402

GPU_SLICES_PER_S = 600.0  # Swin-B, 60-slice step in ~0.1 s


def make_data(root: str, series: int, size: int) -> None:
    from ppihd.synthetic import generate_dataset

    generate_dataset(root, series, 0, seed=0, size=size, slices_min=24, slices_max=40, workers=os.cpu_count() or 1,
                     progress=False, overwrite=True)


def build(cfg_path: str, root: str, image_size: int, workdir: str, overrides=()):
    from ppihd.data.cache import build_cache
    from ppihd.utils.config import load_config

    cfg = load_config(cfg_path, [f"Data.root={root}", f"Data.image_size={image_size}",
                                 f"Data.cache_dir={os.path.join(workdir, f'cache_{image_size}')}", *overrides])
    build_cache(cfg, num_workers=os.cpu_count() or 1, progress=False)
    return cfg


def loader_rate(cfg, kind: str, workers: int, epochs: int, uint8: bool) -> dict:
    """Slices per second delivered as the float32 [0, 1] tensor the model takes (``images_to_tensor`` included),
    timed from the first batch to the last of ``epochs`` passes over the training series.

    ``kind``: ``threads`` = ``ppihd.engine.trainer.SeriesBatches``, what ``tools/train.py`` uses (``workers``
    prefetch threads; 0 = in line); ``processes`` = ``build_dataloader`` (``paddle.io.DataLoader`` with
    ``workers`` worker processes). ``uint8``: ``DataLoader.Train.uint8`` (series stay uint8 until the model's
    process) or the float32 items of before."""
    import copy

    from ppihd.data.augment import build_train_augment
    from ppihd.data.dataset import SeriesDataset, build_dataloader, images_to_tensor, set_uint8_images
    from ppihd.engine.trainer import SeriesBatches

    cfg = copy.deepcopy(cfg)
    tl = cfg["DataLoader"]["Train"]
    tl["num_workers"], tl["uint8"] = workers, uint8
    ds = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
    if kind == "threads":
        if uint8:
            set_uint8_images(ds)  # as the Trainer does
        sb = SeriesBatches(ds, int(tl["batch_series"]), 42, 0, 1, True, workers)
        stream = sb.iterate(0)
        batches = (next(stream) for _ in range(epochs * len(sb)))
    else:
        loader = build_dataloader(cfg, ds, train=True)

        def passes():
            for ep in range(epochs):
                loader.batch_sampler.set_epoch(ep)
                yield from loader
        batches = passes()
    n_slices, t0, first = 0, None, 0
    for batch in batches:
        imgs = images_to_tensor(batch["images"])
        s = int(imgs.shape[0] * imgs.shape[1])
        if t0 is None:  # start the clock at the first batch: worker start-up is not throughput
            t0, first = time.perf_counter(), s
            continue
        n_slices += s
    dt = time.perf_counter() - t0
    if kind == "threads":
        stream.close()
    return {"kind": kind, "workers": workers, "uint8": uint8, "slices": n_slices, "seconds": dt,
            "slices_per_s": n_slices / dt if dt else None, "series": len(ds), "first_batch_slices": first}


def raw_rate(cfg) -> dict:
    import numpy as np

    from ppihd.data.cache import resolve_cache_dir

    d = os.path.join(resolve_cache_dir(cfg), "series")
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".npy"))
    t0, n = time.perf_counter(), 0
    for f in files:
        a = np.load(f, mmap_mode="r")
        x = np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        n += x.shape[0]
    dt = time.perf_counter() - t0
    return {"slices": n, "seconds": dt, "slices_per_s": n / dt}


def demo_train_rate(cfg_path: str, root: str, workdir: str, steps: int) -> dict:
    """Slices per second of the CPU demo's training step (its model, its image size, its loss/optimizer)."""
    import numpy as np
    import paddle

    from ppihd.arch import build_model
    from ppihd.data.augment import build_train_augment
    from ppihd.data.dataset import SeriesDataset
    from ppihd.loss import build_loss

    from ppihd.utils.config import load_config

    size = int(load_config(cfg_path)["Data"]["image_size"])
    cfg = build(cfg_path, root, size, workdir)  # no-op when that cache is built already
    ds = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    model.train()
    oc = cfg["Optimizer"]
    opt = paddle.optimizer.Momentum(learning_rate=1e-3, momentum=oc["momentum"], parameters=model.parameters(),
                                    weight_decay=oc["weight_decay"])
    loss_fn = build_loss(cfg["Loss"], cfg["Arch"]["deep_supervision"])
    items = [ds.get(i % len(ds), np.random.default_rng(i)) for i in range(steps + 1)]
    t0, n = None, 0
    for i, it in enumerate(items):
        x = paddle.to_tensor(it["images"][None])
        y = paddle.to_tensor(it["labels"][None])
        m = paddle.ones([1, x.shape[1]], dtype="bool")
        if i == 1:
            t0 = time.perf_counter()
        loss = loss_fn(model(x, m), y, m)["loss"]
        loss.backward()
        opt.step()
        opt.clear_grad()
        float(loss)
        if i >= 1:
            n += x.shape[1]
    dt = time.perf_counter() - t0
    return {"image_size": size, "variant": cfg["Arch"]["backbone"]["variant"], "slices": n, "seconds": dt,
            "slices_per_s": n / dt, "s_per_step": dt / steps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="configs/demo/swin_micro_seq.yaml",
                   help="config of the demo (training recipe, augmentation, demo model)")
    p.add_argument("--root", default=None, help="RSNA-layout data folder (default: make a synthetic one in workdir)")
    p.add_argument("--series", type=int, default=12, help="synthetic series to make (default 12)")
    p.add_argument("--sizes", default="224,96", help="cache image sizes to measure (default 224,96)")
    p.add_argument("--workers", default="0,1,2", help="loader worker counts (default 0,1,2)")
    p.add_argument("--kinds", default="threads,processes",
                   help="threads (SeriesBatches: tools/train.py) and/or processes (build_dataloader)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training series per measurement")
    p.add_argument("--train-steps", type=int, default=4, help="timed demo training steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="output/bench/loader")
    p.add_argument("--quick", action="store_true", help="4 small series, 96² only, workers 0,1")
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    if a.quick:
        a.series, a.sizes, a.workers, a.epochs, a.train_steps = 4, "96", "0,1", 1, 2
    wd = os.path.abspath(a.workdir)
    os.makedirs(wd, exist_ok=True)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    root = a.root
    if root is None:
        root = os.path.join(wd, "data")
        if not os.path.isfile(os.path.join(root, "stage_2_train.csv")):
            t0 = time.time()
            make_data(root, a.series, 256 if a.quick else 512)
            print(f"synthetic data: {a.series} series in {time.time() - t0:.0f} s -> {root}", flush=True)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    workers = [int(w) for w in a.workers.split(",") if w != ""]
    kinds = [k for k in a.kinds.split(",") if k]
    rows, raw = [], {}
    for size in sizes:
        cfg = build(a.config, root, size, wd)
        raw[size] = raw_rate(cfg)
        for kind in kinds:
            for uint8 in (True, False):
                for w in workers:
                    r = loader_rate(cfg, kind, w, a.epochs, uint8)
                    r.update(image_size=size, load_avg_1m=load_average())
                    rows.append(r)
                    print(f"  {size}² {kind} uint8={uint8} workers={w}: {r['slices_per_s']:.0f} slices/s "
                          f"(load {r['load_avg_1m']})", flush=True)
    demo = demo_train_rate(a.config, root, wd, a.train_steps)
    demo["load_avg_1m"] = load_average()
    for r in rows:
        if r["image_size"] == demo["image_size"]:
            r["x_demo_training"] = r["slices_per_s"] / demo["slices_per_s"]
        per_worker = r["slices_per_s"] / max(1, r["workers"])
        r["workers_for_gpu"] = math.ceil(GPU_SLICES_PER_S / per_worker) if r["image_size"] == 224 and r["workers"] else None
    print(f"\nthreads {threads}; demo training ({demo['variant']}, {demo['image_size']}²): "
          f"{demo['slices_per_s']:.1f} slices/s ({demo['s_per_step']:.2f} s/step); GPU Swin-B need ~{GPU_SLICES_PER_S:.0f} "
          f"slices/s at 224²")
    print(table(rows, ["image_size", "kind", "uint8", "workers", "slices_per_s", "x_demo_training", "workers_for_gpu",
                       "load_avg_1m"],
                ["size", "kind", "uint8", "workers", "slices/s", "x demo training", "workers for 600/s", "load"]))
    for size, r in raw.items():
        print(f"  raw cache read {size}² (np.load + float, no augmentation, 1 process): {r['slices_per_s']:.0f} slices/s")
    out = save_json(os.path.join(wd, "loader.json"), {"machine": info, "rows": rows, "raw": raw, "demo_training": demo,
                                                      "gpu_need_slices_per_s": GPU_SLICES_PER_S, "args": vars(a)})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
