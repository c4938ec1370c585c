"""Demo-only Swin options: ``Arch.backbone.pool`` and ``Arch.backbone.stem_channels``."""
import numpy as np
import paddle
import pytest

from ppihd.arch.backbone.swin import SwinTransformer


def _micro(**kw):
    paddle.seed(3)
    return SwinTransformer(variant="micro", patch_size=8, window_size=4, drop_path_rate=0.0, **kw)


def test_max_pool_is_the_tokenwise_max_of_the_final_norm():
    m = _micro(pool="max")
    m.eval()
    seen = {}

    def keep(layer, inp, out):
        seen["tokens"] = out.numpy()            # returns None: the output is left unchanged

    m.norm.register_forward_post_hook(keep)
    x = paddle.to_tensor(np.random.default_rng(0).random((2, 3, 64, 72), dtype=np.float32))
    f = m.forward_features(x).numpy()
    tokens = seen["tokens"]                     # [2, T, 256] after the final LayerNorm
    assert tokens.shape[0] == 2 and tokens.shape[2] == 256
    np.testing.assert_allclose(f, tokens.max(axis=1), rtol=0, atol=0)
    # same weights, avg pool: the mean of the same tokens, and never above the max
    a = _micro(pool="avg")
    a.set_state_dict(m.state_dict())
    a.eval()
    fa = a.forward_features(x).numpy()
    np.testing.assert_allclose(fa, tokens.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert (fa <= f + 1e-6).all()


def test_stem_channels_set_the_conv_widths():
    m = _micro(stem="conv", stem_channels=[16, 24, 40])
    convs = [p.shape for n, p in m.patch_embed.proj.named_parameters() if n.endswith("weight") and len(p.shape) == 4]
    assert convs == [[16, 3, 3, 3], [24, 16, 3, 3], [40, 24, 3, 3], [32, 40, 1, 1]]
    out = m.forward_features(paddle.rand([1, 3, 64, 64]))
    assert out.shape == [1, 256]


@pytest.mark.parametrize("kw, msg", [
    (dict(pool="sum"), "pool 'sum'"),
    (dict(stem="conv", stem_channels=[16, 24]), "3 positive widths"),
    (dict(stem_channels=[16, 24, 40]), "needs Arch.backbone.stem: conv"),
])
def test_bad_options_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _micro(**kw)
