#!/usr/bin/env python
"""The matmul limit of this machine: the best of the libraries at hand, fp32 and bf16, at several sizes.

    python benchmarks/peak.py                                   # 1024-4096², fp32 + bf16, all cores, 5 rounds
    python benchmarks/peak.py --torch-python /work/torchvenv/bin/python   # + PyTorch from another venv
    python benchmarks/peak.py --quick                           # 256-512², 2 rounds (smoke run)

"% of peak" in every benchmark (``infer.py``, ``infer_ab.py``) is against :class:`PeakRunners`: one matmul of
two n x n matrices per library, dtype and size, timed round-robin (``round()``: each runner once, so a slow
moment of a shared machine hits all of them alike), best round of each kept, and the peak of a dtype = the best
library at the best size. A single library is not the limit: ``paddle.matmul`` in dygraph read half of what
oneDNN reaches on the same machine (issue 18). Libraries:

- ``paddle``: ``paddle.matmul`` in dygraph (fp32; bf16 = bfloat16 tensors);
- ``numpy``: ``numpy.matmul`` on float32 = the sgemm of the BLAS numpy links (:func:`blas_info`; no bf16);
- ``paddle-inference``: a one-matmul program (input ``x`` [n, n] times a [n, n] weight, exported with
  ``paddle.jit.save``) through ``paddle.inference`` with ``Config.enable_mkldnn()`` (the deployed path's
  oneDNN ``fc``); bf16 = ``enable_mkldnn_bfloat16()`` as well;
- ``torch``: ``torch.matmul`` (fp32 / bfloat16), in this interpreter if it imports torch, else in
  ``--torch-python`` (``benchmarks/_torch_worker.py`` over a pipe, interleaved the same way); never a dependency.

The thread count is set explicitly before paddle is imported (``import paddle`` sets OMP_NUM_THREADS=1 when it
is unset) and printed with the results; :func:`theoretical_peak` gives the FMA-port arithmetic for the CPU's
flags next to the measurement. Results: printed table and ``<workdir>/peak.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import machine_info, machine_lines, save_json, set_threads, table  # noqa: E402

LIBS = ("paddle", "numpy", "paddle-inference", "torch")
DTYPES = ("fp32", "bf16")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torch_worker.py")


# ----------------------------------------------------------------------------------------------------------
# what the hardware could do, and what numpy links
# ----------------------------------------------------------------------------------------------------------
def theoretical_peak(info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """FLOP/s of the vector units at the clock /proc/cpuinfo reports, from the CPU's flags and family.

    Per core and cycle: Intel with AVX-512 (2 x 512-bit FMA ports) 64 fp32 FLOP, AMX-BF16 1024 bf16 FLOP (one
    TMUL 16x32x16 tile product per 16 cycles); AMD Zen 4 (family 25, AVX-512 on 2 x 256-bit FMA pipes) 32 fp32
    FLOP and, with ``avx512_bf16``'s ``vdpbf16ps`` (a pair of bf16 products per fp32 lane, one zmm per cycle),
    64 bf16 FLOP; Zen 5 (family 26, 512-bit pipes) twice that; AVX2 + FMA alone 32 fp32. The reported clock is
    the nominal one (a KVM guest may boost above it or share the core): an estimate, not a measurement."""
    info = info or machine_info()
    flags, text = set(info.get("flags") or []), ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:  # pragma: no cover
        pass
    fields = dict(ln.split(":", 1) for ln in text.split("\n\n")[0].splitlines() if ":" in ln)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    ghz = float(fields.get("cpu MHz", "0") or 0) / 1000.0
    amd = "AMD" in vendor
    if amd and family >= 26 and "avx512f" in flags:
        fp32, how = 64, "AMD Zen 5: 2 x 512-bit FMA"
    elif amd and "avx512f" in flags:
        fp32, how = 32, "AMD Zen 4: AVX-512 on 2 x 256-bit FMA pipes"
    elif "avx512f" in flags:
        fp32, how = 64, "Intel AVX-512: 2 x 512-bit FMA ports"
    elif "fma" in flags:
        fp32, how = 32, "AVX2: 2 x 256-bit FMA"
    else:
        fp32, how = 8, "SSE"
    if "amx_bf16" in flags:
        bf16, bhow = 1024, "AMX-BF16 tiles"
    elif "avx512_bf16" in flags:
        bf16, bhow = 2 * fp32, "AVX512-BF16 vdpbf16ps (2 bf16 products per fp32 lane)"
    else:
        bf16, bhow = None, "no native bf16 (converted to fp32)"
    cores = int(info.get("cores") or os.cpu_count() or 1)
    return {"vendor": vendor, "family": family, "ghz_reported": round(ghz, 3), "cores": cores,
            "fp32_flop_per_cycle_core": fp32, "fp32_how": how, "bf16_flop_per_cycle_core": bf16, "bf16_how": bhow,
            "fp32_gflops": round(fp32 * ghz * cores, 1),
            "bf16_gflops": round(bf16 * ghz * cores, 1) if bf16 else None}


def blas_info() -> str:
    """The BLAS numpy links (``numpy.show_config``), e.g. ``scipy-openblas 0.3.31 (... Haswell ...)``."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return " ".join(str(x) for x in (blas.get("name"), blas.get("version"), blas.get("openblas configuration", ""))
                        if x).strip()
    except Exception:  # numpy < 1.25 has no mode="dicts"
        return "unknown (numpy.show_config has no dict mode)"


def cpu_has_bf16(info: Optional[Dict[str, Any]] = None) -> bool:
    flags = set((info or machine_info()).get("flags") or [])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# ----------------------------------------------------------------------------------------------------------
# PyTorch in another interpreter
# ----------------------------------------------------------------------------------------------------------
def default_torch_python() -> Optional[str]:
    """This interpreter when it can import torch, else None (pass ``--torch-python``)."""
    return sys.executable if importlib.util.find_spec("torch") is not None else None


class TorchWorker:
    """``benchmarks/_torch_worker.py`` in ``python`` (a venv with torch): builds + warms ``tasks`` at start,
    then each :meth:`round` runs every task once and returns ``{task: seconds}``. ``info`` holds the versions
    and per-task errors; ``info["error"]`` is set (and :meth:`round` returns ``{}``) when torch is absent or
    the worker did not start within ``timeout`` seconds."""

    def __init__(self, python: str, threads: int, tasks: Sequence[str], timeout: float = 900.0,
                 extra_args: Sequence[str] = ()):
        self.proc = None
        self.info: Dict[str, Any] = {}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the package's path must not leak into the torch venv
        try:
            self.proc = subprocess.Popen([python, WORKER, "--threads", str(threads), "--tasks", json.dumps(list(tasks)),
                                          *extra_args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True, env=env, bufsize=1)
        except OSError as e:
            self.info = {"error": f"cannot run {python}: {e}"}
            return
        line = self._readline(timeout)
        if line is None or not line.startswith("READY "):
            self.close()
            self.info = {"error": f"torch worker ({python}) gave no READY line within {timeout:.0f} s"}
            return
        self.info = json.loads(line[len("READY "):])
        if "error" in self.info:
            self.close()

    def _readline(self, timeout: float) -> Optional[str]:
        import select

        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, end - time.time()))
            if not r:
                return None
            line = self.proc.stdout.readline()
            if not line:
                return None
            if line.startswith(("READY ", "ROUND ")):
                return line.strip()
        return None

    @property
    def ok(self) -> bool:
        return self.proc is not None and "error" not in self.info

    def round(self, timeout: float = 900.0) -> Dict[str, float]:
        if not self.ok:
            return {}
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        line = self._readline(timeout)
        if line is None:
            self.info["error"] = f"torch worker round timed out after {timeout:.0f} s"
            self.close()
            return {}
        return json.loads(line[len("ROUND "):])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
        self.proc = None


# ----------------------------------------------------------------------------------------------------------
# the round-robin peak
# ----------------------------------------------------------------------------------------------------------
def _paddle_runner(n: int, dtype: str) -> Callable[[], None]:
    import paddle

    a = paddle.randn([n, n], dtype="float32")
    b = paddle.randn([n, n], dtype="float32")
    if dtype == "bf16":
        a, b = a.astype("bfloat16"), b.astype("bfloat16")
    return lambda: paddle.matmul(a, b)


def _numpy_runner(n: int) -> Callable[[], None]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    return lambda: np.matmul(a, b, out=c)


def _inference_runner(n: int, dtype: str, threads: int, workdir: str) -> Callable[[], None]:
    """One ``x @ W`` program through Paddle Inference + oneDNN (bf16: ``enable_mkldnn_bfloat16``)."""
    import numpy as np
    import paddle
    from paddle import inference as pinf
    from paddle.static import InputSpec

    prefix = os.path.join(workdir, f"matmul_{n}", "inference")
    if not any(os.path.isfile(prefix + ext) for ext in (".json", ".pdmodel")):
        class MatMul(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.w = self.create_parameter([n, n], dtype="float32")

            def forward(self, x):
                return paddle.matmul(x, self.w)

        layer = MatMul()
        layer.eval()
        static = paddle.jit.to_static(layer, input_spec=[InputSpec([n, n], "float32", "x")], full_graph=True)
        paddle.jit.save(static, prefix)
    model = prefix + (".json" if os.path.isfile(prefix + ".json") else ".pdmodel")
    cfg = pinf.Config(model, prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.enable_mkldnn()
    if dtype == "bf16":
        cfg.enable_mkldnn_bfloat16()
    cfg.set_cpu_math_library_num_threads(int(threads))
    cfg.disable_glog_info()
    pred = pinf.create_predictor(cfg)
    h = pred.get_input_handle(pred.get_input_names()[0])
    h.reshape([n, n])
    h.copy_from_cpu(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    return pred.run


class PeakRunners:
    """Every (library, dtype, size) matmul, built once; :meth:`round` times each once (call it between the
    timed runs of a benchmark to measure the peak in the same rounds); :meth:`best` is the limit per dtype.

    A runner whose warm-up call takes longer than ``max_call_s`` (e.g. a bf16 matmul without a fast kernel)
    is timed by that one call and left out of the rounds (``note`` says so)."""

    def __init__(self, threads: int, sizes: Sequence[int] = (1024, 2048, 4096), dtypes: Sequence[str] = DTYPES,
                 libs: Sequence[str] = LIBS, torch_python: Optional[str] = None, workdir: str = "output/bench/peak",
                 max_call_s: float = 8.0, log: Callable[[str], None] = lambda s: print(s, flush=True)):
        self.threads, self.sizes, self.dtypes = int(threads), [int(s) for s in sizes], list(dtypes)
        self.info = machine_info()
        self.blas = blas_info()
        self.theory = theoretical_peak(self.info)
        self.errors: Dict[str, str] = {}
        self.runners: Dict[tuple, Callable[[], None]] = {}
        self.times: Dict[tuple, List[float]] = {}
        self.notes: Dict[tuple, str] = {}
        bf16_ok = cpu_has_bf16(self.info)
        if "bf16" in self.dtypes and not bf16_ok:
            self.errors["bf16"] = "this CPU has no avx512_bf16 / amx_bf16: no bf16 peak"
        wd = os.path.abspath(workdir)
        for lib in libs:
            if lib == "torch":
                continue
            for dt in self.dtypes:
                if (dt == "bf16" and not bf16_ok) or (lib == "numpy" and dt != "fp32"):
                    continue
                for n in self.sizes:
                    key = (lib, dt, n)
                    try:
                        fn = (_paddle_runner(n, dt) if lib == "paddle" else _numpy_runner(n) if lib == "numpy"
                              else _inference_runner(n, dt, self.threads, wd))
                        t0 = time.perf_counter()
                        fn()
                        dt_s = time.perf_counter() - t0
                    except Exception as e:  # a missing kernel is a result, not a failure of the benchmark
                        self.errors[f"{lib}/{dt}/{n}"] = " ".join(f"{type(e).__name__}: {e}".split())[:240]
                        continue
                    self.times[key] = []
                    if dt_s > max_call_s:
                        self.times[key].append(dt_s)
                        self.notes[key] = f"warm-up {dt_s:.1f} s > {max_call_s:.0f} s: timed once, not in the rounds"
                    else:
                        self.runners[key] = fn
        self.torch: Optional[TorchWorker] = None
        self.torch_python = torch_python or (default_torch_python() if "torch" in libs else None)
        if "torch" in libs:
            if self.torch_python:
                tasks = [f"mm:{dt}:{n}" for dt in self.dtypes if dt == "fp32" or bf16_ok for n in self.sizes]
                self.torch = TorchWorker(self.torch_python, self.threads, tasks)
                if not self.torch.ok:
                    self.errors["torch"] = self.torch.info.get("error", "torch worker failed")
                for task, err in self.torch.info.get("errors", {}).items():
                    self.errors[f"torch/{task}"] = err
            else:
                self.errors["torch"] = ("torch is not importable here and no --torch-python was given: "
                                        "PyTorch not measured")
        log(f"peak runners: {len(self.runners)} in-process + "
            f"{len(self.torch.info.get('setup_s', {})) if self.torch and self.torch.ok else 0} torch; "
            f"{self.threads} threads; numpy BLAS: {self.blas}")

    def round(self) -> None:
        """Each runner once (and the torch worker's round)."""
        for key, fn in self.runners.items():
            t0 = time.perf_counter()
            fn()
            self.times[key].append(time.perf_counter() - t0)
        if self.torch is not None and self.torch.ok:
            for task, s in self.torch.round().items():
                _, dt, n = task.split(":")
                self.times.setdefault(("torch", dt, int(n)), []).append(s)

    def rows(self) -> List[Dict[str, Any]]:
        out = []
        for (lib, dt, n), ts in sorted(self.times.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
            if not ts:
                continue
            s = sorted(ts)
            flop = 2.0 * n ** 3
            out.append({"lib": lib, "dtype": dt, "n": n, "gflops": flop / s[0] / 1e9,
                        "median_gflops": flop / s[len(s) // 2] / 1e9, "runs": len(ts),
                        "note": self.notes.get((lib, dt, n), "")})
        return out

    def best(self) -> Dict[str, Dict[str, Any]]:
        """``{dtype: best row}`` over libraries and sizes (the limit "% of peak" is against)."""
        out: Dict[str, Dict[str, Any]] = {}
        for r in self.rows():
            if r["dtype"] not in out or r["gflops"] > out[r["dtype"]]["gflops"]:
                out[r["dtype"]] = r
        return out

    def summary(self) -> Dict[str, Any]:
        return {"threads": self.threads, "sizes": self.sizes, "numpy_blas": self.blas, "theoretical": self.theory,
                "torch_python": self.torch_python,
                "torch": {k: v for k, v in (self.torch.info if self.torch else {}).items() if k != "setup_s"},
                "rows": self.rows(), "best": self.best(), "errors": self.errors}

    def describe(self) -> str:
        """One line per dtype: the peak, who reached it, and the theoretical figure."""
        lines = []
        for dt, r in self.best().items():
            th = self.theory.get(f"{dt}_gflops")
            lines.append(f"{dt} peak {r['gflops']:.0f} GFLOP/s ({r['lib']}, {r['n']}², {self.threads} threads; "
                         f"vector-unit arithmetic at the reported clock: {th if th else '-'} GFLOP/s)")
        return "\n".join(lines)

    def close(self) -> None:
        if self.torch is not None:
            self.torch.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="math threads (default: all cores)")
    p.add_argument("--sizes", default="1024,2048,3072,4096", help="matmul sides (comma list)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-python", default=None, help="an interpreter with torch (e.g. /work/torchvenv/bin/python)")
    p.add_argument("--workdir", default="output/bench/peak")
    p.add_argument("--quick", action="store_true", help="256 and 512², 2 rounds (smoke run)")
    a = p.parse_args(argv)
    threads = set_threads(a.threads or os.cpu_count() or 1)  # before paddle is imported
    if a.quick:
        a.sizes, a.rounds = "256,512", min(a.rounds, 2)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    import paddle

    paddle.set_device("cpu")
    peaks = PeakRunners(threads, [int(s) for s in a.sizes.split(",")], a.dtypes.split(","), a.libs.split(","),
                        a.torch_python, a.workdir)
    for r in range(a.rounds):
        peaks.round()
        print(f"  round {r + 1}/{a.rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    peaks.close()
    res = peaks.summary()
    print(table(res["rows"], ["dtype", "lib", "n", "gflops", "median_gflops", "runs", "note"],
                ["dtype", "library", "n", "GFLOP/s (best)", "GFLOP/s (median)", "runs", "note"]))
    print(peaks.describe())
    for k, v in res["errors"].items():
        print(f"  not measured: {k}: {v}")
    th = res["theoretical"]
    print(f"theoretical ({th['fp32_how']}; bf16: {th['bf16_how']}; {th['cores']} cores at {th['ghz_reported']} GHz "
          f"reported): fp32 {th['fp32_gflops']} GFLOP/s, bf16 {th['bf16_gflops']} GFLOP/s")
    info["load_avg_1m_end"] = os.getloadavg()[0]
    save_json(os.path.join(os.path.abspath(a.workdir), "peak.json"), dict(res, machine=info, args=vars(a)))
    print(f"load {info['load_avg_1m']} -> {info['load_avg_1m_end']:.2f}; results: "
          f"{os.path.join(os.path.abspath(a.workdir), 'peak.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
