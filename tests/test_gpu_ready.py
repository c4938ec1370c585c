"""GPU readiness checked on CPU (issue 19): device errors, AMP capability rules, the fp16 scaler's bad-step
budget and checkpointed state, host syncs per training step. The device queries are simulated (monkeypatch)."""
import logging
import os

import numpy as np
import paddle
import pytest

from gpu_utils import DEMO_CFG
from infer_utils import infer_args, load_tool, save_tiny_checkpoint
from ppihd.utils import env


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n, cuda=True)``: paddle reports a CUDA build (or not) with ``n`` visible GPUs; ``paddle.set_device``
    with a GPU fails the test (on a real CUDA build without a GPU it ends the process with status 255)."""
    def setup(n, cuda=True):
        monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: cuda)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: n)
        real = paddle.set_device

        def guarded(d):
            assert not str(d).startswith("gpu"), f"paddle.set_device({d!r}) reached"
            return real(d)
        monkeypatch.setattr(paddle, "set_device", guarded)
    monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    return setup


def test_resolve_device_rules(fake_gpus, monkeypatch):
    fake_gpus(0, cuda=False)
    with pytest.raises(env.DeviceError, match="CPU-only"):
        env.resolve_device("gpu")
    assert env.resolve_device("auto") == "cpu" and env.resolve_device("CPU") == "cpu"
    fake_gpus(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(env.DeviceError, match="no GPU is visible.*CUDA_VISIBLE_DEVICES=''"):
        env.resolve_device("gpu:0")
    assert env.resolve_device("auto") == "cpu"
    fake_gpus(2)
    assert env.resolve_device("gpu") == "gpu:0" and env.resolve_device("auto") == "gpu:0"
    assert env.resolve_device("gpu:1") == "gpu:1"
    with pytest.raises(env.DeviceError, match=r"GPU index 2 does not exist, 2 GPU\(s\) visible \(gpu:0 .. gpu:1"):
        env.resolve_device("gpu:2")
    monkeypatch.setenv("FLAGS_selected_gpus", "1")  # set per rank by paddle.distributed.launch
    assert env.resolve_device("gpu") == "gpu:1"
    for bad in ("cuda", "gpu:x", "npu:0"):
        with pytest.raises(env.DeviceError, match="expected cpu | gpu"):
            env.resolve_device(bad)


class _Grab(logging.Handler):
    def __init__(self):
        super().__init__()
        self.text = []

    def emit(self, record):
        self.text.append(record.getMessage())


@pytest.mark.parametrize("tool,n,cuda,expect", [
    ("tools/train.py", 0, True, "no GPU is visible"),
    ("tools/eval.py", 1, True, "GPU index 3 does not exist, 1 GPU"),
    ("tools/train.py", 0, False, "CPU-only"),
])
def test_tools_exit_2_with_the_device_message(tmp_path, fake_gpus, tool, n, cuda, expect):
    fake_gpus(n, cuda)
    grab = _Grab()
    logging.getLogger("ppihd").addHandler(grab)
    try:
        dev = "gpu:3" if "index" in expect else "gpu"
        rc = load_tool(tool).main(["-c", DEMO_CFG, "-o", f"Global.device={dev}", "-o",
                                   f"Global.output_dir={tmp_path}", "-o", f"Global.pretrained_model={tmp_path}/m"])
    finally:
        logging.getLogger("ppihd").removeHandler(grab)
    assert rc == 2
    assert any(expect in t and "Global.device" in t for t in grab.text), grab.text


def test_infer_device_auto_runs_on_cpu(tmp_path, fixture_series_dir, fake_gpus):
    fake_gpus(0)  # a CUDA build that sees no GPU: auto is the CPU
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    files = [os.path.join(fixture_series_dir, n) for n in ("01.dcm", "02.dcm", "03.dcm")]
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--device", "auto", "--input", *files, "--output",
                                                              str(tmp_path / "o"), "-o", "Infer.save_plots=False"])
    assert rc == 0 and os.path.isfile(tmp_path / "o" / "predictions.csv")
    assert str(paddle.device.get_device()) == "cpu"
