"""Weight loading: a state dict laid out the PaddleClas way (names, shapes, buffers), built here from the
known PaddleClas SwinTransformer layout, independently of ppihd's modules; timm / official conversion."""
import os
import pickle
import re

import numpy as np
import paddle
import pytest

from ppihd.arch import build_model
from ppihd.arch.backbone.swin import SwinTransformer
from ppihd.arch.weights import (LoadReport, WeightLoadError, convert_torch_swin, load_backbone_pretrained,
                                load_model_weights, resize_relative_position_table)
from ppihd.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CFG = os.path.join(ROOT, "configs", "swin_b_seq.yaml")

EMBED, DEPTHS, HEADS, WIN, NCLS = 8, [2, 2], [1, 2], 2, 10
LINEAR_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight",
                   "downsample.reduction.weight", "head.weight")


def paddleclas_layout(embed=EMBED, depths=DEPTHS, heads=HEADS, window=WIN, ncls=NCLS, res=8):
    """{key: shape or (shape, 'int64')} of PaddleClas SwinTransformer(embed_dim, depths, num_heads,
    window_size, class_num) at input resolution ``res * 4``: Linear weights [in, out], buffers included."""
    lay = {"patch_embed.proj.weight": (embed, 3, 4, 4), "patch_embed.proj.bias": (embed,),
           "patch_embed.norm.weight": (embed,), "patch_embed.norm.bias": (embed,)}
    for i, (d, h) in enumerate(zip(depths, heads)):
        c = embed * 2 ** i
        r = res // 2 ** i
        for j in range(d):
            p = f"layers.{i}.blocks.{j}."
            lay.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                        p + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, h),
                        p + "attn.relative_position_index": ((window ** 2, window ** 2), "int64"),
                        p + "attn.qkv.weight": (c, 3 * c), p + "attn.qkv.bias": (3 * c,),
                        p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                        p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                        p + "mlp.fc1.weight": (c, 4 * c), p + "mlp.fc1.bias": (4 * c,),
                        p + "mlp.fc2.weight": (4 * c, c), p + "mlp.fc2.bias": (c,)})
            if j % 2 == 1 and r > window:
                lay[p + "attn_mask"] = ((r // window) ** 2, window ** 2, window ** 2)
        if i < len(depths) - 1:
            lay.update({f"layers.{i}.downsample.reduction.weight": (4 * c, 2 * c),
                        f"layers.{i}.downsample.norm.weight": (4 * c,),
                        f"layers.{i}.downsample.norm.bias": (4 * c,)})
    cl = embed * 2 ** (len(depths) - 1)
    lay.update({"norm.weight": (cl,), "norm.bias": (cl,), "head.weight": (cl, ncls), "head.bias": (ncls,)})
    return lay


def fake_state(seed=0, **kw):
    rng = np.random.default_rng(seed)
    out = {}
    for k, spec in paddleclas_layout(**kw).items():
        if isinstance(spec[-1], str):
            out[k] = rng.integers(0, 9, size=spec[0]).astype("int64")
        else:
            out[k] = rng.standard_normal(spec).astype("float32")
    return out


def tiny_backbone(window=WIN, **kw):
    return SwinTransformer("micro", embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=window, **kw)


@pytest.fixture()
def paddleclas_file(tmp_path):
    state = fake_state()
    path = str(tmp_path / "SwinTransformer_tiny_fake_pretrained.pdparams")
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, path)
    return path, state


def test_paddleclas_names_load_by_key(paddleclas_file):
    path, state = paddleclas_file
    bb = tiny_backbone()
    rep = load_backbone_pretrained(bb, path)
    assert isinstance(rep, LoadReport)
    assert not rep.missing and not rep.unexpected and not rep.reshaped
    n_params = len(bb.state_dict())
    assert len(rep.loaded) == n_params
    assert "head.weight" in rep.ignored and "head.bias" in rep.ignored
    assert "layers.0.blocks.0.attn.relative_position_index" in rep.ignored
    assert "layers.0.blocks.1.attn_mask" in rep.ignored
    np.testing.assert_array_equal(bb.layers[1].blocks[0].attn.qkv.weight.numpy(),
                                  state["layers.1.blocks.0.attn.qkv.weight"])
    np.testing.assert_array_equal(bb.layers[0].downsample.reduction.weight.numpy(),
                                  state["layers.0.downsample.reduction.weight"])
    np.testing.assert_array_equal(bb.layers[1].blocks[1].attn.relative_position_bias_table.numpy(),
                                  state["layers.1.blocks.1.attn.relative_position_bias_table"])
    np.testing.assert_array_equal(bb.patch_embed.proj.weight.numpy(), state["patch_embed.proj.weight"])
    np.testing.assert_array_equal(bb.norm.bias.numpy(), state["norm.bias"])
    assert f"{n_params} loaded, 0 reshaped, 0 missing, 0 unexpected" in str(rep).splitlines()[0]


def test_classifier_kept_when_backbone_has_one(paddleclas_file):
    path, state = paddleclas_file
    bb = tiny_backbone(num_classes=NCLS)
    rep = load_backbone_pretrained(bb, path)
    np.testing.assert_array_equal(bb.head.weight.numpy(), state["head.weight"])
    assert "head.weight" in rep.loaded


def test_missing_backbone_weight_fails_loudly(tmp_path):
    state = fake_state()
    del state["layers.1.blocks.1.mlp.fc2.weight"]
    with pytest.raises(WeightLoadError, match=r"layers\.1\.blocks\.1\.mlp\.fc2\.weight"):
        load_backbone_pretrained(tiny_backbone(), state)


def test_unexpected_keys_reported(tmp_path):
    state = fake_state()
    state["foo.extra"] = np.zeros(3, "float32")
    rep = load_backbone_pretrained(tiny_backbone(), state)
    assert rep.unexpected == ["foo.extra"]
    assert "unexpected foo.extra" in str(rep)


def test_wrong_shape_fails_with_key_and_shapes():
    state = fake_state(embed=16)  # a different variant
    with pytest.raises(WeightLoadError, match=r"patch_embed\.proj\.weight: file \[16, 3, 4, 4\] vs model \[8"):
        load_backbone_pretrained(tiny_backbone(), state)


def test_relative_table_resized_when_window_differs():
    state = fake_state()
    for k in state:
        if k.endswith("relative_position_bias_table"):
            h = state[k].shape[1]
            state[k] = np.tile(np.arange(1, h + 1, dtype="float32") * 0.5, (9, 1))  # constant per head
    bb = tiny_backbone(window=3)
    rep = load_backbone_pretrained(bb, state)
    assert len(rep.reshaped) == sum(DEPTHS)
    k, old, new = rep.reshaped[0]
    assert old == (9, 1) and new == (25, 1)
    t = bb.layers[1].blocks[0].attn.relative_position_bias_table.numpy()
    assert t.shape == (25, 2)
    np.testing.assert_allclose(t, np.tile([0.5, 1.0], (25, 1)), atol=1e-5)  # bicubic keeps constants
    assert "reshaped" in str(rep)


def test_resize_identity_and_shape():
    t = np.random.default_rng(0).standard_normal((169, 4)).astype("float32")
    np.testing.assert_array_equal(resize_relative_position_table(t, 7), t)
    assert resize_relative_position_table(t, 12).shape == (23 * 23, 4)


def tiny_arch(*extra):
    return load_config(PAPER_CFG, [
        "Arch.backbone.variant=micro", f"Arch.backbone.embed_dim={EMBED}", f"Arch.backbone.depths={DEPTHS}",
        f"Arch.backbone.num_heads={HEADS}", f"Arch.backbone.window_size={WIN}", *extra])["Arch"]


def test_arch_pretrained_loads_at_build(paddleclas_file):
    path, state = paddleclas_file
    m = build_model(tiny_arch(f"Arch.pretrained={path}"))
    np.testing.assert_array_equal(m.backbone.layers[0].blocks[1].mlp.fc1.bias.numpy(),
                                  state["layers.0.blocks.1.mlp.fc1.bias"])
    rep = m.load_report
    assert rep.missing == [] and rep.unexpected == [] and "layers.0.blocks.1.mlp.fc1.bias" in rep.loaded
    with pytest.raises(WeightLoadError, match=r"^weight file not found: /nonexistent/swin\.pdparams \(download it yourself; see docs/model\.md\)$"):
        build_model(tiny_arch("Arch.pretrained=/nonexistent/swin.pdparams"))


def test_own_checkpoints_round_trip(tmp_path):
    paddle.seed(1)
    src = build_model(tiny_arch())
    sd = {k: v.numpy() for k, v in src.state_dict().items()}
    ckpt = str(tmp_path / "latest.pdparams")
    paddle.save({"model": src.state_dict(), "iter": 7}, ckpt)
    paddle.seed(2)
    dst = build_model(tiny_arch())
    rep = load_model_weights(dst, ckpt)
    assert not rep.missing and not rep.unexpected
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k])
    # our IHDNet names ('backbone.' prefix) also feed a bare backbone; the heads are ignored
    bb = tiny_backbone()
    rep = load_backbone_pretrained(bb, ckpt)
    assert any(k.startswith("head2.") for k in rep.ignored)
    np.testing.assert_array_equal(bb.layers[1].blocks[1].norm2.weight.numpy(),
                                  sd["backbone.layers.1.blocks.1.norm2.weight"])
    # a model without deep supervision does not match strictly
    with pytest.raises(WeightLoadError, match=rf"{re.escape(ckpt)} does not match the model \(Arch config differs\?\): "
                       r"missing \[\], unexpected \['head1\.bias', 'head1\.weight'\]"):
        load_model_weights(build_model(tiny_arch("Arch.deep_supervision=false")), ckpt)


def to_timm(state, new_layout=True):
    """The same weights as a torch-side (timm/official) state dict: Linear weights [out, in]; with timm>=0.9
    naming the merge of stage i is stored at the start of stage i+1 and the classifier is head.fc."""
    out = {}
    for k, v in state.items():
        nk = k
        if k.endswith(LINEAR_SUFFIXES):
            v = v.T.copy()
        if new_layout and ".downsample." in k:
            i = int(k.split(".")[1])
            nk = k.replace(f"layers.{i}.downsample", f"layers.{i + 1}.downsample")
        if new_layout and k.startswith("head."):
            nk = "head.fc." + k[len("head."):]
        out[nk] = v
    return out


@pytest.mark.parametrize("new_layout", [True, False])
def test_convert_torch_swin_mapping(new_layout):
    state = fake_state()
    src = to_timm(state, new_layout)
    if not new_layout:
        src = {"model": src}  # official checkpoints wrap the state dict
    out, notes = convert_torch_swin(src)
    expected = {k: v for k, v in state.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    assert set(out) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
    assert any("timm>=0.9" in n for n in notes) == new_layout


def test_convert_tool_writes_loadable_pdparams(tmp_path):
    from tools.convert_weights import main

    state = fake_state(seed=3)
    pkl = str(tmp_path / "timm_swin.pkl")
    with open(pkl, "wb") as f:
        pickle.dump(to_timm(state), f)
    out = str(tmp_path / "converted.pdparams")
    assert main([pkl, "-o", out]) == 0
    bb = tiny_backbone()
    rep = load_backbone_pretrained(bb, out)
    assert not rep.missing and not rep.unexpected and "head.weight" not in rep.ignored  # head dropped by the tool
    np.testing.assert_array_equal(bb.layers[0].blocks[0].attn.qkv.weight.numpy(),
                                  state["layers.0.blocks.0.attn.qkv.weight"])


def test_swin_v2_checkpoint_rejected():
    with pytest.raises(WeightLoadError, match=r"^this is a Swin V2 checkpoint \(cpb_mlp / logit_scale\); only Swin v1 "
                                              r"weights fit$"):
        convert_torch_swin({"layers.0.blocks.0.attn.cpb_mlp.0.weight": np.zeros((2, 2), "float32")})


def test_npz_weights_round_trip_without_pickle(tmp_path):
    """save_weights_npz writes plain arrays; load_weights reads them with allow_pickle=False into an equal model,
    and an .npz holding an object array (a pickle) is refused."""
    import numpy as np
    import paddle

    from ppihd.utils.checkpoint import load_weights, save_weights_npz
    from infer_utils import tiny_model

    _, a = tiny_model(seed=0)
    _, b = tiny_model(seed=1)
    p = save_weights_npz(a, str(tmp_path / "w.npz"))
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(a.state_dict())
    load_weights(b, p)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k].numpy(), v.numpy())
    x = paddle.rand([1, 3, 3, 64, 64])
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    np.savez(tmp_path / "evil.npz", payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a plain-array .npz"):
        load_weights(b, str(tmp_path / "evil.npz"))
