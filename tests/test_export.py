"""Export (paddle.jit.save + inference.yml) and the Paddle Inference predictor against the dygraph model.

Tiny model (micro Swin, 64 px) so it stays fast on CPU. The exported graph must give the dygraph numbers to
1e-5 for S = 1, 7, 61 slices (dynamic slice count), with oneDNN on and off.
"""
import csv
import os

import numpy as np
import paddle
import pytest
import yaml

from ppihd import LABELS
from ppihd.engine.exporter import export_model, read_inference_yml
from ppihd.engine.backends import DygraphBackend, PaddleInferenceBackend, find_model_files

from infer_utils import infer_args, load_tool, tiny_model

PADDLE3 = not paddle.__version__.startswith("2.")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg, model = tiny_model(64, seed=3)
    out = str(tmp_path_factory.mktemp("export"))
    ckpt = os.path.join(out, "micro.pdparams")
    paddle.save(model.state_dict(), ckpt)
    cfg["Global"]["pretrained_model"] = ckpt
    files = export_model(model, cfg, os.path.join(out, "inference"))
    return cfg, model, files, out


def test_export_files_and_yml(exported):
    cfg, _, files, _ = exported
    d = os.path.dirname(files["model_file"])
    assert os.path.basename(files["model_file"]) == ("inference.json" if PADDLE3 else "inference.pdmodel")
    assert os.path.isfile(os.path.join(d, "inference.pdiparams"))
    assert find_model_files(d) == (files["model_file"], files["params_file"])
    meta = read_inference_yml(d)
    assert meta["labels"] == list(LABELS)
    assert meta["input"]["shape"] == [1, -1, 3, 64, 64]
    assert meta["output"]["shape"] == [1, -1, 6] and meta["output"]["activation"] == "sigmoid"
    assert meta["Preprocess"]["windows"] == [[40, 80], [80, 200], [40, 380]]
    assert meta["Preprocess"]["image_size"] == 64
    assert meta["Preprocess"]["remove_black_edges"] is True and meta["Preprocess"]["slice_order"] == "normal"
    assert meta["paddle_version"] == paddle.__version__
    with open(os.path.join(d, "inference.yml")) as f:  # plain YAML, readable without ppihd
        assert yaml.safe_load(f)["arch"]["variant"] == "micro"


@pytest.mark.parametrize("mkldnn", [True, False])
def test_predictor_matches_dygraph(exported, mkldnn):
    _, model, files, _ = exported
    dy = DygraphBackend(model)
    pb = PaddleInferenceBackend(os.path.dirname(files["model_file"]), threads=2, mkldnn=mkldnn)
    assert pb.mkldnn == mkldnn  # --no-mkldnn really turns oneDNN off (Paddle 3 enables it by default)
    rng = np.random.default_rng(0)
    for s in (1, 7, 61):
        x = rng.random((s, 3, 64, 64), dtype=np.float32)
        a, b = dy.predict_series(x), pb.predict_series(x)
        assert a.shape == b.shape == (s, 6)
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0, err_msg=f"S={s} mkldnn={mkldnn}")
        # and the numbers are probabilities of the dygraph logits (independent sigmoid)
        with paddle.no_grad():
            logits = model(paddle.to_tensor(x[None]), None).numpy()[0]
        np.testing.assert_allclose(a, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)


def test_batched_series_equal_single(exported):
    """batch_series > 1 pads with a key-padding mask; results must equal one series at a time."""
    _, model, _, _ = exported
    rng = np.random.default_rng(1)
    xs = [rng.random((s, 3, 64, 64), dtype=np.float32) for s in (3, 1, 5)]
    single = [DygraphBackend(model).predict_series(x) for x in xs]
    batched = DygraphBackend(model, batch_series=3).predict_many(xs)
    for a, b in zip(single, batched):
        np.testing.assert_allclose(b, a, atol=1e-5)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_deploy_predict_matches_tools_infer(exported, fixture_series_dir, tmp_path):
    """deploy/python/predict.py (exported model, no training config) writes the same files and numbers."""
    _, _, files, out = exported
    ckpt = os.path.join(out, "micro.pdparams")
    first = sorted(os.path.join(fixture_series_dir, n) for n in os.listdir(fixture_series_dir)
                   if n.endswith(".dcm"))[:9]
    rc1 = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", *first, "--output", str(tmp_path / "a"),
                                                               "-o", "Infer.save_plots=False"])
    rc2 = load_tool("deploy/python/predict.py").main(
        ["--model_dir", os.path.dirname(files["model_file"]), "--input", *first, "--output", str(tmp_path / "b"),
         "--threads", "2", "--no-progress", "--no-plots"])
    assert rc1 == rc2 == 0
    a, b = _rows(tmp_path / "a" / "predictions.csv"), _rows(tmp_path / "b" / "predictions.csv")
    assert len(a) == len(b) == 9
    for ra, rb in zip(a, b):
        assert ra["sop_uid"] == rb["sop_uid"] and ra["path"] == rb["path"]
        for lab in LABELS:
            assert abs(float(ra[lab]) - float(rb[lab])) < 1e-5
    assert [r["ID"] for r in _rows(tmp_path / "a" / "submission.csv")] == \
        [r["ID"] for r in _rows(tmp_path / "b" / "submission.csv")]
    # the same study answer: one study, its primary series, the same flagged classes and key slices
    sa, sb = _rows(tmp_path / "a" / "studies.csv"), _rows(tmp_path / "b" / "studies.csv")
    assert len(sa) == len(sb) == 1 and sa[0]["primary_series_uid"] == sb[0]["primary_series_uid"] == a[0]["series_uid"]
    for lab in LABELS:
        assert float(sa[0][lab]) == pytest.approx(max(float(r[lab]) for r in a), abs=1e-6)
        assert abs(float(sa[0][lab]) - float(sb[0][lab])) < 1e-5
    if all(abs(float(sa[0][lab]) - 0.5) > 1e-4 for lab in LABELS):   # no class on the threshold's edge
        assert sa[0]["flagged"] == sb[0]["flagged"] and sa[0]["key_slices"] == sb[0]["key_slices"]


def test_deploy_bad_model_dir_is_clear(tmp_path, fixture_series_dir, capsys):
    rc = load_tool("deploy/python/predict.py").main(
        ["--model_dir", str(tmp_path), "--input", fixture_series_dir, "--output", str(tmp_path / "o")])
    assert rc == 2


def test_onnx_export_matches_dygraph(exported):
    """Export.onnx: paddle2onnx (--optimize_tool None, nothing installed at run time) + onnxruntime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("paddle2onnx")
    from ppihd.engine.exporter import export_onnx
    from ppihd.engine.backends import OnnxBackend

    _, model, files, _ = exported
    d = os.path.dirname(files["model_file"])
    export_onnx(files["model_file"], files["params_file"], os.path.join(d, "inference.onnx"), 13)
    ob = OnnxBackend(d, threads=2)
    rng = np.random.default_rng(5)
    for s in (1, 7, 61):
        x = rng.random((s, 3, 64, 64), dtype=np.float32)
        np.testing.assert_allclose(ob.predict_series(x), DygraphBackend(model).predict_series(x), atol=1e-5)


def test_chunked_prediction(exported):
    """Infer.chunk_slices: a series no longer than a chunk is one pass; a longer one is the per-slice mean of
    the windows (0,6), (4,10), (6,12) for S=12, chunk 6, overlap 2."""
    _, model, _, _ = exported
    dy = DygraphBackend(model, batch_series=2)
    x = np.random.default_rng(7).random((12, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(dy.predict(x, 12, 2), dy.predict_series(x), atol=1e-6)
    w = [dy.predict_series(x[b:e]) for b, e in ((0, 6), (4, 10), (6, 12))]
    expect = np.concatenate([w[0][:4], (w[0][4:6] + w[1][:2]) / 2, (w[1][2:6] + w[2][:4]) / 2, w[2][4:]])
    np.testing.assert_allclose(dy.predict(x, 6, 2), expect, atol=1e-5)


@pytest.fixture(scope="module", params=[112, 100])
def exported_cpu(request, tmp_path_factory):
    """micro Swin with patch 4 / window 7 and plain LayerNorm init (the default zero res-post-norm init makes every
    block the identity): at 112² grids 28, 14, 7, 4 (window order in three stages, shifted windows, an odd merge),
    at 100² grids 25, 13, 7, 4 (padding and odd merges in row-major order, window order in stage 3)."""
    from ppihd.arch import build_model
    from ppihd.engine.exporter import export_paddle
    from ppihd.utils.config import load_config

    from infer_utils import DEMO_CFG

    size = request.param
    cfg = load_config(DEMO_CFG, [f"Data.image_size={size}", "Arch.backbone.window_size=7",
                                 "Arch.backbone.patch_size=4", "Arch.backbone.stem=patch",
                                 "Arch.backbone.stem_channels=null", "Arch.backbone.post_norm_init=one"])
    paddle.seed(7)
    model = build_model(cfg["Arch"])
    model.eval()
    d = str(tmp_path_factory.mktemp(f"export_{size}"))
    export_paddle(model, d, size)
    return model, d, size


@pytest.mark.parametrize("mkldnn", [True, False])
def test_exported_cpu_program_equals_the_plain_model(exported_cpu, mkldnn):
    """The exported program is traced from export_kernels.prepare_for_cpu's form of the model (split qkv): the
    plain model's probabilities to 1e-6 through Paddle Inference (and ONNX)."""
    model, d, size = exported_cpu
    x = np.random.default_rng(1).random((3, 3, size, size), dtype=np.float32)
    ref = DygraphBackend(model).predict_series(x)
    assert np.abs(ref - 0.5).max() > 0.05  # the blocks are not the identity
    pb = PaddleInferenceBackend(d, threads=2, mkldnn=mkldnn)
    np.testing.assert_allclose(pb.predict_series(x), ref, atol=1e-6, rtol=0)
    if mkldnn and PADDLE3:  # and through ONNX (paddle2onnx reads the Paddle 3 graph)
        pytest.importorskip("onnxruntime")
        pytest.importorskip("paddle2onnx")
        from ppihd.engine.exporter import export_onnx
        from ppihd.engine.backends import OnnxBackend

        files = find_model_files(d)
        export_onnx(files[0], files[1], os.path.join(d, "inference.onnx"), 13)
        np.testing.assert_allclose(OnnxBackend(d, threads=2).predict_series(x), ref, atol=1e-5, rtol=0)


def test_keep_freed_memory_is_set_once():
    from ppihd.engine.runtime import keep_freed_memory

    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() is first
    if os.uname().sysname == "Linux" and os.confstr("CS_GNU_LIBC_VERSION"):
        assert first  # glibc accepted M_MMAP_MAX / M_TRIM_THRESHOLD
