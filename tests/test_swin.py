"""Swin backbone: relative positions, shifted-window masks, attention and post/pre-norm against numpy."""
import math

import numpy as np
import paddle
import pytest

from ppihd.arch.backbone.swin import (MASK_VALUE, PatchMerging, SwinTransformer, SwinTransformerBlock,
                                      merge_index, relative_position_index, shift_index, spatial_to_window_index,
                                      uses_window_order, valid_slots, window_attention_mask, window_partition,
                                      window_slots, window_to_spatial_index)


# ---------------------------------------------------------------------------------------------- numpy helpers
def ln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def params(layer):
    return {k: v.numpy().astype(np.float64) for k, v in layer.state_dict().items()}


def brute_force_attention(x, p, H, W, window, shift, heads):
    """Window attention for every real token by definition: a token attends to the real tokens that share
    its window in the cyclically shifted (padded) frame and did not wrap differently. x [H*W, C]."""
    C = x.shape[-1]
    d = C // heads
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    qkv = x @ p["attn.qkv.weight"] + p["attn.qkv.bias"]
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    table = p["attn.relative_position_bias_table"]
    out = np.zeros_like(x)
    tokens = [(r, c) for r in range(H) for c in range(W)]

    def shifted(r, c):
        return (r - shift) % Hp, (c - shift) % Wp

    for a, (r, c) in enumerate(tokens):
        i, j = shifted(r, c)
        keys, bias_rows = [], []
        for b, (r2, c2) in enumerate(tokens):
            i2, j2 = shifted(r2, c2)
            same_window = (i // window, j // window) == (i2 // window, j2 // window)
            same_wrap = (i >= Hp - shift) == (i2 >= Hp - shift) and (j >= Wp - shift) == (j2 >= Wp - shift)
            if shift == 0:
                same_wrap = True
            if same_window and same_wrap:
                keys.append(b)
                bias_rows.append((i - i2 + window - 1) * (2 * window - 1) + (j - j2 + window - 1))
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = (q[a, sl] * d ** -0.5) @ k[keys, sl].T + table[bias_rows, h]
            out[a, sl] = softmax(logits) @ v[keys, sl]
    return out @ p["attn.proj.weight"] + p["attn.proj.bias"]


def randomize(layer, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, prm in layer.named_parameters():
        prm.set_value((rng.standard_normal(prm.shape) * scale).astype("float32"))


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("w", [2, 3, 7])
def test_relative_position_index_brute_force(w):
    idx = relative_position_index(w)
    assert idx.shape == (w * w, w * w)
    for a in range(w * w):
        for b in range(w * w):
            (r1, c1), (r2, c2) = divmod(a, w), divmod(b, w)
            assert idx[a, b] == (r1 - r2 + w - 1) * (2 * w - 1) + (c1 - c2 + w - 1)
    assert idx.min() == 0 and idx.max() == (2 * w - 1) ** 2 - 1
    assert idx[0, 0] == (2 * w - 1) ** 2 // 2  # zero offset sits in the middle of the table


@pytest.mark.parametrize("H,W,w,s", [(56, 56, 7, 3), (14, 14, 7, 3), (8, 8, 4, 2), (5, 7, 3, 1), (10, 6, 4, 2),
                                     (9, 9, 7, 0), (7, 7, 7, 0)])
def test_window_mask_matches_brute_force_regions(H, W, w, s):
    mask = window_attention_mask(H, W, w, s)
    Hp, Wp = -(-H // w) * w, -(-W // w) * w
    if s == 0 and (Hp, Wp) == (H, W):
        assert mask is None
        return
    # brute force: region id of each position of the shifted padded grid = (wrapped rows?, wrapped cols?),
    # validity = the original position it came from lies inside the H x W map
    nwh, nww = Hp // w, Wp // w
    assert mask.shape == (nwh * nww, w * w, w * w)
    for wi in range(nwh):
        for wj in range(nww):
            cells = [(wi * w + a, wj * w + b) for a in range(w) for b in range(w)]
            region = [((i + s >= Hp) if s else False, (j + s >= Wp) if s else False) for i, j in cells]
            valid = [((i + s) % Hp) < H and ((j + s) % Wp) < W for i, j in cells]
            exp = np.zeros((w * w, w * w))
            for p in range(w * w):
                for q in range(w * w):
                    exp[p, q] = (MASK_VALUE if region[p] != region[q] else 0) + (0 if valid[q] else MASK_VALUE)
            np.testing.assert_array_equal(mask[wi * nww + wj], exp)


def test_mask_56_equals_official_three_slices_count():
    # at 56x56 / window 7 / shift 3 only the last row and column of windows are split (official Swin)
    m = window_attention_mask(56, 56, 7, 3)
    split = [(m[k] != 0).any() for k in range(64)]
    assert sum(split) == 8 + 8 - 1
    assert not (m == 2 * MASK_VALUE).any()  # no padding at 56


@pytest.mark.parametrize("H,W,w,s", [(4, 4, 2, 1), (5, 5, 3, 1), (3, 5, 2, 1), (2, 2, 3, 1)])
def test_block_attention_matches_brute_force(H, W, w, s):
    paddle.seed(0)
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=w, shift_size=s, drop_path=0.0)
    randomize(blk, seed=H * 10 + W)
    blk.eval()
    x = np.random.default_rng(1).standard_normal((1, H * W, 8)).astype("float32")
    got = blk._attention(paddle.to_tensor(x), H, W).numpy()[0]
    shift = blk.effective_shift(H, W)
    assert shift == (0 if min(H, W) <= w else s)
    exp = brute_force_attention(x[0].astype(np.float64), params(blk), H, W, w, shift, 2)
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("post_norm", [True, False])
def test_post_norm_and_pre_norm_differ_only_in_norm_placement(post_norm):
    paddle.seed(0)
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=2, shift_size=0, post_norm=post_norm)
    randomize(blk, seed=3)
    blk.eval()
    H = W = 2
    x = np.random.default_rng(2).standard_normal((1, 4, 8)).astype("float32")
    p = params(blk)
    x64 = x[0].astype(np.float64)

    def attn(t):
        return brute_force_attention(t, p, H, W, 2, 0, 2)

    def mlp(t):
        return gelu(t @ p["mlp.fc1.weight"] + p["mlp.fc1.bias"]) @ p["mlp.fc2.weight"] + p["mlp.fc2.bias"]

    n1 = lambda t: ln(t, p["norm1.weight"], p["norm1.bias"])  # noqa: E731
    n2 = lambda t: ln(t, p["norm2.weight"], p["norm2.bias"])  # noqa: E731
    if post_norm:  # x = x + LN(attn(x)); x = x + LN(mlp(x))
        y = x64 + n1(attn(x64))
        y = y + n2(mlp(y))
    else:          # x = x + attn(LN(x)); x = x + mlp(LN(x))
        y = x64 + attn(n1(x64))
        y = y + mlp(n2(y))
    got = blk(paddle.to_tensor(x), H, W).numpy()[0]
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_post_and_pre_norm_share_parameter_names_and_shapes():
    a = SwinTransformer("micro", post_norm=True).state_dict()
    b = SwinTransformer("micro", post_norm=False).state_dict()
    assert {k: list(v.shape) for k, v in a.items()} == {k: list(v.shape) for k, v in b.items()}


def test_patch_merging_order_and_odd_padding():
    pm = PatchMerging(dim=1)
    # identity-like: reduction picks channel j of the 4C concat into output j (2C = 2 outputs: x0, x1)
    pm.norm.weight.set_value(np.ones(4, "float32"))
    pm.norm.bias.set_value(np.zeros(4, "float32"))
    red = np.zeros((4, 2), "float32")
    red[1, 0] = 1.0  # x1 = x[1::2, 0::2]
    red[2, 1] = 1.0  # x2 = x[0::2, 1::2]
    pm.reduction.weight.set_value(red)
    img = np.arange(9, dtype="float32").reshape(3, 3)  # odd size -> zero padded to 4x4
    y, h, w = pm(paddle.to_tensor(img.reshape(1, 9, 1)), 3, 3)
    assert (h, w) == (2, 2)
    pad = np.zeros((4, 4), "float32")
    pad[:3, :3] = img
    quads = np.stack([pad[0::2, 0::2], pad[1::2, 0::2], pad[0::2, 1::2], pad[1::2, 1::2]], -1).reshape(4, 4)
    normed = ln(quads.astype(np.float64), 1.0, 0.0)
    np.testing.assert_allclose(y.numpy()[0], normed[:, [1, 2]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (100, 100), (112, 112), (64, 96), (30, 45)])
def test_any_image_size(size):
    paddle.seed(0)
    m = SwinTransformer("micro", drop_path_rate=0.0)
    m.eval()
    y = m.forward_features(paddle.rand([2, 3, *size]))
    assert list(y.shape) == [2, m.num_features] == [2, 256]
    assert np.isfinite(y.numpy()).all()


def test_variants_and_drop_path_schedule():
    m = SwinTransformer("base", drop_path_rate=0.5)
    assert m.num_features == 1024 and m.embed_dim == 128
    assert [len(layer.blocks) for layer in m.layers] == [2, 2, 18, 2]
    assert [layer.blocks[0].attn.num_heads for layer in m.layers] == [4, 8, 16, 32]
    rates = [b.drop_path.drop_prob for layer in m.layers for b in layer.blocks]
    np.testing.assert_allclose(rates, np.arange(24) * 0.5 / 23)
    # shift: odd blocks shift by 3; at 224 the 7x7 last stage has no shift
    assert m.layers[2].blocks[1].shift_size == 3
    assert m.stage_shapes(224, 224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert m.layers[3].blocks[1].effective_shift(7, 7) == 0
    assert m.layers[2].blocks[1].effective_shift(14, 14) == 3
    n = sum(int(np.prod(p.shape)) for p in m.parameters())
    assert abs(n - 86.7e6) < 0.05e6
    t = SwinTransformer("tiny")
    assert t.num_features == 768


def test_recompute_gives_same_gradients():
    x = np.random.default_rng(0).random((2, 3, 64, 64)).astype("float32")
    grads = []
    for rc in (False, True):
        paddle.seed(0)
        m = SwinTransformer("micro", drop_path_rate=0.0, recompute=rc)
        m.train()
        xt = paddle.to_tensor(x)
        xt.stop_gradient = False
        (m.forward_features(xt) ** 2).sum().backward()
        grads.append(m.patch_embed.proj.weight.grad.numpy().copy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def numpy_swin_features(p, x, embed, depths, heads, window, post_norm):
    """Independent numpy Swin forward (PaddleClas key semantics, Linear weights [in, out]) for an image whose
    feature maps are all multiples of the window or not larger than it. x [3, H, W] -> [C_last]."""
    C = embed
    w_conv = p["patch_embed.proj.weight"]  # [C, 3, 4, 4]
    _, H, W = x.shape
    h, w = H // 4, W // 4
    patches = x.reshape(3, h, 4, w, 4).transpose(1, 3, 0, 2, 4).reshape(h * w, 48)
    t = patches @ w_conv.reshape(C, 48).T + p["patch_embed.proj.bias"]
    t = ln(t, p["patch_embed.norm.weight"], p["patch_embed.norm.bias"])
    for i, depth in enumerate(depths):
        for j in range(depth):
            q = {k[len(f"layers.{i}.blocks.{j}."):]: v for k, v in p.items() if k.startswith(f"layers.{i}.blocks.{j}.")}
            shift = 0 if (j % 2 == 0 or min(h, w) <= window) else window // 2
            n1 = lambda a: ln(a, q["norm1.weight"], q["norm1.bias"])  # noqa: E731
            n2 = lambda a: ln(a, q["norm2.weight"], q["norm2.bias"])  # noqa: E731
            mlp = lambda a: gelu(a @ q["mlp.fc1.weight"] + q["mlp.fc1.bias"]) @ q["mlp.fc2.weight"] + q["mlp.fc2.bias"]  # noqa: E731,E501
            att = lambda a: brute_force_attention(a, q, h, w, window, shift, heads[i])  # noqa: E731
            if post_norm:
                t = t + n1(att(t))
                t = t + n2(mlp(t))
            else:
                t = t + att(n1(t))
                t = t + mlp(n2(t))
        if i < len(depths) - 1:
            g = t.reshape(h, w, C)
            cat = np.concatenate([g[0::2, 0::2], g[1::2, 0::2], g[0::2, 1::2], g[1::2, 1::2]], -1)
            h, w = h // 2, w // 2
            cat = ln(cat.reshape(h * w, 4 * C), p[f"layers.{i}.downsample.norm.weight"],
                     p[f"layers.{i}.downsample.norm.bias"])
            t = cat @ p[f"layers.{i}.downsample.reduction.weight"]
            C *= 2
    return ln(t, p["norm.weight"], p["norm.bias"]).mean(0)


@pytest.mark.parametrize("layout", ["spatial", "window"])
@pytest.mark.parametrize("post_norm", [False, True])
def test_full_backbone_matches_independent_numpy_forward(post_norm, layout):
    embed, depths, heads, window = 8, [2, 2, 2], [1, 2, 2], 2
    paddle.seed(0)
    m = SwinTransformer("micro", embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                        post_norm=post_norm, drop_path_rate=0.3, token_layout=layout)  # drop path off in eval
    randomize(m, seed=11, scale=0.2)
    m.eval()
    x = np.random.default_rng(4).random((1, 3, 32, 32)).astype("float32")  # maps 8x8, 4x4, 2x2
    got = m.forward_features(paddle.to_tensor(x)).numpy()[0]
    exp = numpy_swin_features(params(m), x[0].astype(np.float64), embed, depths, heads, window, post_norm)
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


# --- res-post-norm initialisation (Arch.backbone.post_norm_init) ---

def test_zero_post_norm_init_makes_every_block_the_identity():
    """Swin V2 res-post-norm init: LN weight = bias = 0, so x + LN(attn(x)) = x and x + LN(mlp(x)) = x."""
    paddle.seed(0)
    m = SwinTransformer("micro", img_size=32, window_size=2, drop_path_rate=0.3)
    assert m.post_norm_init == "zero"
    for layer in m.layers:
        for b in layer.blocks:
            for norm in (b.norm1, b.norm2):
                assert float(paddle.abs(norm.weight).max()) == 0.0
                assert float(paddle.abs(norm.bias).max()) == 0.0
    x = np.random.default_rng(0).standard_normal((2, 16, 32)).astype("float32")
    blk0 = m.layers[0].blocks[1]  # shifted block, 4x4 map
    for mode in ("train", "eval"):  # drop path scales a zero branch: still the identity
        getattr(blk0, mode)()
        np.testing.assert_array_equal(blk0(paddle.to_tensor(x), 4, 4).numpy(), x)


def test_zero_post_norm_init_backbone_is_embed_merges_and_final_norm():
    """With identity blocks the features are mean(LN(merge3(merge2(merge1(embed(x))))))."""
    paddle.seed(1)
    m = SwinTransformer("micro", img_size=32, window_size=2)
    m.eval()
    x = paddle.to_tensor(np.random.default_rng(1).random((2, 3, 32, 32)).astype("float32"))
    t, h, w = m.patch_embed(x)
    for layer in m.layers:
        if layer.downsample is not None:
            t, h, w = layer.downsample(t, h, w)
    exp = m.norm(t).mean(axis=1).numpy()
    np.testing.assert_allclose(m.forward_features(x).numpy(), exp, rtol=1e-5, atol=1e-6)


def test_one_post_norm_init_and_pre_norm_keep_plain_layernorm_init():
    paddle.seed(2)
    for m in (SwinTransformer("micro", post_norm=True, post_norm_init="one"),
              SwinTransformer("micro", post_norm=False)):  # pre-norm: post_norm_init does not apply
        for layer in m.layers:
            for b in layer.blocks:
                for norm in (b.norm1, b.norm2):
                    np.testing.assert_array_equal(norm.weight.numpy(), np.ones(norm.weight.shape, "float32"))
                    np.testing.assert_array_equal(norm.bias.numpy(), np.zeros(norm.bias.shape, "float32"))
    with pytest.raises(ValueError, match="post_norm_init"):
        SwinTransformer("micro", post_norm_init="ones")


@pytest.mark.parametrize("size", [32, 30])
def test_conv_stem_keeps_the_patch_grid(size):
    paddle.seed(3)
    a = SwinTransformer("micro", patch_size=4, window_size=2, stem="conv")
    b = SwinTransformer("micro", patch_size=4, window_size=2)
    a.eval()
    x = paddle.to_tensor(np.random.default_rng(3).random((2, 3, size, size)).astype("float32"))
    ta, ha, wa = a.patch_embed(x)
    tb, hb, wb = b.patch_embed(x)
    assert (ha, wa) == (hb, wb) == (8, 8) and list(ta.shape) == list(tb.shape) == [2, 64, 32]
    assert list(a.forward_features(x).shape) == [2, 256]
    convs = [m for m in a.patch_embed.proj if isinstance(m, paddle.nn.Conv2D)]
    # patch 4 = two stride-2 3x3 convs (C/2 = 16, C = 32 channels) + a 1x1 conv to C
    assert [(c.weight.shape[0], c.weight.shape[2], c._stride[0]) for c in convs] == [(16, 3, 2), (32, 3, 2), (32, 1, 1)]
    with pytest.raises(ValueError, match="power-of-two"):
        SwinTransformer("micro", patch_size=6, stem="conv")
    with pytest.raises(ValueError, match="stem"):
        SwinTransformer("micro", stem="cnn")


# --- token_layout="window": tokens kept in window order inside a stage (same model, fewer copies) ---

def _pad_grid(a, H, W, w):
    Hp, Wp = -(-H // w) * w, -(-W // w) * w
    g = np.zeros((Hp, Wp) + a.shape[2:], a.dtype)
    g[:H, :W] = a
    return g


@pytest.mark.parametrize("H,W,w,s", [(56, 56, 7, 3), (14, 14, 7, 3), (5, 7, 3, 1), (10, 6, 4, 2), (3, 3, 7, 0),
                                     (9, 13, 7, 3)])
def test_window_order_indices_equal_pad_roll_partition(H, W, w, s):
    Hp, Wp = -(-H // w) * w, -(-W // w) * w
    grid = np.arange(Hp * Wp).reshape(1, Hp, Wp, 1).astype("float32")
    part = window_partition(paddle.to_tensor(grid), w).numpy().reshape(-1).astype(int)
    np.testing.assert_array_equal(window_slots(H, W, w), part)  # the window order is window_partition's
    # spatial -> window -> spatial is the identity on the real tokens; padding slots are exactly the invalid ones
    real = np.arange(H * W)
    to_w, to_s = spatial_to_window_index(H, W, w), window_to_spatial_index(H, W, w)
    np.testing.assert_array_equal(to_w[to_s], real)
    v = valid_slots(H, W, w)
    if (Hp, Wp) == (H, W):
        assert v is None
    else:
        np.testing.assert_array_equal(v, np.isin(part, (np.arange(H)[:, None] * Wp + np.arange(W)).ravel()))
    # shift gather = roll(-s) then partition, expressed in window-order slots; inverse undoes it
    if s:
        fwd, inv = shift_index(H, W, w, s)
        rolled = np.roll(grid, (-s, -s), axis=(1, 2))
        exp = window_partition(paddle.to_tensor(rolled), w).numpy().reshape(-1)
        np.testing.assert_array_equal(part[fwd], exp)
        np.testing.assert_array_equal(fwd[inv], np.arange(Hp * Wp))


@pytest.mark.parametrize("src,dst", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("H,W,w", [(56, 56, 7), (28, 28, 7), (21, 14, 7), (5, 7, 3), (7, 10, 4), (3, 3, 7)])
def test_merge_index_equals_spatial_patch_merging(H, W, w, src, dst):
    C = 3
    rng = np.random.default_rng(H * 100 + W)
    x = rng.standard_normal((2, H * W, C)).astype("float32")
    pm = PatchMerging(dim=C)
    randomize(pm, seed=W)
    ys, h2, w2 = pm(paddle.to_tensor(x), H, W)
    xt = paddle.to_tensor(x)
    xw = paddle.gather(xt, paddle.to_tensor(spatial_to_window_index(H, W, w)), axis=1) if src else xt
    yw, h2w, w2w = pm.forward_window(xw, H, W, w, src, dst)
    assert (h2w, w2w) == (h2, w2) == (-(-H // 2), -(-W // 2))
    back = paddle.gather(yw, paddle.to_tensor(window_to_spatial_index(h2, w2, w)), axis=1) if dst else yw
    np.testing.assert_allclose(back.numpy(), ys.numpy(), rtol=1e-5, atol=1e-6)
    assert merge_index(H, W, w, src, dst)[3] == bool(H % 2 or W % 2)  # a zero token only for odd sizes


@pytest.mark.parametrize("post_norm", [True, False])
@pytest.mark.parametrize("H,W,w,s", [(4, 4, 2, 1), (5, 5, 3, 1), (3, 5, 2, 1), (2, 2, 3, 1), (9, 13, 4, 2)])
def test_window_layout_block_equals_spatial_block_and_brute_force(H, W, w, s, post_norm):
    paddle.seed(0)
    a = SwinTransformerBlock(dim=8, num_heads=2, window_size=w, shift_size=s, post_norm=post_norm)
    b = SwinTransformerBlock(dim=8, num_heads=2, window_size=w, shift_size=s, post_norm=post_norm,
                             token_layout="window")
    randomize(a, seed=H * 10 + W)
    b.set_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = np.random.default_rng(1).standard_normal((2, H * W, 8)).astype("float32")
    to_w = paddle.to_tensor(spatial_to_window_index(H, W, w))
    to_s = paddle.to_tensor(window_to_spatial_index(H, W, w))
    xw = paddle.gather(paddle.to_tensor(x), to_w, axis=1)
    att = paddle.gather(b._attention_window(xw, H, W), to_s, axis=1).numpy()  # padded grids too
    np.testing.assert_allclose(att, a._attention(paddle.to_tensor(x), H, W).numpy(), rtol=1e-5, atol=1e-6)
    exp = brute_force_attention(x[0].astype(np.float64), params(a), H, W, w, a.effective_shift(H, W), 2)
    np.testing.assert_allclose(att[0], exp, rtol=1e-4, atol=1e-5)
    # padding slots may hold anything on the way in: they are zeroed before attention
    xw_noisy = xw.numpy().copy()
    v = valid_slots(H, W, w)
    if v is not None:
        xw_noisy[:, v == 0] = 7.0
    att2 = paddle.gather(b._attention_window(paddle.to_tensor(xw_noisy), H, W), to_s, axis=1).numpy()
    np.testing.assert_array_equal(att2, att)
    # whole block: window order only on grids that are a multiple of the window, row-major otherwise
    ref = a(paddle.to_tensor(x), H, W).numpy()
    if uses_window_order("window", H, W, w):
        out = paddle.gather(b(xw, H, W), to_s, axis=1).numpy()
    else:
        out = b(paddle.to_tensor(x), H, W).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("post_norm", [True, False])
@pytest.mark.parametrize("size,window", [((224, 224), 7), ((96, 96), 7), ((100, 130), 7), ((30, 45), 3),
                                         ((64, 64), 7), ((96, 96), 6), ((112, 168), 7)])
def test_window_layout_backbone_equals_spatial(size, window, post_norm):
    """Same parameters (identical state-dict keys), same features at 224², sizes with padding, odd merges."""
    paddle.seed(0)
    a = SwinTransformer("micro", window_size=window, post_norm=post_norm, post_norm_init="one",
                        token_layout="spatial")
    b = SwinTransformer("micro", window_size=window, post_norm=post_norm, post_norm_init="one")
    assert b.token_layout == "window"  # the default
    randomize(a, seed=5, scale=0.1)
    sa = a.state_dict()
    assert list(b.state_dict().keys()) == list(sa.keys())
    b.set_state_dict(sa)
    a.eval()
    b.eval()
    x = paddle.to_tensor(np.random.default_rng(2).random((2, 3, *size)).astype("float32"))
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), rtol=1e-5, atol=1e-5)


def test_window_layout_gradients_and_recompute_equal_spatial():
    x = np.random.default_rng(0).random((2, 3, 40, 56)).astype("float32")  # 10x14 grid: padding + odd merge
    grads = []
    for layout, rc in (("spatial", False), ("window", False), ("window", True)):
        paddle.seed(0)
        m = SwinTransformer("micro", window_size=4, drop_path_rate=0.0, post_norm_init="one",
                            token_layout=layout, recompute=rc)
        m.train()
        (m.forward_features(paddle.to_tensor(x)) ** 2).sum().backward()
        grads.append([m.patch_embed.proj.weight.grad.numpy().copy(),
                      m.layers[0].blocks[1].attn.relative_position_bias_table.grad.numpy().copy()])
    for g in grads[1:]:
        for u, v in zip(g, grads[0]):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_unknown_token_layout_is_rejected():
    with pytest.raises(ValueError, match="token_layout"):
        SwinTransformer("micro", token_layout="windows")


@pytest.mark.parametrize("size,window,orders", [((224, 224), 7, [True] * 4), ((96, 96), 7, [False] * 4),
                                                ((96, 96), 6, [True, True, True, False]),
                                                ((112, 168), 7, [True, True, False, False])])
def test_window_order_only_on_grids_without_padding(size, window, orders):
    m = SwinTransformer("micro", window_size=window)
    got = [uses_window_order(m.token_layout, h, w, window) for h, w in m.stage_shapes(*size)]
    assert got == orders
    assert not any(uses_window_order("spatial", h, w, window) for h, w in m.stage_shapes(*size))


# --- SwinTransformer.bf16_kernels: the exact reformulations traced into the oneDNN bf16 program ---

@pytest.mark.parametrize("post_norm", [False, True])
def test_bf16_kernels_backbone_matches_independent_numpy_forward(post_norm, monkeypatch):
    """Key-major scores (softmax over axis -2) and one-hot token permutations: the same numpy reference as the
    plain formulation; the permutations of grids up to 64 tokens are products, not gathers, inside the context."""
    embed, depths, heads, window = 8, [2, 2, 2], [1, 2, 2], 2
    paddle.seed(0)
    m = SwinTransformer("micro", embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                        post_norm=post_norm)
    randomize(m, seed=11, scale=0.2)
    m.eval()
    x = np.random.default_rng(4).random((1, 3, 32, 32)).astype("float32")  # maps 8x8, 4x4, 2x2
    exp = numpy_swin_features(params(m), x[0].astype(np.float64), embed, depths, heads, window, post_norm)
    gathered = []
    real_gather = paddle.gather
    monkeypatch.setattr(paddle, "gather", lambda t, i, axis=None: gathered.append(int(i.shape[0])) or
                        real_gather(t, i, axis=axis))
    with m.bf16_kernels(onehot_max_tokens=16):
        assert all(a.key_major for a in m.sublayers() if hasattr(a, "key_major"))
        got = m.forward_features(paddle.to_tensor(x)).numpy()[0]
    # stage-1 shift there and back (64 tokens): gathers; stage-2 shift (16): one-hot products (16 <=
    # onehot_max_tokens); row-major -> window order and both merges (unpadded grids): transposes
    assert sorted(gathered) == [64, 64]
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
    # restored on exit
    assert not any(a.key_major for a in m.sublayers() if hasattr(a, "key_major"))
    assert all(b.onehot_max_tokens == 0 for b in m.sublayers() if hasattr(b, "onehot_max_tokens"))


def test_bf16_kernels_give_the_plain_features_and_restore_on_error():
    paddle.seed(0)
    m = SwinTransformer("micro", post_norm_init="one")
    randomize(m, seed=3, scale=0.1)
    m.eval()
    x = paddle.to_tensor(np.random.default_rng(5).random((2, 3, 224, 224)).astype("float32"))
    plain = m(x).numpy()
    with m.bf16_kernels():  # 224²: stage 3 (14x14 = 196 tokens) permutes by one-hot products
        tuned = m(x).numpy()
    np.testing.assert_allclose(tuned, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):
        with m.bf16_kernels():
            raise RuntimeError("export failed")
    assert not any(getattr(a, "key_major", False) for a in m.sublayers())
    assert not any(getattr(b, "onehot_max_tokens", 0) for b in m.sublayers())


def test_onehot_permutation_is_exact_and_only_for_permutations():
    from ppihd.arch.backbone.swin import _gather_tokens

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 12, 5)) * 10.0 ** rng.integers(-20, 20, (3, 12, 5))).astype("float32")
    perm = rng.permutation(12)
    got = _gather_tokens(paddle.to_tensor(x), paddle.to_tensor(perm), onehot_max=12).numpy()
    np.testing.assert_array_equal(got, x[:, perm])  # bit-exact: one non-zero term per output
    sub = np.array([3, 3, 0, 11])  # not a permutation of the 12 tokens: plain gather
    got = _gather_tokens(paddle.to_tensor(x), paddle.to_tensor(sub), onehot_max=12).numpy()
    np.testing.assert_array_equal(got, x[:, sub])
    # larger than onehot_max: plain gather, same values
    np.testing.assert_array_equal(_gather_tokens(paddle.to_tensor(x), paddle.to_tensor(perm), onehot_max=8).numpy(),
                                  x[:, perm])


@pytest.mark.parametrize("H,W,w", [(4, 6, 2), (14, 21, 7), (6, 6, 3)])
def test_window_order_transposes_are_the_index_permutations(H, W, w):
    """The transposes that replace gathers on unpadded grids: the same permutations as the indices."""
    from ppihd.arch.backbone.swin import _rows_to_windows, _windows_to_rows

    x = np.random.default_rng(0).standard_normal((2, H * W, 3)).astype("float32")
    got = _rows_to_windows(paddle.to_tensor(x), H, W, w).numpy()
    np.testing.assert_array_equal(got, x[:, spatial_to_window_index(H, W, w)])
    np.testing.assert_array_equal(_windows_to_rows(paddle.to_tensor(got), H, W, w).numpy(), x)
    np.testing.assert_array_equal(got[:, window_to_spatial_index(H, W, w)], x)


@pytest.mark.parametrize("H,W,w", [(8, 12, 2), (28, 28, 7), (12, 6, 3)])
def test_patch_merging_transposes_equal_the_merge_gather(H, W, w):
    """PatchMerging between window orders of unpadded grids (H, W multiples of 2w) uses two transposes; it is
    the same permutation as merge_index, so the same numbers as the gather path and the spatial forward."""
    paddle.seed(0)
    pm = PatchMerging(4)
    randomize(pm, seed=1)
    x = np.random.default_rng(3).standard_normal((2, H * W, 4)).astype("float32")
    xw = paddle.to_tensor(x[:, spatial_to_window_index(H, W, w)])
    got, h2, w2 = pm.forward_window(xw, H, W, w)
    idx, *_ = merge_index(H, W, w, True, True)
    ref = pm.reduction(pm.norm(paddle.gather(xw, paddle.to_tensor(idx), axis=1).reshape([2, -1, 16]))).numpy()
    np.testing.assert_array_equal(got.numpy(), ref)
    spatial, _, _ = pm(paddle.to_tensor(x), H, W)
    np.testing.assert_allclose(got.numpy()[:, window_to_spatial_index(h2, w2, w)], spatial.numpy(), rtol=1e-6,
                               atol=1e-6)
