"""IHDNet and the sequence transformer: contract shapes, masking, switches, end-to-end gradients."""
import math
import os

import numpy as np
import paddle
import pytest

from ppihd.arch import IHDNet, SequenceTransformer, build_model, sinusoidal_encoding
from ppihd.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CFG = os.path.join(ROOT, "configs", "swin_b_seq.yaml")
IMG = 32  # tiny images keep the micro model fast


def micro_cfg(*overrides):
    cfg = load_config(PAPER_CFG,
                      ["Arch.backbone.variant=micro", "Arch.backbone.drop_path_rate=0.0", *overrides])
    return cfg["Arch"]


def make(*overrides, seed=0):
    paddle.seed(seed)
    return build_model(micro_cfg(*overrides))


def rand(*shape, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).random(shape).astype("float32"))


def test_contract_shapes_train_and_eval():
    m = make()
    assert isinstance(m, IHDNet)
    x = rand(2, 4, 3, IMG, IMG)
    mask = paddle.to_tensor([[True, True, True, False], [True] * 4])
    m.train()
    out = m(x, mask)
    assert set(out) == {"logits", "aux_logits"}
    assert list(out["logits"].shape) == [2, 4, 6] and list(out["aux_logits"].shape) == [2, 4, 6]
    m.eval()
    y = m(x, mask)
    assert isinstance(y, paddle.Tensor) and list(y.shape) == [2, 4, 6]
    assert list(m(x).shape) == [2, 4, 6]  # mask None


def test_switches():
    m = make("Arch.deep_supervision=false")
    m.train()
    out = m(rand(1, 3, 3, IMG, IMG))
    assert set(out) == {"logits"} and m.head1 is None
    m = make("Arch.inter_slice=false")
    assert m.sequence is None
    m.eval()
    x = rand(1, 3, 3, IMG, IMG)
    feats = m.backbone.forward_features(x.reshape([3, 3, IMG, IMG]))
    np.testing.assert_allclose(m(x).numpy()[0], m.head2(feats).numpy(), rtol=1e-5, atol=1e-5)
    m = make("Arch.backbone.post_norm=false")
    assert all(not b.post_norm for layer in m.backbone.layers for b in layer.blocks)
    m = make()
    assert all(b.post_norm for layer in m.backbone.layers for b in layer.blocks)


def test_padded_batch_equals_each_series_alone():
    m = make()
    m.eval()
    a, b = rand(1, 3, 3, IMG, IMG, seed=1), rand(1, 5, 3, IMG, IMG, seed=2)
    batch = paddle.concat([paddle.concat([a, rand(1, 2, 3, IMG, IMG, seed=3)], axis=1), b], axis=0)
    mask = paddle.to_tensor([[True] * 3 + [False] * 2, [True] * 5])
    y = m(batch, mask).numpy()
    np.testing.assert_allclose(y[0, :3], m(a).numpy()[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[1], m(b).numpy()[0], rtol=1e-5, atol=1e-5)
    # without the mask the padded slices take part, so the short series changes
    assert np.abs(m(batch).numpy()[0, :3] - y[0, :3]).max() > 1e-4


def test_masked_slices_pixels_change_nothing():
    m = make()
    m.eval()
    x = rand(2, 4, 3, IMG, IMG, seed=4)
    mask = paddle.to_tensor([[True, True, False, False], [True, True, True, False]])
    y1 = m(x, mask).numpy()
    x2 = x.numpy().copy()
    x2[0, 2:] = 1.0
    x2[1, 3] = np.random.default_rng(9).random((3, IMG, IMG))
    y2 = m(paddle.to_tensor(x2), mask).numpy()
    real = mask.numpy()
    np.testing.assert_array_equal(y1[real], y2[real])
    assert np.isfinite(y1).all()


def test_reference_mode_without_padding_mask_attends_padding():
    m = make("Arch.sequence.padding_mask=false")
    m.eval()
    a = rand(1, 3, 3, IMG, IMG, seed=1)
    batch = paddle.concat([a, rand(1, 2, 3, IMG, IMG, seed=3)], axis=1)
    y = m(batch, paddle.to_tensor([[True] * 3 + [False] * 2])).numpy()
    assert np.abs(y[0, :3] - m(a).numpy()[0]).max() > 1e-4


def test_gradients_reach_patch_embed_from_head2_alone():
    m = make()
    m.train()
    paddle.seed(7)
    out = m(rand(1, 3, 3, IMG, IMG), paddle.to_tensor([[True, True, False]]))
    out["logits"].sum().backward()  # head 2 only
    w = m.backbone.patch_embed.proj.weight
    g = w.grad.numpy().astype("float64")
    # the gradient equals a central finite difference of the same head-2 sum along its own direction (|g|)
    d = g / np.linalg.norm(g)
    w0, eps = w.numpy().copy(), 1e-2

    def head2_sum(sign):
        w.set_value((w0 + sign * eps * d).astype("float32"))
        paddle.seed(7)  # the same dropout masks in every forward
        with paddle.no_grad():
            return float(m(rand(1, 3, 3, IMG, IMG), paddle.to_tensor([[True, True, False]]))["logits"].sum())

    fd = (head2_sum(1) - head2_sum(-1)) / (2 * eps)
    w.set_value(w0)
    assert fd == pytest.approx(np.linalg.norm(g), rel=0.02)
    assert m.head1.weight.grad is None or float(paddle.abs(m.head1.weight.grad).sum()) == 0


@pytest.mark.parametrize("S", [1, 300])
def test_sequence_lengths(S):
    m = make()
    m.eval()
    y = m(rand(1, S, 3, 16, 16))
    assert list(y.shape) == [1, S, 6] and np.isfinite(y.numpy()).all()


def test_sinusoidal_encoding_closed_form():
    d = 16
    pos = paddle.to_tensor(np.array([[0, 1, 2, 59, 60, 299]], dtype="float32"))
    pe = sinusoidal_encoding(pos, d).numpy()[0]
    for r, p in enumerate([0, 1, 2, 59, 60, 299]):
        for i in range(d // 2):
            ang = p / 10000 ** (2 * i / d)
            assert math.isclose(pe[r, 2 * i], math.sin(ang), abs_tol=2e-4)
            assert math.isclose(pe[r, 2 * i + 1], math.cos(ang), abs_tol=2e-4)


def test_sequence_key_padding_mask_equals_truncated_sequence():
    paddle.seed(0)
    seq = SequenceTransformer(d_model=16, num_layers=2, num_heads=2, dim_feedforward=20)
    seq.eval()
    x = rand(1, 6, 16, seed=7)
    mask = paddle.to_tensor([[True] * 4 + [False] * 2])
    y = seq(x, mask).numpy()
    np.testing.assert_allclose(y[0, :4], seq(x[:, :4]).numpy()[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[0, 4:], 0.0)
    # padding in front is handled too: positions count only real slices
    xf = paddle.concat([rand(1, 2, 16, seed=8), x[:, :4]], axis=1)
    yf = seq(xf, paddle.to_tensor([[False] * 2 + [True] * 4])).numpy()
    np.testing.assert_allclose(yf[0, 2:], y[0, :4], rtol=1e-5, atol=1e-5)


def test_paper_config_builds_swin_b():
    cfg = load_config(PAPER_CFG)
    m = build_model(cfg["Arch"])
    bb = m.backbone
    assert (bb.embed_dim, bb.depths, bb.num_heads, bb.window_size) == (128, [2, 2, 18, 2], [4, 8, 16, 32], 7)
    assert m.num_features == 1024
    enc = m.sequence.encoder
    assert len(enc.layers) == 2
    lay = enc.layers[0]
    assert lay.self_attn.num_heads == 2 and lay.linear1.weight.shape == [1024, 200]
    assert not lay.normalize_before
    assert list(m.head1.weight.shape) == [1024, 6] and list(m.head2.weight.shape) == [1024, 6]


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(KeyError, match=r"Arch\.backbone\.variant 'huge' unknown; "
                                       r"expected one of \['base', 'micro', 'small', 'tiny'\]"):
        build_model(micro_cfg("Arch.backbone.variant=huge"))


# ---------------------------------------------------------------------------------------------- size report
def swin_params_closed_form(C0, depths, heads, window=7, ncls=0):
    """Parameter count from the layer shapes: LN(C) = 2C, Linear(a, b) = ab + b, table (2w-1)^2 x heads."""
    t = (2 * window - 1) ** 2
    n = C0 * 3 * 16 + C0 + 2 * C0  # patch conv + LN
    C = C0
    for i, (d, h) in enumerate(zip(depths, heads)):
        block = 2 * C + t * h + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
        n += d * block
        if i < len(depths) - 1:
            n += 2 * 4 * C + 4 * C * 2 * C
            C *= 2
    n += 2 * C
    return n + (C * ncls + ncls if ncls else 0)


def test_swin_b_size_matches_paper_numbers():
    from ppihd.arch.summary import model_summary, swin_macs

    expected = swin_params_closed_form(128, [2, 2, 18, 2], [4, 8, 16, 32])
    assert expected == 86_743_224
    s = model_summary(build_model(load_config(PAPER_CFG)["Arch"]), 224, 224)
    assert s["params"]["backbone"] == expected  # ~86.7 M without a classifier
    assert s["backbone_params_with_imagenet_head"] == swin_params_closed_form(128, [2, 2, 18, 2], [4, 8, 16, 32],
                                                                              ncls=1000)
    assert round(s["backbone_params_with_imagenet_head"] / 1e6, 1) == 87.8
    assert s["params"]["head1"] == s["params"]["head2"] == 1024 * 6 + 6
    # sequence: 2 x (q,k,v,out 4(d^2+d) + FF d*200+200 + 200*d+d + two LNs 4d)
    assert s["params"]["sequence"] == 2 * (4 * (1024 ** 2 + 1024) + 1024 * 200 + 200 + 200 * 1024 + 1024 + 4 * 1024)
    # MACs at 224: by hand, stage by stage (N tokens, C channels, 49 tokens per window):
    # 12 N C^2 + 2 * 49 N C per block; merges N/4 * 4C * 2C; patch conv 56^2 * 128 * 48
    by_hand = (56 * 56 * 128 * 48
               + 2 * (12 * 3136 * 128 ** 2 + 2 * 49 * 3136 * 128) + 784 * 512 * 256
               + 2 * (12 * 784 * 256 ** 2 + 2 * 49 * 784 * 256) + 196 * 1024 * 512
               + 18 * (12 * 196 * 512 ** 2 + 2 * 49 * 196 * 512) + 49 * 2048 * 1024
               + 2 * (12 * 49 * 1024 ** 2 + 2 * 49 * 49 * 1024))
    assert by_hand == 15_429_922_816
    assert s["macs_per_slice"]["backbone"] == by_hand  # ~15.4 GMACs
    assert swin_macs(128, [2, 2, 18, 2], [4, 8, 16, 32], 7, 224, 224)["total"] == by_hand


def test_tiny_macs_closed_form_and_hooks():
    from ppihd.arch.backbone.swin import SwinTransformer
    from ppihd.arch.summary import backbone_macs, measure_linear_macs

    # embed 8, depths [2, 2], window 2, 32x32 image: 8x8 then 4x4 tokens, no padding
    bb = SwinTransformer("micro", embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=2)
    m = backbone_macs(bb, 32, 32)
    closed = (64 * 8 * 48 + 2 * (12 * 64 * 8 ** 2 + 2 * 4 * 64 * 8) + 16 * 32 * 16
              + 2 * (12 * 16 * 16 ** 2 + 2 * 4 * 16 * 16))
    assert m["total"] == closed
    assert measure_linear_macs(bb, paddle.zeros([1, 3, 32, 32])) == closed - m["attn_qk"] - m["attn_v"]
    # padded sizes: the analytic count follows what is computed
    mic = SwinTransformer("micro")
    m = backbone_macs(mic, 100, 100)
    assert measure_linear_macs(mic, paddle.zeros([1, 3, 100, 100])) == m["total"] - m["attn_qk"] - m["attn_v"]


def test_model_summary_tool_runs(capsys):
    from tools.model_summary import main

    assert main(["-c", PAPER_CFG, "-o", "Arch.backbone.variant=micro", "-o", "Data.image_size=64",
                 "-o", "Global.num_threads=2", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "backbone" in out and "(match)" in out


def test_to_static_with_dynamic_batch_and_slices_matches_dygraph():
    from paddle.static import InputSpec

    m = make()
    m.eval()
    x = rand(2, 3, 3, IMG, IMG, seed=5)
    ref = m(x).numpy()
    spec = [InputSpec([None, None, 3, IMG, IMG], "float32")]
    try:
        st = paddle.jit.to_static(m, input_spec=spec, full_graph=True)
    except TypeError:  # Paddle 2.6 has no full_graph
        st = paddle.jit.to_static(m, input_spec=spec)
    np.testing.assert_allclose(st(x).numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st(x[:1, :2]).numpy(), m(x[:1, :2]).numpy(), rtol=1e-5, atol=1e-5)


def test_bad_input_shapes_are_clear_errors():
    m = make()
    m.eval()
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        m(rand(2, 3, IMG, IMG))
    with pytest.raises(ValueError, match=r"IHDNet: mask shape \[1, 2\] does not match images \[B, S\] = \[1, 3\]"):
        m(rand(1, 3, 3, IMG, IMG), paddle.to_tensor([[True, False]]))


def test_zero_head_init_with_prior_bias_predicts_the_bias_everywhere():
    bias = [-3.0, -2.5, -3.5, -2.0, -1.5, -1.0]
    m = make("Arch.head_init=zero", f"Arch.head_bias={bias}")
    m.eval()
    out = m(rand(2, 3, 3, IMG, IMG), paddle.to_tensor([[True, True, True], [True, False, False]])).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(np.array(bias, "float32"), out.shape), atol=1e-6)
    m.train()
    aux = m(rand(1, 2, 3, IMG, IMG, seed=1))["aux_logits"].numpy()
    np.testing.assert_allclose(aux, np.broadcast_to(np.array(bias, "float32"), aux.shape), atol=1e-6)
    d = make()  # default: the Linear init, heads depend on the input
    assert float(paddle.abs(d.head2.weight).max()) > 0 and float(paddle.abs(d.head2.bias).max()) == 0
    with pytest.raises(ValueError, match=r"Arch\.head_bias has 2 values, expected num_classes = 6"):
        make("Arch.head_bias=[0.0, 1.0]")


def test_reference_init_distributions():
    from scipy.stats import truncnorm

    m = make("Arch.init=reference", seed=3)
    lin = [l for l in m.sequence.encoder.sublayers() if isinstance(l, paddle.nn.Linear)]
    assert len(lin) == 2 * 6                     # per layer: q, k, v, out projections + the 2 feed-forward layers
    w = np.concatenate([l.weight.numpy().ravel() for l in lin])
    assert np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.0999
    assert abs(w.std() - 0.2 / math.sqrt(12)) < 0.002 and abs(w.mean()) < 0.001     # U(-a, a): sd a / sqrt(3)
    assert all(np.all(l.bias.numpy() == 0) for l in lin)
    norms = [l for l in m.sequence.encoder.sublayers() if isinstance(l, paddle.nn.LayerNorm)]
    assert norms and all(np.all(n.weight.numpy() == 1) and np.all(n.bias.numpy() == 0) for n in norms)
    h1 = m.head1.weight.numpy().ravel()          # micro: 6 x D weights
    assert np.abs(h1).max() <= 0.04 + 1e-7 and np.all(m.head1.bias.numpy() == 0)
    sd = 0.02 * truncnorm(-2, 2).std()           # 0.01759: a normal cut at +-2 sd
    assert abs(h1.std() - sd) < 0.15 * sd
    # head 2 keeps Paddle's default (Xavier uniform: bound sqrt(6 / (fan_in + fan_out)), bias 0) in both modes
    d = m.num_features
    h2 = m.head2.weight.numpy()
    assert np.abs(h2).max() <= math.sqrt(6 / (d + 6)) and np.all(m.head2.bias.numpy() == 0)
    # the default (paddle) differs: Xavier-uniform encoder weights, bound sqrt(6 / (fan_in + fan_out)) per layer
    p = make(seed=3)
    q = [l for l in p.sequence.encoder.sublayers() if isinstance(l, paddle.nn.Linear)][0].weight.numpy()
    assert np.abs(q).max() <= math.sqrt(6 / (2 * d)) and np.abs(q).max() > 0.99 * math.sqrt(6 / (2 * d))
    with pytest.raises(ValueError, match=r"Arch\.init 'xavier' unknown; expected paddle \| reference"):
        make("Arch.init=xavier")
