"""GPU inference options of ``PaddleInferenceBackend`` / ``DygraphBackend`` / the two tools, checked on a CPU-only
machine: the ``paddle.inference.Config`` a GPU run WOULD build (every call recorded on a spy that forwards to the
real Config of this paddle, so a method this version lacks or an argument of the wrong type fails here), TensorRT's
slice ranges, the CPU refusals (whole messages), and CPU outputs unchanged.

What only a real GPU shows (the kernels, TensorRT's engines, fp16 numbers) is ``tools/gpu_smoke.py``'s job
(docs/inference.md, "GPU").
"""
import os
import re
import sys
import types

import numpy as np
import paddle
import paddle.inference as pinf
import pytest

from ppihd.engine.backends import (DygraphBackend, PaddleInferenceBackend, TrtPlan, model_fingerprint,
                                   trt_cache_folder, trt_plan)
from ppihd.utils.schema import DEFAULTS

from infer_utils import infer_args, load_tool, tiny_model

REAL_CONFIG = pinf.Config
SIZE = 64
#: Config methods a paddle built without TensorRT refuses (measured on 3.3.1 and 2.6.2 CPU builds: PreconditionNotMet
#: "To use Paddle-TensorRT, please compile with TENSORRT first"): recorded and looked up, not forwarded
NEEDS_TENSORRT = {"enable_tensorrt_engine"}


class FakePredictor:
    """Records the input shapes it is run on; returns zeros ``[1, S, 6]``."""

    def __init__(self, config, runs):
        self.config, self.runs, self.shape = config, runs, None

    def get_input_names(self):
        return ["images"]

    def get_output_names(self):
        return ["out"]

    def get_input_handle(self, name):
        outer = self
        return types.SimpleNamespace(reshape=lambda s: setattr(outer, "shape", list(s)),
                                     copy_from_cpu=lambda x: outer.runs.append(list(x.shape)))

    def run(self):
        pass

    def get_output_handle(self, name):
        return types.SimpleNamespace(copy_to_cpu=lambda: np.zeros((1, self.shape[1], 6), np.float32))


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA build with one A100 (capability 8.0): ``paddle.inference.Config`` replaced by a spy that records
    ``(method, args, kwargs)`` and forwards each call to a real Config (pybind checks names and types);
    ``create_predictor`` returns a :class:`FakePredictor`. Yields ``(configs, runs)``: the spies and the input
    shapes the predictors ran on."""
    configs, runs = [], []

    class SpyConfig:
        def __init__(self, *files):
            self.files, self.calls = files, []
            self._real = REAL_CONFIG(*files)
            configs.append(self)

        def __getattr__(self, name):
            real = getattr(self._real, name)   # AttributeError when this paddle has no such method

            def call(*a, **k):
                self.calls.append((name, a, k))
                if name in NEEDS_TENSORRT:       # raises "please compile with TENSORRT first" on this build
                    return None
                return real(*a, **k)
            return call

        def names(self):
            return [c[0] for c in self.calls]

        def args(self, name):
            return [c[1:] for c in self.calls if c[0] == name]

    monkeypatch.setattr(pinf, "Config", SpyConfig)
    monkeypatch.setattr(pinf, "create_predictor", lambda cfg: FakePredictor(cfg, runs))
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle, "is_compiled_with_rocm", lambda: False)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda i=None: (8, 0))
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda i=None: "NVIDIA A100 (fake)")
    return configs, runs


def _export_files(d, ext):
    os.makedirs(d, exist_ok=True)
    for name in ("inference" + ext, "inference.pdiparams"):
        with open(os.path.join(d, name), "w") as f:
            f.write("x")
    return str(d)


@pytest.fixture
def json_dir(tmp_path):
    if not paddle.__version__.startswith("3"):
        pytest.skip("the PIR .json program is Paddle 3")
    return _export_files(tmp_path / "pir", ".json")


@pytest.fixture
def pdmodel_dir(tmp_path):
    return _export_files(tmp_path / "old", ".pdmodel")


def _files(d, ext):
    return [os.path.join(d, "inference" + ext), os.path.join(d, "inference.pdiparams")]


def _infer_cfg(**over):
    cfg = dict(DEFAULTS["Infer"])
    cfg.update(over)
    return cfg


# --------------------------------------------------------------------------------------------- GPU configs
@pytest.mark.parametrize("device,gpu_id", [("gpu", 0), ("gpu:1", 1)])
def test_gpu_fp32_config(fake_gpu, pdmodel_dir, device, gpu_id):
    configs, _ = fake_gpu
    be = PaddleInferenceBackend(pdmodel_dir, device=device)
    (cfg,) = configs
    assert cfg.files == (os.path.join(pdmodel_dir, "inference.pdmodel"), os.path.join(pdmodel_dir, "inference.pdiparams"))
    assert cfg.args("enable_use_gpu") == [((256, gpu_id, pinf.PrecisionType.Float32), {})]
    assert cfg.args("enable_memory_optim") == [((), {})]     # on for GPU
    for cpu_only in ("disable_gpu", "enable_mkldnn", "set_cpu_math_library_num_threads", "enable_tensorrt_engine"):
        assert cpu_only not in cfg.names()
    assert be.memory_optim and be.trt is None and be.precision == "fp32"


def test_gpu_fp16_config(fake_gpu, pdmodel_dir):
    configs, _ = fake_gpu
    PaddleInferenceBackend(pdmodel_dir, device="gpu:2", precision="fp16")
    (cfg,) = configs
    assert cfg.args("enable_use_gpu") == [((256, 2, pinf.PrecisionType.Half), {})]
    assert cfg.args("enable_memory_optim") == [((), {})]


def test_gpu_pir_program_without_memory_optim(fake_gpu, json_dir):
    """A PIR program (Paddle 3 ``inference.json``): no enable_memory_optim (Paddle 3.3.1's create_predictor fails
    with it, backends.py MEMORY_OPTIM note); asking for it is an error that says why."""
    configs, _ = fake_gpu
    be = PaddleInferenceBackend(json_dir, device="gpu", precision="fp16")
    (cfg,) = configs
    assert cfg.args("enable_use_gpu") == [((256, 0, pinf.PrecisionType.Half), {})]
    assert "enable_memory_optim" not in cfg.names() and be.memory_optim is False
    with pytest.raises(ValueError) as e:
        PaddleInferenceBackend(json_dir, device="gpu", memory_optim=True)
    assert str(e.value) == (f"memory optimisation cannot be combined with a PIR program "
                            f"({os.path.join(json_dir, 'inference.json')}): paddle {paddle.__version__}'s "
                            "create_predictor then fails (\"Not find predictor_id ... memory_optimize_pass\"); its "
                            "executor frees each tensor after its last use instead")



def test_gpu_fp16_refused_below_volta(fake_gpu, pdmodel_dir, monkeypatch):
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda i=None: (6, 1))
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda i=None: "Tesla P40")
    with pytest.raises(RuntimeError) as e:
        PaddleInferenceBackend(pdmodel_dir, device="gpu", precision="fp16")
    assert str(e.value) == ("precision fp16: Tesla P40 (gpu:0, compute capability 6.1) is below Paddle's fp16 rule "
                            "(compute capability >= 7.0: V100, T4, A100, H100, ...); use fp32")


def test_trt_plan_slice_range():
    """max = Infer.trt_max_slices, else Infer.chunk_slices; opt = min(trt_opt_slices, max); min 1."""
    p = trt_plan(_infer_cfg(trt=True), 224, "/m")
    assert (p.min_slices, p.opt_slices, p.max_slices) == (1, 40, 128)       # defaults: chunk_slices 128
    assert p.shapes() == {"images": [[1, 1, 3, 224, 224], [1, 40, 3, 224, 224], [1, 128, 3, 224, 224]]}
    assert p.workspace_mb == 1024 and p.cache_dir == os.path.join("/m", "trt")
    p = trt_plan(_infer_cfg(trt=True, chunk_slices=24, chunk_overlap=8, trt_cache_dir="/c"), 64, "/m")
    assert (p.opt_slices, p.max_slices, p.cache_dir) == (24, 24, "/c")
    assert trt_plan(_infer_cfg(trt=True, chunk_slices=None, trt_max_slices=60), 64, "/m").max_slices == 60
    assert trt_plan(_infer_cfg(), 64, "/m") is None                          # off by default
    with pytest.raises(ValueError) as e:
        trt_plan(_infer_cfg(trt=True, chunk_slices=None), 64, "/m")
    assert str(e.value) == ("Infer.trt needs the largest slice count the engine accepts: set Infer.trt_max_slices "
                            "(--trt-max-slices) or Infer.chunk_slices (--chunk-slices; longer series go in chunks)")


@pytest.mark.parametrize("fp16", [False, True])
def test_trt_pdmodel_config(fake_gpu, pdmodel_dir, monkeypatch, fp16):
    """``.pdmodel`` (Paddle 2.x export): the shape ranges are recorded on GPU runs of 1 / opt / max slices, then
    TensorRT is enabled with them, the precision, the workspace in bytes and the engines kept in the cache."""
    configs, runs = fake_gpu
    monkeypatch.setattr(pinf, "get_trt_compile_version", lambda: (8, 6, 1), raising=False)
    plan = TrtPlan(SIZE, max_slices=60, opt_slices=32, workspace_mb=512, cache_dir=os.path.join(pdmodel_dir, "c"))
    PaddleInferenceBackend(pdmodel_dir, device="gpu", precision="fp16" if fp16 else "fp32", trt=plan)
    collect, run = configs
    folder = trt_cache_folder(plan, _files(pdmodel_dir, ".pdmodel"), fp16)
    assert os.path.dirname(folder) == os.path.join(pdmodel_dir, "c")
    shape_file = os.path.join(folder, "shape_range.pbtxt")
    assert collect.args("collect_shape_range_info") == [((shape_file,), {})]
    assert collect.args("enable_use_gpu") == [((256, 0, pinf.PrecisionType.Float32), {})]
    assert runs == [[1, 1, 3, SIZE, SIZE], [1, 32, 3, SIZE, SIZE], [1, 60, 3, SIZE, SIZE]]
    assert run.args("enable_use_gpu") == [((256, 0, pinf.PrecisionType.Float32), {})]  # TensorRT sets precision
    assert run.args("enable_tensorrt_engine") == [((), {
        "workspace_size": 512 * 2 ** 20, "max_batch_size": 1, "min_subgraph_size": 3,
        "precision_mode": pinf.PrecisionType.Half if fp16 else pinf.PrecisionType.Float32,
        "use_static": True, "use_calib_mode": False})]
    assert run.args("enable_tuned_tensorrt_dynamic_shape") == [((shape_file, True), {})]
    assert run.args("set_optim_cache_dir") == [((folder,), {})]
    assert run.args("enable_memory_optim") == [((), {})]


@pytest.fixture
def fake_paddle_tensorrt(monkeypatch):
    """``paddle.tensorrt.export`` as a GPU build with TensorRT has it (Input, PrecisionMode, TensorRTConfig,
    convert); ``convert`` records its arguments and writes ``<save_model_dir>.json / .pdiparams``."""
    converts = []

    class Input:
        def __init__(self, **kw):
            self.kw = kw

    class PrecisionMode:
        FP32, FP16 = "FP32", "FP16"

    class TensorRTConfig:
        def __init__(self, inputs):
            self.inputs = inputs

    def convert(model_path, config):
        converts.append((model_path, config))
        for ext in (".json", ".pdiparams"):
            with open(config.save_model_dir + ext, "w") as f:
                f.write("trt")

    export = types.ModuleType("paddle.tensorrt.export")
    export.Input, export.PrecisionMode, export.TensorRTConfig, export.convert = Input, PrecisionMode, TensorRTConfig, \
        convert
    pkg = types.ModuleType("paddle.tensorrt")
    pkg.export = export
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", pkg)
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", export)
    return converts


@pytest.mark.parametrize("fp16", [False, True])
def test_trt_pir_convert_once(fake_gpu, json_dir, fake_paddle_tensorrt, fp16):
    """``.json`` (Paddle 3, PIR): ``paddle.tensorrt.convert`` with the min / opt / max input shapes, the precision
    and the workspace, once; the predictor runs the converted program on the GPU."""
    configs, _ = fake_gpu
    plan = trt_plan(_infer_cfg(trt=True), SIZE, json_dir)      # 1 / 40 / 128 slices
    PaddleInferenceBackend(json_dir, device="gpu", precision="fp16" if fp16 else "fp32", trt=plan)
    ((path, tc),) = fake_paddle_tensorrt
    assert path == os.path.join(json_dir, "inference")
    (inp,) = tc.inputs
    assert inp.kw == {"min_input_shape": (1, 1, 3, SIZE, SIZE), "optim_input_shape": (1, 40, 3, SIZE, SIZE),
                      "max_input_shape": (1, 128, 3, SIZE, SIZE)}
    assert tc.precision_mode == ("FP16" if fp16 else "FP32") and tc.workspace_size == 1024 * 2 ** 20
    prefix = os.path.join(trt_cache_folder(plan, _files(json_dir, ".json"), fp16), "inference_trt")
    assert tc.save_model_dir == prefix
    (cfg,) = configs
    assert cfg.files == (prefix + ".json", prefix + ".pdiparams")
    assert cfg.args("enable_use_gpu") == [((256, 0, pinf.PrecisionType.Float32), {})]
    assert "enable_tensorrt_engine" not in cfg.names() and "enable_memory_optim" not in cfg.names()  # PIR
    PaddleInferenceBackend(json_dir, device="gpu", precision="fp16" if fp16 else "fp32", trt=plan)
    assert len(fake_paddle_tensorrt) == 1                       # the second start reuses the converted program


# --------------------------------------------------------------------------------------------- refusals
def test_cpu_refusals_read_the_whole_message(tmp_path):
    d = _export_files(tmp_path / "m", ".pdmodel")
    with pytest.raises(ValueError) as e:
        PaddleInferenceBackend(d, precision="fp16")
    assert str(e.value) == ("precision fp16 runs on an NVIDIA GPU (--device gpu); this run is on cpu: use fp32 on CPU "
                            "(or bf16 on a CPU with AVX512-BF16/AMX, deploy/python/predict.py)")
    with pytest.raises(ValueError) as e:
        PaddleInferenceBackend(d, trt=TrtPlan(SIZE, 8, 4, 64, str(tmp_path)))
    assert str(e.value) == ("--trt (TensorRT) runs on an NVIDIA GPU (--device gpu); this run is on cpu: drop --trt "
                            "on CPU")
    with pytest.raises(ValueError) as e:
        PaddleInferenceBackend(d, precision="int8")
    assert str(e.value) == "precision 'int8' unknown; expected one of fp32 | fp16 | bf16"


def test_trt_missing_from_the_build(fake_gpu, pdmodel_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pinf, "get_trt_compile_version", lambda: (0, 0, 0), raising=False)
    with pytest.raises(RuntimeError) as e:
        PaddleInferenceBackend(pdmodel_dir, device="gpu", trt=TrtPlan(SIZE, 8, 4, 64, str(tmp_path)))
    assert str(e.value) == (f"--trt: paddle {paddle.__version__} was built without TensorRT "
                            "(get_trt_compile_version() is 0.0.0): install paddlepaddle-gpu with TensorRT, or drop --trt")


def test_trt_pir_without_paddle_tensorrt(fake_gpu, json_dir, tmp_path):
    """This CPU build has no paddle.tensorrt: the error says so (and nothing was converted)."""
    with pytest.raises(RuntimeError) as e:
        PaddleInferenceBackend(json_dir, device="gpu", trt=TrtPlan(SIZE, 8, 4, 64, str(tmp_path / "c")))
    assert str(e.value) == (f"--trt on a Paddle 3 export (inference.json) needs paddle.tensorrt, which paddle "
                            f"{paddle.__version__} cannot import (No module named 'paddle.tensorrt'): install "
                            "paddlepaddle-gpu built with TensorRT and the tensorrt Python package, or drop --trt")
    assert not os.path.exists(tmp_path / "c")


# --------------------------------------------------------------------------------------------- dygraph fp16
def test_dygraph_fp16_refused_on_cpu():
    _, model = tiny_model(32)
    paddle.set_device("cpu")
    with pytest.raises(ValueError) as e:
        DygraphBackend(model, precision="fp16")
    assert str(e.value) == ("precision fp16 runs on an NVIDIA GPU (--device gpu); this run is on cpu: use fp32 on CPU "
                            "(or bf16 on a CPU with AVX512-BF16/AMX, deploy/python/predict.py)")
    with pytest.raises(ValueError) as e:
        DygraphBackend(model, precision="bf16")
    assert str(e.value) == ("precision 'bf16' of the dygraph model (tools/infer.py): expected fp32 | fp16 (bf16 is "
                            "the exported-model CPU path: tools/export_model.py -o Export.bf16=True, then "
                            "deploy/python/predict.py --precision bf16)")


def test_dygraph_fp16_runs_under_auto_cast(monkeypatch):
    """On a (faked) GPU the forward runs inside ``paddle.amp.auto_cast(True, level="O1", dtype="float16")``;
    fp32 does not enter auto_cast at all and gives sigmoid(model(x)) bit for bit."""
    import contextlib

    _, model = tiny_model(32)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    from ppihd.postprocess.arrays import sigmoid

    with paddle.no_grad():   # the fp32 recipe as it was before precision existed
        want = sigmoid(model(paddle.to_tensor(x[None]), None).numpy()).astype(np.float32)[0]
    casts = []
    monkeypatch.setattr(paddle.amp, "auto_cast", lambda *a, **k: (casts.append((a, k)), contextlib.nullcontext())[1])
    got = DygraphBackend(model).predict_series(x)
    assert casts == []
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:0")
    monkeypatch.setattr(paddle, "is_compiled_with_rocm", lambda: False)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda i=None: (7, 0))
    DygraphBackend(model, precision="fp16").predict_series(x)
    assert casts == [((True,), {"level": "O1", "dtype": "float16"})]


# --------------------------------------------------------------------------------------------- the tools
def test_tools_refuse_gpu_options_on_cpu(tmp_path, fixture_series_dir, ppihd_log):
    from infer_utils import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    infer = load_tool("tools/infer.py")
    args = infer_args(ckpt) + ["--input", fixture_series_dir, "--device", "cpu"]
    assert infer.main(args + ["--output", str(tmp_path / "a"), "--precision", "fp16"]) == 2
    assert ("precision fp16 runs on an NVIDIA GPU (--device gpu); this run is on cpu: use fp32 on CPU (or bf16 on a "
            "CPU with AVX512-BF16/AMX, deploy/python/predict.py)") in ppihd_log.text
    assert infer.main(args + ["--output", str(tmp_path / "b"), "-o", "Infer.trt=True"]) == 2
    assert ("Infer.trt (TensorRT) runs an exported model: tools/export_model.py, then deploy/python/predict.py "
            "--trt") in ppihd_log.text
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ppihd.engine.exporter import export_model

    cfg, model = tiny_model(SIZE, seed=3)
    out = str(tmp_path_factory.mktemp("gpu_infer_export"))
    export_model(model, cfg, out)
    return out


def test_deploy_refuses_gpu_options_on_cpu(exported, fixture_series_dir, tmp_path, ppihd_log):
    predict = load_tool("deploy/python/predict.py")
    base = ["--model_dir", exported, "--input", fixture_series_dir, "--device", "cpu", "--no-progress"]
    assert predict.main(base + ["--output", str(tmp_path / "a"), "--precision", "fp16"]) == 2
    assert ("precision fp16 runs on an NVIDIA GPU (--device gpu); this run is on cpu: use fp32 on CPU (or bf16 on a "
            "CPU with AVX512-BF16/AMX, deploy/python/predict.py)") in ppihd_log.text
    assert predict.main(base + ["--output", str(tmp_path / "b"), "--trt"]) == 2
    assert "--trt (TensorRT) runs on an NVIDIA GPU (--device gpu); this run is on cpu: drop --trt on CPU" \
        in ppihd_log.text
    assert predict.main(base + ["--output", str(tmp_path / "c"), "--backend", "onnxruntime", "--trt"]) == 2
    assert "--trt: only the paddle back-end has this option (not --backend onnxruntime)" in ppihd_log.text
    assert not any(os.path.exists(tmp_path / n) for n in "abc")


# --------------------------------------------------------------------------------------------- CPU unchanged
def _by_hand(d, x, memory_optim=False):
    """The CPU fp32 predictor built with Paddle's own calls (the recipe before the GPU options existed)."""
    from ppihd.engine.backends import find_model_files

    cfg = REAL_CONFIG(*find_model_files(d))
    cfg.disable_gpu()
    cfg.enable_mkldnn()
    cfg.delete_pass("operator_reshape_onednn_fuse_pass")
    cfg.set_cpu_math_library_num_threads(2)
    if memory_optim:
        cfg.enable_memory_optim()
    cfg.disable_glog_info()
    return PaddleInferenceBackend.run(pinf.create_predictor(cfg), np.ascontiguousarray(x[None]))[0]


def test_cpu_default_path_bit_identical(exported):
    x = np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)
    be = PaddleInferenceBackend(exported, threads=2)
    assert be.memory_optim is False    # off on CPU (slower there, backends.py MEMORY_OPTIM note)
    np.testing.assert_array_equal(be.predict_series(x), _by_hand(exported, x))


# --------------------------------------------------------------------------------------------- TensorRT cache key
def test_model_fingerprint_by_hand(tmp_path):
    """1-byte files: sha1 of the program, then the params' size and its 18 samples (first, last, 16 blocks), each
    the one byte. A 3 MB params file: a change in its middle (one of the 16 blocks) or of one byte of the program
    changes the fingerprint; the timestamps do not."""
    import hashlib

    d = _export_files(tmp_path / "m", ".pdmodel")
    files = _files(d, ".pdmodel")
    assert model_fingerprint(files) == hashlib.sha1(b"x" + b"1" + b"x" * 18).hexdigest()
    big = bytearray(3 << 20)
    with open(files[1], "wb") as f:
        f.write(big)
    before = model_fingerprint(files)
    os.utime(files[1], (1, 1))
    assert model_fingerprint(files) == before
    big[(3 << 20) * 8 // 17] = 1
    with open(files[1], "wb") as f:
        f.write(big)
    assert model_fingerprint(files) != before
    plan = TrtPlan(SIZE, max_slices=60, opt_slices=32, workspace_mb=512, cache_dir="/c")
    assert trt_cache_folder(plan, files, True) == os.path.join(
        "/c", f"fp16_s1-32-60_{SIZE}_w512_{model_fingerprint(files)[:16]}")


def _retrain(d, ext):
    """Same-size new weights with the old timestamps (what ``cp -p`` / ``rsync -a`` of a re-export leaves)."""
    params = os.path.join(d, "inference.pdiparams")
    st = os.stat(params)
    with open(params, "w") as f:
        f.write("y")
    os.utime(params, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(os.path.join(d, "inference" + ext), ns=(st.st_atime_ns, st.st_mtime_ns))


def test_trt_pdmodel_cache_follows_model_and_plan(fake_gpu, pdmodel_dir, monkeypatch):
    """Paddle 2.x keeps engines as ``trt_serialized_<key>`` where its key ignores the weights and the ranges: new
    weights (old mtimes) or another workspace / slice range get another cache folder; the same ones reuse it."""
    configs, _ = fake_gpu
    monkeypatch.setattr(pinf, "get_trt_compile_version", lambda: (8, 6, 1), raising=False)
    cache = os.path.join(pdmodel_dir, "c")
    plan = TrtPlan(SIZE, max_slices=60, opt_slices=32, workspace_mb=512, cache_dir=cache)

    def start(p):
        n = len(configs)
        PaddleInferenceBackend(pdmodel_dir, device="gpu", trt=p)
        new = configs[n:]
        open(new[0].args("collect_shape_range_info")[0][0][0], "w").close() if len(new) == 2 else None
        return len(new) == 2, new[-1].args("set_optim_cache_dir")[0][0][0]

    collected, first = start(plan)
    assert collected and os.path.dirname(first) == cache
    assert start(plan) == (False, first)                                   # same model, same plan: reused
    _retrain(pdmodel_dir, ".pdmodel")
    collected, second = start(plan)
    assert collected and second != first
    collected, third = start(TrtPlan(SIZE, 60, 32, 1024, cache))
    assert collected and third not in (first, second)
    collected, fourth = start(TrtPlan(SIZE, 64, 32, 512, cache))
    assert collected and fourth not in (first, second, third)


def test_trt_pir_reconverts_a_retrained_model(fake_gpu, json_dir, fake_paddle_tensorrt):
    """PIR: a re-export with old timestamps (``cp -p``) is converted again, into its own folder."""
    plan = trt_plan(_infer_cfg(trt=True), SIZE, json_dir)
    PaddleInferenceBackend(json_dir, device="gpu", trt=plan)
    _retrain(json_dir, ".json")
    PaddleInferenceBackend(json_dir, device="gpu", trt=plan)
    assert len(fake_paddle_tensorrt) == 2
    first, second = (os.path.dirname(tc.save_model_dir) for _, tc in fake_paddle_tensorrt)
    assert first != second


def test_trt_pir_convert_on_another_gpu_is_logged(fake_gpu, json_dir, fake_paddle_tensorrt, ppihd_log):
    PaddleInferenceBackend(json_dir, device="gpu:1", trt=trt_plan(_infer_cfg(trt=True), SIZE, json_dir))
    assert ("TensorRT: paddle.tensorrt.convert builds on the first visible GPU, not gpu:1; to convert and run on "
            "GPU 1 use CUDA_VISIBLE_DEVICES=1 with --device gpu") in ppihd_log.text


# --------------------------------------------------------------------------------------------- TensorRT chunks
def test_trt_chunks_at_most_the_profile_max(fake_gpu, pdmodel_dir, monkeypatch, tmp_path):
    """A 100-slice series with trt_max_slices 64 (chunk_slices 0 = whole series, overlap 32) goes to the engine in
    windows of 64 advancing by 32, the last aligned to the end: [0, 64), [32, 96), [36, 100) — through
    Backend.predict and through run_inference."""
    from infer_utils import write_series
    from ppihd.engine.predictor import run_inference

    _, runs = fake_gpu
    monkeypatch.setattr(pinf, "get_trt_compile_version", lambda: (8, 6, 1), raising=False)
    cfg = _infer_cfg(trt=True, trt_max_slices=64, chunk_slices=0, save_plots=False, dicom_sr=False,
                     report_html=False)
    be = PaddleInferenceBackend(pdmodel_dir, device="gpu", trt=trt_plan(cfg, SIZE, pdmodel_dir))
    del runs[:]                                   # the shape-range runs
    x = np.zeros((100, 3, SIZE, SIZE), np.float32)
    assert be.predict(x, cfg["chunk_slices"], cfg["chunk_overlap"]).shape == (100, 6)
    assert runs == [[1, 64, 3, SIZE, SIZE]] * 3
    del runs[:]
    write_series(str(tmp_path / "s"), 100)
    data = dict(DEFAULTS["Data"], image_size=SIZE)
    res = run_inference([str(tmp_path / "s")], str(tmp_path / "out"), be, data, cfg, progress=False)
    assert res["num_predicted"] == 100
    assert runs == [[1, 64, 3, SIZE, SIZE]] * 3


def test_trt_overlap_not_below_the_profile_max_clear_error():
    with pytest.raises(ValueError) as e:
        trt_plan(_infer_cfg(trt=True, trt_max_slices=32, chunk_overlap=32), SIZE, "/m")
    assert str(e.value) == ("Infer.chunk_slices=128 / Infer.trt_max_slices=32: TensorRT takes series in chunks of "
                            "at most 32 slices, which must be longer than Infer.chunk_overlap=32; lower "
                            "--chunk-overlap or raise --trt-max-slices")


# --------------------------------------------------------------------------------------------- inference.yml
def test_inference_yml_leaves_out_the_deployment_keys(tmp_path):
    """An export made with TensorRT / fp16 / a cache folder of the exporting machine writes none of them."""
    from ppihd.engine.exporter import inference_meta

    cfg, _ = tiny_model(SIZE)
    cfg["Infer"].update(precision="fp16", trt=True, trt_max_slices=64, trt_opt_slices=30, trt_workspace_mb=4096,
                        trt_cache_dir="/abs/trt", threshold=0.4)
    meta = inference_meta(cfg, {"model_file": "m/inference.json", "params_file": "m/inference.pdiparams"})
    assert not {"precision", "trt", "trt_max_slices", "trt_opt_slices", "trt_workspace_mb",
                "trt_cache_dir"} & set(meta["Infer"])
    assert meta["Infer"]["threshold"] == 0.4 and meta["Infer"]["chunk_slices"] == cfg["Infer"]["chunk_slices"]


def test_deploy_ignores_gpu_settings_of_an_older_export(exported, tmp_path, ppihd_log):
    """An inference.yml written before with Infer.trt true / precision fp16 / an absolute cache folder: predict.py
    on CPU takes this machine's defaults, fp32 without TensorRT, and predicts every slice (exit 0)."""
    import shutil

    import yaml
    from infer_utils import write_series

    d = str(tmp_path / "m")
    shutil.copytree(exported, d)
    with open(os.path.join(d, "inference.yml")) as f:
        meta = yaml.safe_load(f)
    meta["Infer"].update(precision="fp16", trt=True, trt_cache_dir="/elsewhere/trt")
    with open(os.path.join(d, "inference.yml"), "w") as f:
        yaml.safe_dump(meta, f)
    predict = load_tool("deploy/python/predict.py")
    write_series(str(tmp_path / "s"), 4)
    assert predict.main(["--model_dir", d, "--input", str(tmp_path / "s"), "--device", "cpu", "--no-progress",
                         "--no-plots", "--output", str(tmp_path / "o")]) == 0
    assert re.search(r"backend paddle on cpu, \d+ CPU threads, fp32$", ppihd_log.text, re.M)
    assert "TensorRT" not in ppihd_log.text


def test_deploy_no_trt_flag():
    predict = load_tool("deploy/python/predict.py")
    base = ["--model_dir", "m", "--input", "i", "--output", "o"]
    assert predict.parse_args(base).trt is None
    assert predict.parse_args(base + ["--trt"]).trt is True
    assert predict.parse_args(base + ["--trt", "--no-trt"]).trt is False
