"""Shared helpers of the benchmarks: machine description, child processes, timing, tables.

Every measurement that reports memory runs in a fresh child process (``python benchmarks/<x>.py --child ...``)
that prints one JSON line prefixed with ``RESULT `` and its own peak resident set size (``ru_maxrss``), so one
path's memory never leaks into another's. Timings are wall-clock seconds, best (minimum) of the repeats after
one warm-up: on a shared machine the minimum is the least disturbed run. The load average is recorded with
every number (``uptime``): numbers taken at a load above the core count are noisy.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: CPU flags that decide which low-precision paths can be fast.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                     "amx_bf16", "amx_int8")

#: Swin-B backbone cost per 224² slice (SPEC §3; attention products included): 15.4 GMACs = 30.9 GFLOP.
SWIN_B_GFLOP_PER_SLICE = 30.9


def set_threads(n: Optional[int]) -> int:
    """Thread count for OpenMP / MKL / oneDNN (set before paddle is imported; paddle otherwise forces 1)."""
    from ppihd.utils.env import setup_threads

    return setup_threads(n or os.cpu_count() or 1)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2 ** 20


def current_rss_mb() -> float:
    """Current resident set size, MiB (from /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except Exception:  # pragma: no cover - non-Linux
        return peak_rss_mb()


def load_average() -> float:
    """1-minute load average (processes wanting a core)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return float("nan")


def machine_info() -> Dict[str, Any]:
    """CPU model, cores, the flags that matter, memory, library versions and the current load."""
    info: Dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "flags": [], "memory_gb": None, "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = [fl for fl in FLAGS_OF_INTEREST if fl in flags]
                break
    except OSError:  # pragma: no cover
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["memory_gb"] = round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:  # pragma: no cover
        pass
    for mod in ("paddle", "numpy", "onnxruntime", "paddle2onnx", "cv2", "pydicom"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    info["load_avg_1m"] = load_average()
    info["time_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return info


def machine_lines(info: Mapping[str, Any]) -> List[str]:
    """A short human description of :func:`machine_info`."""
    return [f"CPU: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM",
            f"flags: {' '.join(info['flags']) or '-'}",
            f"paddle {info.get('paddle')}, onnxruntime {info.get('onnxruntime')}, numpy {info.get('numpy')}, "
            f"python {info.get('python')}",
            f"load average (1 min) at start: {info['load_avg_1m']}  ({info['time_utc']} UTC)"]


def emit(result: Mapping[str, Any]) -> None:
    """Print the child's result line (parsed by :func:`run_child`)."""
    out = dict(result)
    out.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    out.setdefault("load_avg_1m", load_average())
    print("RESULT " + json.dumps(out), flush=True)


def run_child(script: str, args: Sequence[str], timeout: Optional[float] = None,
              env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Run ``python script --child args...`` in a fresh process; return its RESULT dict, or
    ``{"error": "..."}`` with the tail of its output when it failed (a failed path never stops the others)."""
    cmd = [sys.executable, script, "--child", *map(str, args)]
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("PYTHONPATH", REPO)
    t0 = time.time()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT "):])
            out.setdefault("wall_s", round(time.time() - t0, 1))
            return out
    lines = [ln for ln in (res.stdout + "\n" + res.stderr).splitlines()
             if ln.strip() and "warn" not in ln.lower() and "PIR pass" not in ln]
    err = " | ".join(lines[-4:])[-600:] or f"exit {res.returncode}"
    return {"error": err, "exit_code": res.returncode}


def time_best(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed then ``repeats`` times; best / median / all wall seconds."""
    for _ in range(warmup):
        fn()
    ts: List[float] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    s = sorted(ts)
    return {"best": s[0], "median": s[len(s) // 2], "all": ts}


def median(xs: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: Iterable[Mapping[str, Any]], cols: Sequence[str], headers: Optional[Sequence[str]] = None) -> str:
    """A markdown table of ``rows`` (dicts) restricted to ``cols``."""
    rows = list(rows)
    headers = list(headers or cols)
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def save_json(path: str, obj: Any) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from ppihd.utils.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    return path
