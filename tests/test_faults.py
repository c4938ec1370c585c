"""Faults around inference: a second run into the same folder, a killed run, a full or read-only disk,
symlinked folders and loops, FIFOs, headers that cannot be true. Every case: a documented exit code, a message
naming the file, every input file in exactly one of predictions.csv / skipped.csv, no half-written CSV."""
import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from ppihd.engine.outputs import EXIT_BUSY, EXIT_OK, EXIT_OUTPUT, EXIT_SKIPPED, PARTIAL
from ppihd.utils.runlock import LOCK_NAME, RunLock, read_marker

from conftest import ROOT
from infer_utils import infer_args, load_tool, save_tiny_checkpoint, write_series

IMG = 32


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _digest(folder):
    """sha1 of every CSV in ``folder`` (what must survive a failed run unchanged)."""
    return {n: hashlib.sha1(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder)) if n.endswith(".csv")}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "m.pdparams"), image_size=IMG)


def _infer(ckpt, inputs, out, *extra):
    return load_tool("tools/infer.py").main(infer_args(ckpt, IMG) + ["--input", *map(str, inputs),
                                                                    "--output", str(out), *extra])


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a 256 KiB tmpfs (a disk that fills up); root is needed, as in CI."""
    mounts = []

    def make(size="256k", options=""):
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            reason = f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})"
            if os.environ.get("PPIHD_REQUIRE_TOOLS") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        mounts.append(d)
        return d
    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


# ----------------------------------------------------------------------------------------- one writer
def test_second_run_into_a_busy_folder_is_refused(ckpt, tmp_path, ppihd_log):
    write_series(str(tmp_path / "in"), 4)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        f"import sys, time; sys.path.insert(0, {ROOT!r}); from ppihd.utils.runlock import RunLock; "
        f"RunLock({str(out)!r}, 'the other run').acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = _infer(ckpt, [tmp_path / "in"], out)
        assert rc == EXIT_BUSY == 6
        msg = " ".join(r.getMessage() for r in ppihd_log.records if r.levelname == "ERROR")
        assert f"pid {holder.pid}" in msg and "the other run" in msg and str(out) in msg
        assert not os.path.exists(out / "predictions.csv")
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is gone with it, the next run takes over and says whose it was
    ppihd_log.clear()
    assert _infer(ckpt, [tmp_path / "in"], out, "-o", "Infer.save_plots=False") == EXIT_OK
    assert any(f"pid {holder.pid}" in r.getMessage() and "no longer running" in r.getMessage()
               for r in ppihd_log.records)
    assert read_marker(str(out))["status"] == "complete" and read_marker(str(out))["num_predicted"] == 4


def test_lock_in_process_names_the_holder(tmp_path):
    with RunLock(str(tmp_path), "first"):
        with pytest.raises(RuntimeError, match=r"in use by first \(pid %d" % os.getpid()):
            RunLock(str(tmp_path), "second").acquire()
    RunLock(str(tmp_path), "third").acquire().release()   # free again once released
    assert open(tmp_path / LOCK_NAME).read() == ""


def test_killed_run_leaves_previous_csvs_and_a_running_marker(ckpt, tmp_path):
    """kill -9 in the middle of a run: the previous run's CSVs are untouched, the journal (.partial) holds what
    the killed run had finished, run.json says 'running', and the next run goes ahead."""
    write_series(str(tmp_path / "small"), 4)
    for k in range(6):
        write_series(str(tmp_path / "big" / f"s{k}"), 40, series=f"1.2.3.{k + 10}", size=(16, 16))
    out = tmp_path / "out"
    assert _infer(ckpt, [tmp_path / "small"], out, "-o", "Infer.save_plots=False") == EXIT_OK
    before = _digest(out)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "infer.py")] + infer_args(ckpt, IMG) + [
        "--input", str(tmp_path / "big"), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / ("predictions.csv" + PARTIAL)
    t0 = time.time()
    while time.time() - t0 < 120:   # wait until the killed run has written some rows
        if partial.exists() and partial.read_text().count("\n") > 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists(), "the run never started writing"
    assert _digest(out) == before                        # no final CSV was touched
    assert read_marker(str(out))["status"] == "running"
    assert _infer(ckpt, [tmp_path / "small"], out, "-o", "Infer.save_plots=False") == EXIT_OK
    assert not partial.exists() and read_marker(str(out))["status"] == "complete"


# ------------------------------------------------------------------------------------ full, read-only
def test_full_disk_keeps_the_previous_outputs(ckpt, tmp_path, tmpfs, ppihd_log):
    write_series(str(tmp_path / "small"), 3)
    for k in range(4):
        write_series(str(tmp_path / "big" / f"s{k}"), 12, series=f"1.2.3.{k + 10}")
    out = tmpfs("256k")
    assert _infer(ckpt, [tmp_path / "small"], out, "-o", "Infer.save_plots=False") == EXIT_OK
    before = _digest(out)
    rc = _infer(ckpt, [tmp_path / "big"], out)               # the PNGs fill the 256 KiB
    assert rc == EXIT_OUTPUT == 5
    errors = [r.getMessage() for r in ppihd_log.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "MB free" in errors[0]
    assert str(out) in errors[0]
    assert _digest(out) == before                                 # the complete previous run is untouched
    assert not [n for n in os.listdir(out) if PARTIAL in n or ".tmp" in n]   # no orphan journal or temp file
    assert read_marker(str(out))["status"] == "failed"


def test_read_only_output_folder(ckpt, tmp_path, tmpfs, ppihd_log):
    write_series(str(tmp_path / "in"), 3)
    out = tmpfs("64k", ",ro")
    rc = _infer(ckpt, [tmp_path / "in"], out)
    assert rc == EXIT_OUTPUT
    assert any(str(out) in r.getMessage() and "Read-only file system" in r.getMessage() for r in ppihd_log.records)


# ------------------------------------------------------------------------------- every file accounted
@pytest.mark.timeout(120)
def test_symlinks_loops_and_fifos(ckpt, tmp_path):
    real = tmp_path / "elsewhere"
    paths = write_series(str(real / "series"), 4)
    inp = tmp_path / "in"
    inp.mkdir()
    os.symlink(real / "series", inp / "linked_series")         # a symlinked folder of DICOMs is followed
    os.symlink(inp, inp / "loop")                              # a link back up the tree is read once
    os.mkfifo(inp / "pipe.dcm")                                # a FIFO must not be opened (it would hang)
    os.symlink(tmp_path / "gone.dcm", inp / "broken.dcm")      # a broken link
    out = tmp_path / "out"
    assert _infer(ckpt, [inp], out, "-o", "Infer.save_plots=False") == EXIT_SKIPPED
    pred = _rows(out / "predictions.csv")
    assert sorted(os.path.basename(r["path"]) for r in pred) == sorted(os.path.basename(p) for p in paths)
    assert all(r["path"].startswith(str(inp / "linked_series")) for r in pred)
    skipped = {os.path.basename(r["path"]): r["reason"] for r in _rows(out / "skipped.csv")}
    assert skipped["pipe.dcm"] == "a FIFO (named pipe), not a file: not opened"
    assert skipped["broken.dcm"] == "broken symbolic link"
    assert skipped["loop"].startswith("symlink loop")


# ------------------------------------------------------------------------------- impossible headers
@pytest.mark.parametrize("tag,value,why", [
    ("RescaleSlope", "nan", "impossible RescaleSlope nan"),
    ("RescaleSlope", "1e6", "impossible RescaleSlope 1e6"),
    ("RescaleIntercept", "inf", "impossible RescaleIntercept inf"),
    ("RescaleIntercept", "-1e9", "impossible RescaleIntercept -1e9"),
    ("Rows", 16, "pixel data holds 2048 bytes but Rows x Columns x BitsAllocated = 16 x 32 x 16 needs 1024"),
    ("constant", None, "constant image: every pixel is -1024 HU"),
])
def test_headers_that_cannot_be_true(ckpt, tmp_path, tag, value, why):
    paths = write_series(str(tmp_path / "in"), 4)
    bad = paths[1]
    ds = pydicom.dcmread(bad)
    if tag == "constant":
        ds.PixelData = np.zeros((32, 32), np.int16).tobytes()   # stored 0 -> -1024 HU everywhere
    elif tag == "Rows":
        ds.Rows = value
    else:
        ds.data_element(tag).value = value
    ds.save_as(bad)
    out = tmp_path / "out"
    assert _infer(ckpt, [tmp_path / "in"], out, "-o", "Infer.save_plots=False") == EXIT_SKIPPED
    skipped = _rows(out / "skipped.csv")
    assert [r["path"] for r in skipped] == [bad] and skipped[0]["reason"].startswith(why), skipped
    assert sorted(r["path"] for r in _rows(out / "predictions.csv")) == sorted(set(paths) - {bad})


def test_checkpoint_on_a_full_disk_leaves_no_orphan(tmp_path, tmpfs):
    """A save that runs out of room after its .pdparams: that payload is removed again, the previous checkpoint is
    still the one the manifest names and loads, and nothing but it (and the filler) is left on the disk."""
    import errno

    import paddle

    from ppihd.utils.checkpoint import load_checkpoint, save_checkpoint

    paddle.seed(0)
    net = paddle.nn.Linear(256, 256)
    opt = paddle.optimizer.Momentum(0.1, parameters=net.parameters())
    net(paddle.rand([2, 256])).mean().backward()
    opt.step()
    probe = tmp_path / "probe"
    save_checkpoint(str(probe / "latest"), net, opt, iteration=1)
    sizes = {f: os.path.getsize(probe / f) for f in os.listdir(probe)}
    params = next(v for f, v in sizes.items() if f.endswith(".pdparams") and "." in f[len("latest."):])
    disk = tmpfs("2m")
    save_checkpoint(str(disk / "latest"), net, opt, iteration=1)
    before = sorted(os.listdir(disk))
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:   # leave room for one more .pdparams, not for its .pdopt
        f.write(b"\0" * (free - params - 64 * 1024))
    with pytest.raises(OSError) as e:
        save_checkpoint(str(disk / "latest"), net, opt, iteration=2)
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(disk)) == sorted(before + ["filler"])
    state = load_checkpoint(str(disk / "latest"), paddle.nn.Linear(256, 256))
    assert state["iteration"] == 1


def test_export_refuses_a_busy_folder(tmp_path, ckpt):
    """tools/export_model.py takes its output folder's lock too (as tools/eval.py does): exit 6, nothing written."""
    out = tmp_path / "inference"
    with RunLock(str(out), "the other export"):
        rc = load_tool("tools/export_model.py").main(["-c", os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml"),
                                                      "-o", f"Global.pretrained_model={ckpt}",
                                                      "-o", f"Data.image_size={IMG}",
                                                      "-o", f"Global.save_inference_dir={out}"])
    assert rc == 6 and not os.path.exists(out / "inference.yml")
