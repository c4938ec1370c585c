"""The bf16 deployment: two exported programs (fp32 patch embedding, oneDNN bf16 rest) behind
``PaddleInferenceBackend(precision="bf16")`` and ``deploy/python/predict.py --precision bf16``.

micro Swin at 112² with plain LayerNorm init (the default zero res-post-norm init makes every block the identity,
which would hide the attention), window token layout in three stages, shifted windows.
"""
import csv
import os

import numpy as np
import paddle
import pytest

from ppihd import LABELS
from ppihd.engine.exporter import BF16_BODY, BF16_STEM, export_model, export_paddle_bf16, read_inference_yml
from ppihd.engine.backends import DygraphBackend, PaddleInferenceBackend, find_model_files
from ppihd.engine.runtime import cpu_supports_bf16

from infer_utils import DEMO_CFG, load_tool

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from ppihd.arch import build_model
    from ppihd.utils.config import load_config

    cfg = load_config(DEMO_CFG, ["Data.image_size=112", "Arch.backbone.window_size=7",
                                 "Arch.backbone.patch_size=4", "Arch.backbone.stem=patch",
                                 "Arch.backbone.stem_channels=null", "Arch.backbone.post_norm_init=one",
                                 "Export.bf16=True", "Global.num_threads=2"])
    paddle.seed(11)
    model = build_model(cfg["Arch"])
    model.eval()
    out = str(tmp_path_factory.mktemp("bf16"))
    ckpt = os.path.join(out, "micro.pdparams")
    paddle.save(model.state_dict(), ckpt)
    cfg["Global"]["pretrained_model"] = ckpt
    files = export_model(model, cfg, os.path.join(out, "inference"))
    x = np.random.default_rng(2).random((5, 3, 112, 112), dtype=np.float32)
    ref = DygraphBackend(model).predict_series(x)
    assert np.abs(ref - 0.5).max() > 0.05  # the blocks are not the identity
    return cfg, model, files, os.path.dirname(files["model_file"]), x, ref


def test_patch_embed_then_forward_tokens_is_the_eval_forward(split):
    """The two programs' split (stem: patch_embed; body: forward_tokens + series_logits) composes to the model."""
    _, model, _, _, x, _ = split
    bb = model.backbone
    with paddle.no_grad():
        t = paddle.to_tensor(x)
        tokens, h, w = bb.patch_embed(t)
        assert (h, w) == (28, 28) and tokens.shape == [5, 28 * 28, bb.embed_dim]
        feats = bb.forward_tokens(tokens, h, w)
        np.testing.assert_array_equal(feats.numpy(), bb.forward_features(t).numpy())
        np.testing.assert_array_equal(model.series_logits(feats.reshape([1, 5, -1])).numpy(),
                                      model(t[None], None).numpy())


def test_export_writes_both_programs_and_lists_them(split):
    """Each program loads on its own and maps its input to the expected shape (stem: images -> [S, tokens, C];
    body: tokens -> [1, S, classes])."""
    from paddle import inference as pinf

    _, _, files, d, x, _ = split
    shapes = {}
    inp = x[None]
    for prefix in (BF16_STEM, BF16_BODY):
        pred = pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(d, prefix), "cpu", 2,
                                                                        True, False))
        inp = PaddleInferenceBackend.run(pred, inp)
        shapes[prefix] = inp.shape
    assert shapes == {BF16_STEM: (5, 28 * 28, 32), BF16_BODY: (1, 5, 6)}
    assert files["stem_model_file"] == find_model_files(d, BF16_STEM)[0]
    meta = read_inference_yml(d)
    assert meta["files"]["body_model_file"] == os.path.basename(files["body_model_file"])


def test_the_two_programs_in_fp32_compose_to_the_model(split):
    """stem (images -> tokens) then body (tokens -> probabilities), both fp32: the dygraph numbers."""
    from paddle import inference as pinf

    _, _, _, d, x, ref = split
    run = PaddleInferenceBackend.run
    stem = pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(d, BF16_STEM), "cpu", 2,
                                                                    True, False))
    body = pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(d, BF16_BODY), "cpu", 2,
                                                                    True, False))
    tokens = run(stem, x[None])
    assert tokens.shape == (5, 28 * 28, 32)
    np.testing.assert_allclose(run(body, tokens)[0], ref, atol=1e-5, rtol=0)


@needs_bf16
def test_bf16_backend_is_bf16_and_close_to_fp32(split):
    _, _, _, d, x, ref = split
    be = PaddleInferenceBackend(d, "cpu", 2, precision="bf16")
    assert be.precision == "bf16" and be.stem is not None
    p = be.predict_series(x)
    assert p.shape == (5, 6)
    dp = np.abs(p - ref).max()
    assert 0 < dp < 0.02, dp  # not bit-equal (bf16 really ran), but close


def test_precision_errors_name_the_problem(split, tmp_path):
    _, _, _, d, _, _ = split
    with pytest.raises(ValueError, match=r"^precision 'int8' unknown; expected one of fp32 \| fp16 \| bf16$"):
        PaddleInferenceBackend(d, precision="int8")
    with pytest.raises(ValueError, match=r"^precision bf16 runs through oneDNN; it cannot be combined with --no-mkldnn$"):
        PaddleInferenceBackend(d, precision="bf16", mkldnn=False)
    with pytest.raises(ValueError, match=r"^precision bf16 is the CPU path \(oneDNN on AVX512-BF16/AMX\); use --device cpu, or fp32 / fp16 on GPU$"):
        PaddleInferenceBackend(d, device="gpu", precision="bf16")
    if cpu_supports_bf16():  # an export without the two programs: the error says how to write them
        plain = tmp_path / "plain"
        plain.mkdir()
        for name in os.listdir(d):
            if name.startswith("inference."):
                os.link(os.path.join(d, name), plain / name)
        with pytest.raises(FileNotFoundError, match="inference_stem.*Export.bf16=True"):
            PaddleInferenceBackend(str(plain), precision="bf16")


@needs_bf16
def test_deploy_predict_precision_bf16(split, fixture_series_dir, tmp_path):
    _, _, _, d, _, _ = split
    first = sorted(os.path.join(fixture_series_dir, n) for n in os.listdir(fixture_series_dir)
                   if n.endswith(".dcm"))[:6]
    predict = load_tool("deploy/python/predict.py").main
    common = ["--model_dir", d, "--input", *first, "--threads", "2", "--no-progress", "--no-plots"]
    assert predict(common + ["--output", str(tmp_path / "fp32")]) == 0
    assert predict(common + ["--output", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert predict(common + ["--output", str(tmp_path / "x"), "--precision", "bf16", "--backend", "onnxruntime"]) == 2

    def rows(name):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            return list(csv.DictReader(f))

    a, b = rows("fp32"), rows("bf16")
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert ra["sop_uid"] == rb["sop_uid"]
        assert max(abs(float(ra[k]) - float(rb[k])) for k in LABELS) < 0.02


def test_export_paddle_bf16_rejects_nothing_silently(split, tmp_path):
    """export_paddle_bf16 on its own (the benchmarks use it) writes exactly the two programs."""
    _, model, _, _, _, _ = split
    files = export_paddle_bf16(model, str(tmp_path), 112)
    assert sorted(files) == ["body_model_file", "body_params_file", "stem_model_file", "stem_params_file"]
    assert sorted(n.split(".")[0] for n in os.listdir(tmp_path)) == [BF16_BODY] * 2 + [BF16_STEM] * 2


def test_bf16_kernels_body_equals_the_plain_body(split, tmp_path):
    """Export.bf16_kernels (the default) traces the body in prepare_for_cpu's bf16 form (key-major scores, one-hot
    permutations of grids <= 256 tokens: here stage 2, 14x14); bf16_kernels=False its fp32 form. Same
    probabilities: to 1e-5 in fp32; in bf16 both within the bound of the plain model's fp32 numbers."""
    from paddle import inference as pinf

    _, model, _, d, x, ref = split
    plain = str(tmp_path / "plain")
    export_paddle_bf16(model, plain, 112, bf16_kernels=False)

    def ops(directory, name):
        with open(find_model_files(directory, BF16_BODY)[0], "rb") as f:
            return f.read().count(name)

    assert ops(d, b"one_hot") > 0 and ops(plain, b"one_hot") == 0
    assert ops(d, b"gather") < ops(plain, b"gather")
    run = PaddleInferenceBackend.run
    stem = pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(d, BF16_STEM), "cpu", 2,
                                                                    True, False))
    tokens = run(stem, x[None])
    for directory in (d, plain):
        body = pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(directory, BF16_BODY),
                                                                    "cpu", 2, True, False))
        np.testing.assert_allclose(run(body, tokens)[0], ref, atol=1e-5, rtol=0)
    if cpu_supports_bf16():
        for directory in (d, plain):
            body = pinf.create_predictor(PaddleInferenceBackend.make_config(
                pinf, find_model_files(directory, BF16_BODY), "cpu", 2, True, True))
            assert np.abs(run(body, tokens)[0] - ref).max() < 0.02
