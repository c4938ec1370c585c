"""Train the model the paper's way (docs/training.md) on the preprocessed cache.

    python tools/train.py -c configs/swin_b_seq.yaml [-o Global.iters=1000 ...]
    python tools/train.py -c CONFIG -o Global.checkpoints=output/x/latest        # resume exactly
    python tools/train.py -c CONFIG -o Global.pretrained_model=output/x/best_model  # start from weights only
    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c CONFIG  # data-parallel

Writes <Global.output_dir>/{config.yaml, train.log, latest.*, best_model.*, history.json, curves.png}.
Exit status: 0 done, 2 bad command line / config / data / checkpoint, or an output folder that already holds a
run (resume it with Global.checkpoints, or -o Global.start_over=true), 5 the disk filled up or is read-only (the
last complete checkpoint is kept), 6 another run holds the output folder.
See docs/training.md.

A config that is not a CPU demo config (configs/demo/ and configs that inherit from it) trained with
``Arch.pretrained`` null and neither Global.pretrained_model nor Global.checkpoints set starts Swin-B from random
weights: a WARNING is printed at start and written at the head of train.log (docs/reproduce.md: from scratch the
model stayed at the class prior; the paper's schedule is ~16 GPU hours).
"""
from __future__ import annotations

import errno
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def from_scratch_warning(cfg) -> str:
    """The warning for a non-demo config about to train from random weights, or "" (see the module docstring)."""
    from ppihd.utils.config import is_demo_config

    g = cfg["Global"]
    if cfg["Arch"]["pretrained"] or g["pretrained_model"] or g["checkpoints"]:
        return ""
    if is_demo_config(cfg.get("_source_")):
        return ""
    return (f"Arch.pretrained is null: {cfg.get('_source_') or 'this config'} trains the backbone FROM SCRATCH "
            "(random weights). The paper starts from ImageNet weights; from scratch the model stayed at the class "
            "prior in our runs, which wastes the whole schedule (~16 GPU hours for configs/swin_b_seq.yaml). Pass "
            "-o Arch.pretrained=weights/SwinTransformer_base_patch4_window7_224_pretrained.pdparams (docs/model.md), "
            "or ignore this warning if training from scratch is what you want.")


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_train, argv, description=__doc__.split("\n\n")[0], runtime=True)


def _train(args, cfg, log) -> int:
    from ppihd.utils.config import ConfigError, save_config
    from ppihd.utils.env import get_logger

    g = cfg["Global"]
    scratch = from_scratch_warning(cfg)
    if scratch:
        log.warning("%s", scratch)

    import paddle

    from ppihd.arch import build_model
    from ppihd.data.augment import build_train_augment
    from ppihd.data.dataset import SeriesDataset
    from ppihd.engine.trainer import Trainer, claim_output_dir
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer
    from ppihd.utils.runlock import LockError

    lock = None
    try:
        world = paddle.distributed.get_world_size()
        if world > 1:
            paddle.distributed.init_parallel_env()
        rank = paddle.distributed.get_rank()
        lock = claim_output_dir(cfg) if rank == 0 else None   # one run per output folder, no silent overwrite
        train_set = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
        if cfg["Data"]["pseudo_label_csv"]:  # FixMatch: labelled + strong-augmented pseudo-labelled series
            from ppihd.data.pseudo import MixedDataset, PseudoLabelDataset
            train_set = MixedDataset(train_set, PseudoLabelDataset(cfg))
        val_set = SeriesDataset(cfg, "val")
        model = build_model(cfg["Arch"])
        if world > 1:
            model = paddle.DataParallel(model)
        sched = build_lr_scheduler(cfg["Optimizer"], g["iters"])
        opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, g["grad_clip"])
        loss_fn = build_loss(cfg["Loss"], deep_supervision=bool(cfg["Arch"]["deep_supervision"]))
        train_log = get_logger("ppihd.train", os.path.join(g["output_dir"], "train.log") if rank == 0 else None)
        if scratch and rank == 0:  # the log header: the first line of this run in train.log (stderr has it already)
            import logging
            rec = train_log.makeRecord(train_log.name, logging.WARNING, __file__, 0, "%s", (scratch,), None)
            for h in train_log.handlers:
                if isinstance(h, logging.FileHandler):
                    h.handle(rec)
        trainer = Trainer(cfg, model, loss_fn, opt, sched, train_set, val_set, rank=rank, world_size=world,
                          logger=train_log)
        if g["checkpoints"]:
            trainer.resume(g["checkpoints"])
        elif g["pretrained_model"]:
            trainer.load_pretrained(g["pretrained_model"])
    except LockError:
        raise   # exit 6 (run_tool); a LockError is a RuntimeError, which the next clause maps to 2
    except (ConfigError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        log.error("%s", e)
        if lock is not None:
            lock.release()
        return 2
    try:
        if rank == 0:
            save_config(cfg, os.path.join(g["output_dir"], "config.yaml"))
        trainer.train()
    except OSError as e:   # a full or read-only disk: one line, the last complete checkpoint kept
        if e.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG):
            raise
        free = shutil.disk_usage(g["output_dir"]).free / 2 ** 20
        log.error("cannot write %s: %s (%.1f MB free); the last complete checkpoint in %s is kept (resume with "
                  "-o Global.checkpoints=%s once there is room)", e.filename or g["output_dir"], e.strerror, free,
                  g["output_dir"], os.path.join(g["output_dir"], "latest"))
        return 5
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
