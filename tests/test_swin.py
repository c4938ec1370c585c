"""Swin backbone: relative positions, shifted-window masks, attention and post/pre-norm against numpy."""
import math

import numpy as np
import paddle
import pytest

from ppihd.arch.backbone.swin import (PatchMerging, SwinTransformer, SwinTransformerBlock,
                                      relative_position_index)
from ppihd.arch.backbone.window_order import (MASK_VALUE, WindowOrder, window_attention_mask, window_partition,
                                              window_slots)


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


def to_order(x, order):
    """Row-major tokens [B, L, C] (numpy) -> the order's storage, by its (independently tested) slot table."""
    return x[:, order.positions()]


def from_order(x, order):
    return x[:, order.slot_of()]


@pytest.mark.parametrize("H,W,w,s", [(4, 4, 2, 1), (5, 5, 3, 1), (3, 5, 2, 1), (2, 2, 3, 1), (9, 13, 4, 2),
                                     (6, 9, 3, 1)])
def test_block_attention_matches_brute_force(H, W, w, s):
    """Window order (grids that are multiples of the window) or row-major (pad, roll, partition): the
    attention of every real token is the one the definition gives."""
    paddle.seed(0)
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=w, shift_size=s, drop_path=0.0, post_norm=True)
    randomize(blk, seed=H * 10 + W)
    blk.eval()
    order = WindowOrder(H, W, w)
    assert order.active == (H % w == 0 and W % w == 0)
    x = np.random.default_rng(1).standard_normal((2, H * W, 8)).astype("float32")
    got = from_order(blk._attn(paddle.to_tensor(to_order(x, order)), order).numpy(), order)
    shift = 0 if min(H, W) <= w else s
    for b in range(2):
        exp = brute_force_attention(x[b].astype(np.float64), params(blk), H, W, w, shift, 2)
        np.testing.assert_allclose(got[b], exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("post_norm", [True, False])
def test_post_norm_and_pre_norm_differ_only_in_norm_placement(post_norm):
    paddle.seed(0)
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=2, shift_size=0, post_norm=post_norm)
    order = WindowOrder(2, 2, 2)
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
    got = blk(paddle.to_tensor(x), order).numpy()[0]
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
    order = WindowOrder(3, 3, 7)  # row-major (3x3 is not a multiple of 7) into row-major
    assert not order.active and (order.next().height, order.next().width) == (2, 2)
    y = pm(paddle.to_tensor(img.reshape(1, 9, 1)), order)
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
    """Independent numpy Swin forward (PaddleClas key semantics, Linear weights [in, out]) on row-major tokens,
    odd maps zero-padded before merging. x [3, H, W] (H, W multiples of 4) -> [C_last]."""
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
            g = np.zeros((h + h % 2, w + w % 2, C))
            g[:h, :w] = t.reshape(h, w, C)
            cat = np.concatenate([g[0::2, 0::2], g[1::2, 0::2], g[0::2, 1::2], g[1::2, 1::2]], -1)
            h, w = -(-h // 2), -(-w // 2)
            cat = ln(cat.reshape(h * w, 4 * C), p[f"layers.{i}.downsample.norm.weight"],
                     p[f"layers.{i}.downsample.norm.bias"])
            t = cat @ p[f"layers.{i}.downsample.reduction.weight"]
            C *= 2
    return ln(t, p["norm.weight"], p["norm.bias"]).mean(0)


@pytest.mark.parametrize("window,size", [(2, 32), (3, 24)])
@pytest.mark.parametrize("post_norm", [False, True])
def test_full_backbone_matches_independent_numpy_forward(post_norm, window, size):
    """Window 2 at 32²: maps 8x8, 4x4, 2x2, all in window order (transposes between them); window 3 at 24²:
    6x6 in window order, merged by a gather into the row-major 3x3 map (not larger than the window)."""
    embed, depths, heads = 8, [2, 2, 2], [1, 2, 2]
    paddle.seed(0)
    m = SwinTransformer("micro", embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                        post_norm=post_norm, drop_path_rate=0.3)  # drop path off in eval
    randomize(m, seed=11, scale=0.2)
    m.eval()
    x = np.random.default_rng(4).random((1, 3, size, size)).astype("float32")
    got = m.forward_features(paddle.to_tensor(x)).numpy()[0]
    exp = numpy_swin_features(params(m), x[0].astype(np.float64), embed, depths, heads, window, post_norm)
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


# --- res-post-norm initialisation (Arch.backbone.post_norm_init) ---

def test_zero_post_norm_init_makes_every_block_the_identity():
    """Swin V2 res-post-norm init: LN weight = bias = 0, so x + LN(attn(x)) = x and x + LN(mlp(x)) = x."""
    paddle.seed(0)
    m = SwinTransformer("micro", window_size=2, drop_path_rate=0.3)
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
        np.testing.assert_array_equal(blk0(paddle.to_tensor(x), WindowOrder(4, 4, 2)).numpy(), x)


def test_zero_post_norm_init_backbone_is_embed_merges_and_final_norm():
    """With identity blocks the features are mean(LN(merge3(merge2(merge1(embed(x))))))."""
    paddle.seed(1)
    m = SwinTransformer("micro", window_size=2)
    m.eval()
    x = paddle.to_tensor(np.random.default_rng(1).random((2, 3, 32, 32)).astype("float32"))
    t, h, w = m.patch_embed(x)
    for layer in m.layers:  # row-major throughout (pooling does not depend on the order)
        if layer.downsample is not None:
            order = WindowOrder(h, w, 10 ** 6)
            t, h, w = layer.downsample(t, order), order.next().height, order.next().width
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
    with pytest.raises(ValueError, match=r"^Arch\.backbone\.post_norm_init 'ones' unknown; expected zero \| one$"):
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
    with pytest.raises(ValueError, match=r"^Arch\.backbone\.stem 'conv' needs a power-of-two patch_size >= 2, got 6$"):
        SwinTransformer("micro", patch_size=6, stem="conv")
    with pytest.raises(ValueError, match=r"^Arch\.backbone\.stem 'cnn' unknown; expected patch \| conv$"):
        SwinTransformer("micro", stem="cnn")




# --- WindowOrder: the token order of a stage (window order on grids that are a multiple of the window) ---

def numpy_partition(grid, w):
    """[Hp, Wp] -> window-partitioned flat order, by reshapes (the official window_partition in numpy)."""
    hp, wp = grid.shape
    return grid.reshape(hp // w, w, wp // w, w).transpose(0, 2, 1, 3).reshape(-1)


@pytest.mark.parametrize("H,W,w,s", [(56, 56, 7, 3), (14, 14, 7, 3), (6, 9, 3, 1), (12, 8, 4, 2), (4, 4, 2, 1)])
def test_window_order_indices_equal_roll_and_partition(H, W, w, s):
    grid = np.arange(H * W).reshape(H, W)
    order = WindowOrder(H, W, w)
    assert order.active
    np.testing.assert_array_equal(order.positions(), numpy_partition(grid, w))
    np.testing.assert_array_equal(window_slots(H, W, w), window_partition(
        paddle.to_tensor(grid.reshape(1, H, W, 1).astype("float32")), w).numpy().reshape(-1))
    np.testing.assert_array_equal(order.positions()[order.slot_of()], np.arange(H * W))
    fwd, inv = order.shift_index(s)
    stored = order.positions()  # what each slot holds
    np.testing.assert_array_equal(stored[fwd], numpy_partition(np.roll(grid, (-s, -s), axis=(0, 1)), w))
    np.testing.assert_array_equal(fwd[inv], np.arange(H * W))


@pytest.mark.parametrize("H,W,w", [(56, 56, 7), (28, 28, 7), (14, 14, 7), (21, 14, 7), (5, 7, 3), (7, 10, 4),
                                   (3, 3, 7), (8, 12, 2), (12, 6, 3), (6, 6, 3)])
def test_merge_in_any_order_equals_numpy_quadrant_concat(H, W, w):
    """Row-major slices, one gather (with a zero token for odd sizes) or two transposes, whichever the two
    orders need: always the 2x2 concat of the zero-padded map, stored in the next stage's order."""
    C = 3
    x = np.random.default_rng(H * 100 + W).standard_normal((2, H * W, C)).astype("float32")
    g = np.zeros((2, H + H % 2, W + W % 2, C), "float32")
    g[:, :H, :W] = x.reshape(2, H, W, C)
    exp = np.concatenate([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
    order = WindowOrder(H, W, w)
    nxt = order.next()
    assert (nxt.height, nxt.width) == (-(-H // 2), -(-W // 2))
    got = order.merge(paddle.to_tensor(to_order(x, order))).numpy()
    np.testing.assert_array_equal(from_order(got, nxt), exp.reshape(2, -1, 4 * C))
    if order.active:
        assert order.merge_index()[1] == bool(H % 2 or W % 2)  # a zero token only for odd sizes


@pytest.mark.parametrize("H,W,w", [(4, 6, 2), (14, 21, 7), (6, 6, 3)])
def test_from_rows_is_the_slot_permutation(H, W, w):
    x = np.random.default_rng(0).standard_normal((2, H * W, 3)).astype("float32")
    order = WindowOrder(H, W, w)
    got = order.from_rows(paddle.to_tensor(x)).numpy()
    np.testing.assert_array_equal(got, to_order(x, order))
    np.testing.assert_array_equal(order.to_rows(paddle.to_tensor(got)).numpy(), x)


@pytest.mark.parametrize("size,window,orders", [((224, 224), 7, [True] * 4), ((96, 96), 7, [False] * 4),
                                                ((96, 96), 6, [True, True, True, False]),
                                                ((112, 168), 7, [True, True, False, False])])
def test_window_order_only_on_grids_without_padding(size, window, orders):
    m = SwinTransformer("micro", window_size=window)
    assert [layer.token_order(h, w).active for layer, (h, w) in zip(m.layers, m.stage_shapes(*size))] == orders


@pytest.mark.parametrize("size", [(56, 56), (60, 88), (56, 84)])
def test_backbone_on_padded_and_window_order_grids_equals_numpy(size):
    """micro with window 7: window order where the grid allows, row-major with padding elsewhere, merges
    between the two; the pooled features of the independent numpy forward (one slice, drop path off)."""
    paddle.seed(0)
    m = SwinTransformer("micro", embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=7,
                        post_norm_init="one")
    randomize(m, seed=5, scale=0.1)
    m.eval()
    x = np.random.default_rng(2).random((1, 3, *size)).astype("float32")
    got = m.forward_features(paddle.to_tensor(x)).numpy()[0]
    exp = numpy_swin_features(params(m), x[0].astype(np.float64), 8, [1, 1, 2, 1], [1, 1, 2, 2], 7, True)
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
