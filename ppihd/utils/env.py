"""Runtime set-up shared by every tool: threads, device, seeds, logging.

``import paddle`` sets OMP_NUM_THREADS=1 when it is unset, so CPU work runs on one core unless the
thread count is set explicitly. Call :func:`setup_threads` BEFORE importing paddle where possible
(tools do it first thing) and :func:`setup_runtime` after building the config.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from typing import Any, Mapping, Optional, Tuple

import numpy as np

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Paddle's import-time noise, said once here instead: it warns that ccache is missing (it would only speed up
# compiling custom C++ operators, which ppihd never builds), and prints a banner when OMP_NUM_THREADS > 1 that
# multi-threading "will not be optimized if you use data parallel" (ppihd sets the threads on purpose: one
# process per GPU sets 1 itself through paddle.distributed.launch).
warnings.filterwarnings("ignore", message="No ccache found")
_BANNER = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")


class _QuietStderr:
    """``sys.stderr`` minus Paddle's OMP_NUM_THREADS banner (each line and the newline ``print`` adds)."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        if text.startswith(_BANNER) or (self._dropped and text == "\n"):
            self._dropped = text != "\n"
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_paddle_banner() -> None:
    """Filter Paddle's import banner from ``sys.stderr`` (once; call before paddle is imported)."""
    if not isinstance(sys.stderr, _QuietStderr):
        sys.stderr = _QuietStderr(sys.stderr)


def show_progress(flag: Any = True) -> bool:
    """Progress bars only where someone watches: ``flag`` (Global.progress_bar / --no-progress) and a terminal
    on stderr; a log file or a pipe gets the log lines alone."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return bool(flag) and tty


def setup_threads(num_threads: Optional[int] = None) -> int:
    """Set the CPU thread count for OpenMP/MKL/oneDNN and for paddle if it is imported. Returns it."""
    n = int(num_threads) if num_threads else (os.cpu_count() or 1)
    quiet_paddle_banner()
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    if "paddle" in sys.modules:
        try:
            sys.modules["paddle"].base.core.set_num_threads(n)
        except AttributeError:  # Paddle 2.6: paddle.fluid.core
            try:
                import paddle.fluid.core as core  # type: ignore
                core.set_num_threads(n)
            except Exception:  # pragma: no cover - best effort
                pass
    try:
        import cv2
        cv2.setNumThreads(n)
    except Exception:  # pragma: no cover
        pass
    return n


class DeviceError(RuntimeError):
    """``Global.device`` names a device this process cannot use (tools exit 2 with the message)."""


def visible_gpus() -> int:
    """GPUs this process sees: 0 on a CPU-only paddle build, else ``paddle.device.cuda.device_count()`` (which
    honours ``CUDA_VISIBLE_DEVICES``; it returns 0, it does not fail, when the driver finds no GPU)."""
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return 0
    try:
        return int(paddle.device.cuda.device_count())
    except Exception:  # pragma: no cover - a broken driver: treat as no GPU, the caller's message says so
        return 0


def resolve_device(device: Any) -> str:
    """``Global.device`` -> the paddle device string, checked BEFORE ``paddle.set_device`` (which, on a CUDA
    build without a usable GPU, ends the process inside Paddle's C++ with status 255 instead of raising).

    ``cpu``; ``gpu`` (the launcher's ``FLAGS_selected_gpus`` or 0); ``gpu:N``; ``auto`` = ``gpu`` when paddle
    has CUDA and sees a GPU, else ``cpu``. Raises :class:`DeviceError` naming what is visible."""
    import paddle

    dev = str(device if device is not None else "cpu").strip().lower()
    if dev == "auto":
        dev = "gpu" if visible_gpus() > 0 else "cpu"
    if dev == "cpu":
        return "cpu"
    head, _, idx = dev.partition(":")
    if head != "gpu" or (idx and not idx.isdigit()):
        raise DeviceError(f"Global.device={device!r}: expected cpu | gpu | gpu:N | auto")
    if not paddle.device.is_compiled_with_cuda():
        raise DeviceError(f"Global.device={device} but this paddle build ({paddle.__version__}) is CPU-only (no "
                          "CUDA): install paddlepaddle-gpu, or set -o Global.device=cpu (or auto)")
    n = visible_gpus()
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else "CUDA_VISIBLE_DEVICES unset"
    if n == 0:
        raise DeviceError(f"Global.device={device} but no GPU is visible ({seen}; check nvidia-smi and the "
                          "driver), or set -o Global.device=cpu (or auto)")
    k = int(idx) if idx else int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0] or 0)
    if k >= n:
        raise DeviceError(f"Global.device={device}: GPU index {k} does not exist, {n} GPU(s) visible "
                          f"(gpu:0 .. gpu:{n - 1}; {seen})")
    return f"gpu:{k}"


def set_device(device: str) -> str:
    """``paddle.set_device`` of :func:`resolve_device` (``cpu | gpu | gpu:N | auto``); returns the device."""
    import paddle

    dev = resolve_device(device)
    paddle.set_device(dev)
    return dev


def pinned_place() -> Any:
    """``paddle.CUDAPinnedPlace()`` (page-locked host memory, from which a host -> GPU copy can be asynchronous)
    when this process computes on a GPU (a CUDA build and ``paddle.device.get_device()`` is ``gpu:N``), else None
    (CPU: nothing to pin). Paddle 2.6 and 3.x."""
    import paddle

    return paddle.CUDAPinnedPlace() if gpu_device() else None


def gpu_device() -> Optional[str]:
    """``paddle.device.get_device()`` (``gpu:N``, the rank's GPU under the launcher) when this process computes on a
    GPU of a CUDA build, else None."""
    import paddle

    dev = str(paddle.device.get_device())
    return dev if paddle.device.is_compiled_with_cuda() and dev.startswith("gpu") else None


def set_thread_device(device: str) -> None:
    """Make ``device`` (``gpu:N``) the CUDA device of the calling thread (a new thread's is GPU 0, whatever the
    process computes on): a prefetch thread that allocates page-locked memory (Paddle's pinned allocator calls
    cudaHostAlloc on the thread's current device) would otherwise open a CUDA context on GPU 0 in every rank.
    ``paddle.device.set_device`` -> ``framework._set_expected_place``, the call Paddle's own DataLoader thread makes
    for this (``paddle/io/dataloader/dataloader_iter.py``, 2.6 and 3.x: it "will call platform::SetDeviceId()")."""
    import paddle

    paddle.device.set_device(device)


def amp_support(amp: str) -> Tuple[bool, str]:
    """Whether ``Global.amp`` (``fp16`` | ``bf16``) really runs in reduced precision on the current device, with
    the reason naming the device. Paddle's own rule (``paddle/amp/auto_cast.py``, 2.6 and 3.x), under which
    ``auto_cast`` only WARNS and silently runs fp32: AMP is enabled on GPU / XPU / custom places only (not on CPU);
    on an NVIDIA GPU fp16 needs compute capability >= 7.0 and bf16 >= 8.0 with CUDA >= 11 (ROCm builds pass)."""
    import paddle

    dev = str(paddle.device.get_device())
    if not dev.startswith("gpu"):
        return False, (f"Global.amp={amp} needs a GPU: Paddle's auto_cast is a no-op on {dev} (it would run fp32 "
                       "with a warning). Use -o Global.amp=null on CPU (or Global.device=gpu)")
    if paddle.is_compiled_with_rocm():
        return True, f"{dev} (ROCm)"
    major, minor = paddle.device.cuda.get_device_capability()
    name = paddle.device.cuda.get_device_name()
    cuda = paddle.version.cuda()
    cuda_major = int(str(cuda).split(".")[0]) if cuda and str(cuda) not in ("False", "None") else 0
    fp16 = major >= 7
    bf16 = major >= 8 and cuda_major >= 11
    has = [p for p, ok in (("fp16", fp16), ("bf16", bf16)) if ok]
    what = f"{name} on {dev} (compute capability {major}.{minor}, CUDA {cuda})"
    ok = {"fp16": fp16, "bf16": bf16}[amp]
    if ok:
        return True, what
    rule = ("fp16 needs compute capability >= 7.0" if amp == "fp16" else
            "bf16 needs compute capability >= 8.0 and CUDA >= 11")
    alt = f"-o Global.amp={has[0]}" if has else "-o Global.amp=null (fp32)"
    return False, (f"Global.amp={amp} is not supported by {what}: Paddle's AMP {rule} (it would run fp32 with only "
                   f"a warning). This GPU supports {' and '.join(has) if has else 'no AMP'}: use {alt}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    if "paddle" in sys.modules:
        sys.modules["paddle"].seed(seed)


def setup_runtime(cfg: Mapping[str, Any]) -> None:
    """Threads, device and seed from ``cfg['Global']``."""
    g = cfg["Global"]
    setup_threads(g["num_threads"])
    set_device(g["device"])
    seed_everything(int(g["seed"]))


def get_logger(name: str = "ppihd", log_file: Optional[str] = None, level: int = logging.INFO) -> logging.Logger:
    """A logger printing ``[time] LEVEL message`` to stderr and optionally to a file."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    fmt = logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    if log_file and not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
                            for h in logger.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    return logger
