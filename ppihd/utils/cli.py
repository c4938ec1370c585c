"""The start every tool shares: one argparse parser with ``-c CONFIG`` / ``-o KEY=VALUE``, the config loaded through
the schema (every key filled), threads set before paddle is imported, optionally the device and seed, and the
common errors mapped to the documented exit codes.

    def main(argv=None) -> int:
        return run_tool(_run, argv, description=__doc__, flags=_flags, flag_keys={"batch_series": "Infer.batch_series"})

Exit codes the start owns: 2 (bad command line -- argparse -- or config: :class:`~ppihd.utils.config.ConfigError`,
``Global.pretrained_model`` missing when the tool needs weights, a device this process cannot use) and 6 (another
process holds the output folder: :class:`~ppihd.utils.runlock.LockError`, raised anywhere in the tool). A tool's
other codes (3, 4, 5) are its own.
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Callable, Dict, Mapping, Optional

from .config import ConfigError, load_config

EXIT_USAGE = 2
EXIT_LOCKED = 6

ToolMain = Callable[[argparse.Namespace, Dict[str, Any], logging.Logger], int]


def tool_parser(description: str, config: str = "required") -> argparse.ArgumentParser:
    """An argparse parser with ``-c/--config`` (``config``: ``"required"``, or ``"optional"`` = the schema defaults
    when absent) and the repeatable ``-o/--override``."""
    if config not in ("required", "optional"):
        raise ValueError(f"config must be 'required' or 'optional', got {config!r}")
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=config == "required", default=None,
                   help="YAML config (may use _base_ inheritance)" + ("" if config == "required" else
                                                                       "; default: the schema defaults"))
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o Global.iters=100 (repeatable)")
    return p


def flag_overrides(args: argparse.Namespace, flag_keys: Mapping[str, str]) -> list:
    """``-o``-style overrides ``"Section.key=value"`` for every flag of ``flag_keys`` (argparse dest -> dotted key)
    that was given (not None); they come after the ``-o`` list, so a flag wins."""
    return [f"{key}={json.dumps(getattr(args, dest))}" for dest, key in flag_keys.items()
            if getattr(args, dest) is not None]


def run_tool(main: ToolMain, argv: Optional[list] = None, *, description: str, config: str = "required",
             flags: Optional[Callable[[argparse.ArgumentParser], None]] = None,
             flag_keys: Optional[Mapping[str, str]] = None, threads: Optional[int] = None, runtime: bool = False,
             needs_weights: bool = False) -> int:
    """Parse ``argv``, load and validate the config, set up, then return ``main(args, cfg, log)``.

    Args:
        main: the tool's body; gets the parsed arguments, the resolved config and the ``ppihd`` logger.
        description: the parser's description (the tool's docstring or its first paragraph).
        config: ``"required"`` or ``"optional"`` (no ``-c``: the schema defaults).
        flags: adds the tool's own arguments to the parser.
        flag_keys: a flag's dest -> the config key it sets (``--batch-series`` -> ``Infer.batch_series``).
        threads: CPU threads to set (default ``Global.num_threads``), before paddle is imported.
        runtime: also set the device and seeds (:func:`ppihd.utils.env.setup_runtime`, imports paddle).
        needs_weights: ``Global.pretrained_model`` must be set.
    """
    from .env import DeviceError, get_logger, setup_runtime, setup_threads
    from .runlock import LockError

    parser = tool_parser(description, config)
    if flags is not None:
        flags(parser)
    args = parser.parse_args(argv)
    log = get_logger()
    try:
        cfg = load_config(args.config, list(args.override) + flag_overrides(args, flag_keys or {}))
        setup_threads(cfg["Global"]["num_threads"] if threads is None else threads)
        if needs_weights and not cfg["Global"]["pretrained_model"]:
            raise ConfigError("Global.pretrained_model is not set: pass -o Global.pretrained_model=PATH "
                              "(e.g. output/demo/best_model)")
        if runtime:
            setup_runtime(cfg)
        return int(main(args, cfg, log))
    except (ConfigError, DeviceError) as e:
        log.error("%s", e)
        return EXIT_USAGE
    except LockError as e:
        log.error("%s", e)
        return EXIT_LOCKED
