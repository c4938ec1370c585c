"""ppihd.postprocess: the one uint8 -> float conversion (all 256 bytes, on every path), the sigmoid, submission
IDs and the predictions.csv reader."""
import math

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.data.dataset import collate_series, images_to_tensor
from ppihd.postprocess.arrays import sigmoid, to_model_input, to_unit
from ppihd.postprocess.tables import PostprocessError, id_label_table, read_predictions, submission_id

BYTES = np.arange(256, dtype=np.uint8)
# float32(x) * float32(1/255) rounded once: the product of an 8-bit and a 24-bit significand is exact in float64
PRODUCT = (BYTES.astype(np.float64) * np.float64(np.float32(1.0 / 255.0))).astype(np.float32)


def test_product_is_not_division():
    # the variant the inference driver used before: x / 255 correctly rounded, one ulp away for 126 bytes
    division = BYTES.astype(np.float32) / np.float32(255.0)
    ulps = np.abs(PRODUCT.view(np.int32).astype(np.int64) - division.view(np.int32))
    assert int((ulps == 1).sum()) == 126 and int(ulps.max()) == 1
    assert PRODUCT[0] == 0.0 and PRODUCT[255] == 1.0


def test_all_256_bytes_agree_on_every_path():
    slices = np.broadcast_to(BYTES.reshape(1, 16, 16, 1), (2, 16, 16, 3)).copy()  # [S, H, W, 3] like the cache
    x = to_model_input(slices)
    assert x.dtype == np.float32 and x.shape == (2, 3, 16, 16) and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x[1, 2].reshape(-1), PRODUCT)
    np.testing.assert_array_equal(to_unit(BYTES), PRODUCT)
    # the training batch: a uint8 item collated with a float one becomes float32 [0, 1] by the same numbers
    u8 = slices.transpose(0, 3, 1, 2).copy()
    items = [{"images": u8, "labels": np.zeros((2, 6), np.float32)},
             {"images": np.zeros((1, 3, 16, 16), np.float32), "labels": np.zeros((1, 6), np.float32)}]
    np.testing.assert_array_equal(collate_series(items)["images"][0, 0, 0].reshape(-1), PRODUCT)
    # uint8 batches converted on the device (trainer, evaluator)
    np.testing.assert_array_equal(images_to_tensor(u8).numpy()[0, 0].reshape(-1), PRODUCT)


def test_sigmoid_closed_form():
    x = np.array([-30.0, -1.0, 0.0, 2.0, 30.0], dtype=np.float32)
    want = [1.0 / (1.0 + math.exp(-float(v))) for v in x]
    out = sigmoid(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, want, rtol=1e-15)
    assert sigmoid(np.zeros((2, 3))).shape == (2, 3) and sigmoid(0.0) == 0.5


def test_submission_id_frames():
    assert submission_id("ID_00ab") == "ID_00ab" and submission_id(" 1.2.3 ") == "ID_1.2.3"
    assert submission_id("1.2.3", 7) == submission_id("1.2.3", 7.0) == submission_id("1.2.3", "7") == "ID_1.2.3-7"
    assert submission_id("1.2.3", float("nan")) == submission_id("1.2.3", "") == "ID_1.2.3"


def test_id_label_table_from_predictions():
    df = pd.DataFrame({"sop_uid": ["ID_a", "1.2.3"], "frame": [np.nan, 2.0]})
    for j, lab in enumerate(LABELS):
        df[lab] = [0.1 * j, 0.01 * j]
    t = id_label_table(df)
    assert list(t["ID"][:6]) == [f"ID_a_{lab}" for lab in LABELS]
    assert t["ID"].iloc[11] == "ID_1.2.3-2_any" and t["Label"].iloc[11] == pytest.approx(0.05)
    assert id_label_table(pd.DataFrame({"x": [1]})) is None


def test_read_predictions(tmp_path):
    df = pd.DataFrame({"series_uid": ["1.2"] * 3, "sop_uid": ["1.2.10", "1.2.10", "1.2.11"], "frame": [1, 2, None]})
    for lab in LABELS:
        df[lab] = 0.5
    df.to_csv(tmp_path / "p.csv", index=False)
    got = read_predictions(str(tmp_path / "p.csv"))   # two frames of one file are two slices
    assert got["sop_uid"].tolist() == ["1.2.10", "1.2.10", "1.2.11"]    # UIDs stay strings
    assert got["slice_idx"].tolist() == [0, 1, 2] and got["patient_id"].tolist() == ["", "", ""]
    single = df.iloc[1:].assign(frame=None)   # as tools/infer.py writes single-frame slices: an empty frame cell
    single.to_csv(tmp_path / "single.csv", index=False)
    assert read_predictions(str(tmp_path / "single.csv"))["sop_uid"].tolist() == ["1.2.10", "1.2.11"]
    df.drop(columns="frame").to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(PostprocessError, match=r"dup.csv: 1 duplicate sop_uid rows, e.g. 1.2.10"):
        read_predictions(str(tmp_path / "dup.csv"))
    with pytest.raises(PostprocessError, match=r"nope.csv: file not found"):
        read_predictions(str(tmp_path / "nope.csv"))
