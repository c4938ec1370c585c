"""DICOM → per-series uint8 cache + slice index, once, before training.

    python tools/preprocess.py -c configs/swin_b_seq.yaml -o Data.root=data/rsna -o Data.num_workers=8

Reads ``Data.root/Data.train_dir`` (+ ``Data.label_csv``) and ``Data.root/Data.test_dir``; writes the cache
described in ``ppihd/data/cache.py`` (default ``<Data.root>/cache_<image_size>``). Re-running resumes.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppihd.utils.cli import run_tool  # noqa: E402
from ppihd.utils.env import show_progress  # noqa: E402


def _flags(parser) -> None:
    parser.add_argument("--rebuild", action="store_true",
                        help="delete and redo a cache built with other preprocessing settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv=None) -> int:
    # one thread per worker process; parallelism comes from Data.num_workers
    return run_tool(_preprocess, argv, description=__doc__, flags=_flags, threads=1)


def _preprocess(args, cfg, logger) -> int:
    from ppihd.data.cache import CacheError, build_cache
    from ppihd.data.labels import LabelError

    try:
        summary = build_cache(cfg, progress=show_progress(not args.no_progress and cfg["Global"]["progress_bar"]),
                              rebuild=args.rebuild)
    except (CacheError, LabelError) as e:
        logger.error(str(e))
        return 2
    warn = summary.pop("series_warnings")
    for sid, notes in list(warn.items())[:10]:
        logger.warning("series %s: %s", sid, "; ".join(notes))
    logger.info("preprocess done in %.1f s: %s", summary["seconds"],
                json.dumps({k: summary[k] for k in ("series", "slices", "errors", "series_reused")}))
    logger.info("index: %s | errors: %s (%d rows) | cache: %.1f MB at %d B/slice", summary["index_file"],
                summary["errors_file"], summary["errors"], summary["cache_bytes"] / 1e6, summary["bytes_per_slice"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
