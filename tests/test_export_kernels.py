"""ppihd.engine.export_kernels: the reformulations the CPU deployment traces compute the plain model's function."""
import numpy as np
import paddle
import pytest

from ppihd.arch.backbone.swin import SwinTransformer, WindowAttention
from ppihd.arch.backbone.window_order import WindowOrder
from ppihd.engine.export_kernels import OneHotWindowOrder, SplitQkvAttention, prepare_for_cpu

from test_swin import numpy_swin_features, params, randomize


def micro_ihdnet(size_cfg):
    from ppihd.arch import build_model
    from ppihd.utils.config import load_config

    from infer_utils import DEMO_CFG

    cfg = load_config(DEMO_CFG, ["Arch.backbone.window_size=7", "Arch.backbone.patch_size=4",
                                 "Arch.backbone.stem=patch", "Arch.backbone.stem_channels=null",
                                 "Arch.backbone.post_norm_init=one", *size_cfg])
    paddle.seed(5)
    return build_model(cfg["Arch"])


@pytest.mark.parametrize("size", [112, 100])
def test_cpu_forms_equal_the_plain_model_and_leave_it_unchanged(size):
    """Probabilities of the fp32 form (split qkv) to 1e-6, of the bf16 form (also key-major scores, one-hot
    permutations) to 1e-5, at a size with window order in three stages (112²) and one with padding and odd
    merges (100²)."""
    model = micro_ihdnet([])
    model.train()
    x = paddle.to_tensor(np.random.default_rng(0).random((1, 3, 3, size, size), dtype=np.float32))
    fp32, bf16 = prepare_for_cpu(model, "fp32"), prepare_for_cpu(model, "bf16")
    assert model.training and not fp32.training  # the copy is in eval mode, the model untouched
    assert all(type(m) is WindowAttention for m in model.sublayers() if isinstance(m, WindowAttention))
    assert all(type(m) is SplitQkvAttention for m in fp32.sublayers() if isinstance(m, WindowAttention))
    model.eval()
    prob = lambda net: paddle.nn.functional.sigmoid(net(x)).numpy()  # noqa: E731
    with paddle.no_grad():
        ref = prob(model)
        assert np.abs(ref - 0.5).max() > 0.1
        np.testing.assert_allclose(prob(fp32), ref, atol=1e-6, rtol=0)
        np.testing.assert_allclose(prob(bf16), ref, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(prob(model), ref)
    for (k, a), (k2, b) in zip(model.state_dict().items(), bf16.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("post_norm", [False, True])
def test_bf16_form_matches_independent_numpy_forward(post_norm, monkeypatch):
    """The numpy reference of the plain model; the permutations of grids up to 256 tokens are one-hot
    products there, not gathers."""
    embed, depths, heads, window = 8, [2, 2, 2], [1, 2, 2], 2
    paddle.seed(0)
    m = SwinTransformer("micro", embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                        post_norm=post_norm)
    randomize(m, seed=11, scale=0.2)
    x = np.random.default_rng(4).random((1, 3, 64, 64)).astype("float32")  # maps 16x16, 8x8, 4x4
    exp = numpy_swin_features(params(m), x[0].astype(np.float64), embed, depths, heads, window, post_norm)
    gathered = []
    real_gather = paddle.gather
    monkeypatch.setattr(paddle, "gather", lambda t, i, axis=None: gathered.append(int(i.shape[0])) or
                        real_gather(t, i, axis=axis))
    cpu = prepare_for_cpu(m, "bf16")
    assert all(a.key_major for a in cpu.sublayers() if isinstance(a, SplitQkvAttention))
    got = cpu.forward_features(paddle.to_tensor(x)).numpy()[0]
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
    # stage-1 shift there and back (256 tokens) and stage 2 (64): one-hot products; merges: transposes
    assert gathered == []
    gathered.clear()
    m.eval()
    m.forward_features(paddle.to_tensor(x))
    assert sorted(gathered) == [16, 16, 64, 64, 256, 256]  # the plain model gathers (3 stages x there and back)


def test_onehot_gather_is_exact_and_only_for_permutations():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 12, 5)) * 10.0 ** rng.integers(-20, 20, (3, 12, 5))).astype("float32")
    order = OneHotWindowOrder(3, 4, 1)
    perm = rng.permutation(12)
    np.testing.assert_array_equal(order.gather(paddle.to_tensor(x), paddle.to_tensor(perm)).numpy(), x[:, perm])
    sub = np.array([3, 3, 0, 11])  # not a permutation of the 12 tokens: the plain gather
    np.testing.assert_array_equal(order.gather(paddle.to_tensor(x), paddle.to_tensor(sub)).numpy(), x[:, sub])
    assert isinstance(order.next(), OneHotWindowOrder) and not isinstance(WindowOrder(2, 2, 1).next(),
                                                                          OneHotWindowOrder)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision 'int8' unknown; expected one of fp32 | bf16"):
        prepare_for_cpu(SwinTransformer("micro"), "int8")
