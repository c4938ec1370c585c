"""Cost of the cache's self-check (ppihd.data.cache.verify_series): CRC-32 over one cached series, once per series
and process, against reading the window a training step reads. Prints a table; docs/benchmarks.md has the result.

    python benchmarks/cache_checksum.py [--slices 40] [--size 224] [--repeats 7]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppihd.data.cache import array_checksum  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--window", type=int, default=24)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    arr = np.random.default_rng(0).integers(0, 256, (a.slices, a.size, a.size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "series.npy")
        np.save(path, arr)
        crc, window = [], []
        for _ in range(a.repeats):   # interleaved, page cache warm for both
            t = time.perf_counter()
            array_checksum(np.load(path, mmap_mode="r"))
            crc.append(time.perf_counter() - t)
            t = time.perf_counter()
            np.array(np.load(path, mmap_mode="r")[: a.window])
            window.append(time.perf_counter() - t)
    mb = arr.nbytes / 1e6
    print(f"series {a.slices} x {a.size}² x 3 = {mb:.1f} MB, {a.repeats} repeats (median, min)")
    print(f"  CRC-32 of the whole series : {np.median(crc) * 1e3:6.2f} ms, {min(crc) * 1e3:6.2f} ms "
          f"({mb / np.median(crc) / 1e3:.2f} GB/s)")
    print(f"  read a {a.window}-slice window   : {np.median(window) * 1e3:6.2f} ms, {min(window) * 1e3:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
