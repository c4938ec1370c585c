"""Paddle 2.6 smoke subset (`make test-paddle26` runs it in .venv-paddle26 with paddlepaddle==2.6.2 and numpy<2,
together with tests/test_export.py and tests/test_infer.py). Also passes on Paddle 3.

Model forward in both modes, export (2.6 writes inference.pdmodel), the predictor on the exported model.
"""
import os
import sys

import numpy as np
import paddle
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infer_utils import tiny_model  # noqa: E402


def test_versions_in_this_venv():
    major = int(paddle.__version__.split(".")[0])
    if major == 2:  # the 2.6 venv really is a 2.6 / numpy 1 environment
        assert paddle.__version__.startswith("2.6") and np.__version__.startswith("1.")


def test_model_forward_train_and_eval():
    cfg, model = tiny_model(64, seed=0)
    x = paddle.to_tensor(np.random.default_rng(0).random((2, 5, 3, 64, 64), dtype=np.float32))
    mask = paddle.to_tensor(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool))
    model.train()
    out = model(x, mask)
    assert sorted(out) == ["aux_logits", "logits"] and out["logits"].shape == [2, 5, 6]
    model.eval()
    with paddle.no_grad():
        full = model(x, mask).numpy()
        alone = model(x[1:2, :3], None).numpy()
    assert full.shape == (2, 5, 6)
    np.testing.assert_allclose(full[1, :3], alone[0], atol=1e-5)  # padding does not change real slices


def test_export_and_predict(tmp_path):
    from ppihd.engine.exporter import export_model
    from ppihd.engine.backends import DygraphBackend, PaddleInferenceBackend

    cfg, model = tiny_model(64, seed=1)
    files = export_model(model, cfg, str(tmp_path))
    expected = "inference.pdmodel" if paddle.__version__.startswith("2.") else "inference.json"
    assert os.path.basename(files["model_file"]) == expected
    x = np.random.default_rng(2).random((7, 3, 64, 64), dtype=np.float32)
    a = DygraphBackend(model).predict_series(x)
    for mkldnn in (True, False):
        b = PaddleInferenceBackend(str(tmp_path), threads=2, mkldnn=mkldnn).predict_series(x)
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_bf16_programs_export_and_compose_in_fp32(tmp_path):
    """export_paddle_bf16 works on both Paddle versions; the two programs run in fp32 give the model's numbers.
    precision bf16 itself is Paddle 3 only: on 2.x it is a clear error (2.6.2 has no dequantize kernel)."""
    from paddle import inference as pinf

    from ppihd.engine.exporter import BF16_BODY, BF16_STEM, export_paddle_bf16
    from ppihd.engine.backends import DygraphBackend, PaddleInferenceBackend, find_model_files

    _, model = tiny_model(64, seed=2)
    export_paddle_bf16(model, str(tmp_path), 64)
    run = PaddleInferenceBackend.run
    progs = [pinf.create_predictor(PaddleInferenceBackend.make_config(pinf, find_model_files(str(tmp_path), p), "cpu",
                                                                      2, True, False)) for p in (BF16_STEM, BF16_BODY)]
    x = np.random.default_rng(4).random((3, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(run(progs[1], run(progs[0], x[None]))[0], DygraphBackend(model).predict_series(x),
                               atol=1e-5, rtol=0)
    if paddle.__version__.startswith("2."):
        with pytest.raises(RuntimeError, match="needs paddlepaddle 3.x"):
            PaddleInferenceBackend(str(tmp_path), precision="bf16")
