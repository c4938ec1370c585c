"""Study-level scoring (ppihd/metric/study_eval.py, tools/eval_studies.py): hand-worked numbers, sklearn as the
second implementation, the bootstrap, label parsing (aliases, CQ500 reader majority), matching, clear errors and
one end-to-end run of the tool."""
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from infer_utils import load_tool
from ppihd import LABELS
from ppihd.metric import study_eval as se
from ppihd.metric.study_eval import StudyEvalError

# Hand-worked case: 3 positives, 3 negatives.
#   y = 1 1 1 0 0 0,  p = .9 .6 .4 .6 .3 .1
# AUC: 9 (positive, negative) pairs. .9 beats all 3 negatives -> 3; .6 ties .6 (1/2), beats .3 and .1 -> 2.5;
#   .4 loses to .6, beats .3 and .1 -> 2. AUC = 7.5 / 9 = 5/6.
# Threshold .5 (p > .5 positive): calls .9, .6 (pos), .6 (neg) -> TP 2, FN 1, FP 1, TN 2: sens 2/3, spec 2/3.
# Threshold .6: p > .6 only .9 -> sens 1/3, spec 1 (the tied .6 scores are negative: the > convention).
# Youden over the distinct scores s (call p > s):
#   s=.9: sens 0,   spec 1   J 0      s=.6: 1/3, 1    J 1/3     s=.4: 2/3, 2/3  J 1/3
#   s=.3: sens 1,   spec 2/3 J 2/3    s=.1: 1,   1/3  J 1/3     -> threshold .3, sens 1, spec 2/3, J 2/3.
Y6 = [1, 1, 1, 0, 0, 0]
P6 = [0.9, 0.6, 0.4, 0.6, 0.3, 0.1]


def test_hand_worked_auc_sens_spec_youden():
    assert se.roc_auc(Y6, P6) == pytest.approx(5 / 6)
    assert se.sens_spec(Y6, P6, 0.5) == pytest.approx((2 / 3, 2 / 3))
    assert se.sens_spec(Y6, P6, 0.6) == pytest.approx((1 / 3, 1.0))
    y = se.youden_point(Y6, P6)
    assert y["threshold"] == pytest.approx(0.3)
    assert (y["sensitivity"], y["specificity"], y["j"]) == pytest.approx((1.0, 2 / 3, 2 / 3))
    r = se.evaluate_class(Y6, P6, 0.5, resamples=0)
    assert r["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert (r["n"], r["positives"], r["negatives"], r["ci"]) == (6, 3, 3, None)


def test_youden_tie_takes_the_highest_threshold():
    # y = 1 0 1 0, p = .8 .6 .4 .2. s=.8: J 0; s=.6: sens 1/2 spec 1 -> J 1/2; s=.4: 1/2, 1/2 -> 0;
    # s=.2: 1, 1/2 -> J 1/2. Tie between .6 and .2: the higher, .6. AUC: .8 beats 2, .4 beats 1 -> 3/4.
    y = se.youden_point([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2])
    assert (y["threshold"], y["sensitivity"], y["specificity"]) == pytest.approx((0.6, 0.5, 1.0))
    assert se.roc_auc([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2]) == pytest.approx(0.75)


def test_midranks_average_ties():
    # sorted: .1 (rank 1), .5 .5 (ranks 2, 3 -> 2.5), .7 (4), .9 .9 .9 (5, 6, 7 -> 6)
    assert se.midranks([0.5, 0.9, 0.1, 0.9, 0.5, 0.7, 0.9]).tolist() == [2.5, 6, 1, 6, 2.5, 4, 6]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_roc_points_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.25 * y + rng.random(n) * 0.75, 0, 1), 1)  # 11 levels: many ties
    assert se.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, thr = se.roc_points(y, p)
    sf, st, sthr = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf, atol=1e-12)
    np.testing.assert_allclose(tpr, st, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    # Youden against a brute force over the distinct scores with the p > s rule
    best = max((((p > s)[y == 1].mean() + (p <= s)[y == 0].mean() - 1, s) for s in np.unique(p)),
               key=lambda js: (js[0], js[1]))
    yp = se.youden_point(y, p)
    assert yp["j"] == pytest.approx(best[0]) and yp["threshold"] == pytest.approx(best[1])


def test_single_label_value_gives_null_auc_with_reason():
    r = se.evaluate_class([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.4], 0.5, resamples=50)
    assert r["auc"] is None and "only negative" in r["auc_reason"]
    assert r["sensitivity"] is None and r["specificity"] == pytest.approx(0.75)  # .7 > .5 is the false positive
    assert r["youden"] is None and r["ci"] is None and r["roc"] is None
    assert math.isnan(se.roc_auc([1, 1], [0.2, 0.3]))


def _signal(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)


def test_bootstrap_contains_estimate_reproducible_and_narrows():
    y, p = _signal(200, 3)
    ci = se.bootstrap_ci(y, p, 0.5, resamples=500, seed=7)
    assert ci["resamples_used"] == 500  # 200 studies, ~half positive: no one-class resample
    sens, spec = se.sens_spec(y, p, 0.5)
    for name, est in (("auc", se.roc_auc(y, p)), ("sensitivity", sens), ("specificity", spec)):
        lo, hi = ci[name]
        assert lo < est < hi, name
    assert se.bootstrap_ci(y, p, 0.5, resamples=500, seed=7) == ci
    assert se.bootstrap_ci(y, p, 0.5, resamples=500, seed=8)["auc"] != ci["auc"]
    ys, ps = _signal(50, 4)
    yb, pb = _signal(800, 4)
    small = np.diff(se.bootstrap_ci(ys, ps, 0.5, 500, 0)["auc"])[0]
    big = np.diff(se.bootstrap_ci(yb, pb, 0.5, 500, 0)["auc"])[0]
    assert big < small / 2  # width ~ 1/sqrt(n): 16x the studies, ~1/4 the width


def test_bootstrap_drops_one_class_resamples():
    # 4 studies, one positive: a resample has no positive with probability (3/4)^4 = 0.316 and only positives
    # with (1/4)^4 = 0.004, so ~68 % of the 2000 resamples are usable (binomial sd ~ 21).
    ci = se.bootstrap_ci([1, 0, 0, 0], [0.9, 0.2, 0.4, 0.1], 0.5, resamples=2000, seed=0)
    assert 1250 < ci["resamples_used"] < 1470
    assert ci["auc"] == [1.0, 1.0]  # the positive outranks every negative in every resample


# ------------------------------------------------------------------------------------------ label files
def _csv(path, text):
    path.write_text(text)
    return str(path)


def test_aliases_and_id_column_preference(tmp_path):
    f = _csv(tmp_path / "l.csv", "name,StudyInstanceUID,ICH,iph,Subdural,SAH,edh,IVH,comment\n"
                                 "a,1.2.3,1,1,0,0,0,1,x\nb,1.2.4,0,0,0,0,0,0,\n")
    ids, labels, info = se.read_labels(f)
    assert info["id_column"] == "StudyInstanceUID" and ids == ["1.2.3", "1.2.4"]  # preferred over name
    assert list(labels) == list(LABELS)
    assert labels["any"].tolist() == [1, 0] and labels["intraparenchymal"].tolist() == [1, 0]
    assert labels["intraventricular"].tolist() == [1, 0] and labels["epidural"].tolist() == [0, 0]
    assert info["sources"]["any"] == "column 'ICH'"


def test_cq500_reader_majority_vote(tmp_path):
    # votes per row for ICH: 1+1+0 -> 1, 1+0+0 -> 0, 0+0+0 -> 0, 1+1+1 -> 1; SDH: one vote in row 1 -> 0
    f = _csv(tmp_path / "reads.csv",
             "name,Category,R1:ICH,R1:SDH,R1:Fracture,R2:ICH,R2:SDH,R2:Fracture,R3:ICH,R3:SDH,R3:Fracture\n"
             "CQ500-CT-0,B1,1,1,0,1,0,0,0,0,1\nCQ500-CT-1,B1,1,0,0,0,0,0,0,0,0\n"
             "CQ500-CT-2,B2,0,0,1,0,0,1,0,0,1\nCQ500-CT-3,B2,1,1,0,1,1,0,1,1,0\n")
    ids, labels, info = se.read_labels(f)
    assert info["id_column"] == "name" and ids[0] == "CQ500-CT-0"
    assert set(labels) == {"any", "subdural"}  # Fracture is not a hemorrhage class
    assert labels["any"].tolist() == [1, 0, 0, 1]
    assert labels["subdural"].tolist() == [0, 0, 0, 1]
    assert info["sources"]["any"] == "majority vote of 3 readers (R1:ICH, R2:ICH, R3:ICH)"


def test_plain_column_wins_over_readers(tmp_path):
    f = _csv(tmp_path / "l.csv", "study,any,R1:ICH,R2:ICH,R3:ICH\ns1,0,1,1,1\ns2,1,0,0,0\n")
    _, labels, info = se.read_labels(f)
    assert labels["any"].tolist() == [0, 1] and "reader columns ignored" in info["sources"]["any"]


def _studies(tmp_path, rows):
    df = pd.DataFrame(rows, columns=["patient_id", "study_uid", "study_folder"] + list(LABELS))
    df["num_series"] = 1  # another column the scorer ignores
    path = tmp_path / "studies.csv"
    df.to_csv(path, index=False)
    return str(path)


def test_matching_by_uid_then_folder(tmp_path):
    pred = _studies(tmp_path, [["P1", "1.2.1", "CQ500CT0", *[0.1] * 6],
                               ["P2", "1.2.2", "studyB", *[0.2] * 6],
                               ["P3", "studyB2", "1.2.1x", *[0.3] * 6]])
    preds = se.read_predictions(pred)
    # "1.2.2" is row 1's uid and "studyB" row 1's folder: one study for two labels is an error
    with pytest.raises(StudyEvalError, match="matched by several label ids"):
        se.match_studies(["1.2.2", "studyB"], preds)
    rows, counts = se.match_studies(["1.2.2", "CQ500-CT-0", "nope", "studyB2"], preds)
    assert rows == [1, 0, None, 2]  # studyB2 is row 2's uid (uid before folder)
    assert counts == {"study_uid": 2, "study_folder": 0, "study_folder (normalised)": 1,
                      "a word of study_folder (normalised)": 0}
    rows, counts = se.match_studies(["studyB"], preds)
    assert rows == [1] and counts["study_folder"] == 1


def test_matching_a_word_of_the_folder(tmp_path):
    """CQ500's archives unpack to folders named twice ("CQ500CT427 CQ500CT427"); its reads name "CQ500-CT-427"."""
    pred = _studies(tmp_path, [["P1", "1.2.1", "CQ500CT427 CQ500CT427", *[0.1] * 6],
                               ["P2", "1.2.2", "CQ500CT42 CQ500CT42", *[0.2] * 6]])
    rows, counts = se.match_studies(["CQ500-CT-42", "CQ500-CT-427"], se.read_predictions(pred))
    assert rows == [1, 0] and counts["a word of study_folder (normalised)"] == 2


def test_ambiguous_folder_is_an_error(tmp_path):
    pred = _studies(tmp_path, [["P1", "1.1", "s", *[0.1] * 6], ["P2", "1.2", "s", *[0.2] * 6]])
    with pytest.raises(StudyEvalError, match="matches 2 studies by study_folder"):
        se.match_studies(["s"], se.read_predictions(pred))


# ------------------------------------------------------------------------------------------ clear errors
def test_clear_errors(tmp_path):
    pred = _studies(tmp_path, [["P1", "1.1", "a", *[0.1] * 6]])
    with pytest.raises(StudyEvalError, match=r"labels file not found: .*nolabels\.csv"):
        se.evaluate_studies(pred, str(tmp_path / "nolabels.csv"))
    lab = _csv(tmp_path / "ok.csv", "study_uid,any\n1.1,1\n")
    with pytest.raises(StudyEvalError, match=r"predictions file not found: .*nostudies\.csv"):
        se.evaluate_studies(str(tmp_path / "nostudies.csv"), lab)
    bad = _csv(tmp_path / "noid.csv", "uid,any\n1.1,1\n")
    with pytest.raises(StudyEvalError, match=r"noid\.csv: no id column .*columns found: uid, any"):
        se.read_labels(bad)
    bad = _csv(tmp_path / "nocls.csv", "study_uid,fracture\n1.1,1\n")
    with pytest.raises(StudyEvalError, match=r"nocls\.csv: no class column.*columns found: study_uid, fracture"):
        se.read_labels(bad)
    bad = _csv(tmp_path / "val.csv", "study_uid,ICH\n1.1,1\n1.2,yes\n")
    with pytest.raises(StudyEvalError, match=r"val\.csv: row 2 \(line 3, id '1\.2'\), column 'ICH': value 'yes'"):
        se.read_labels(bad)
    bad = _csv(tmp_path / "reader.csv", "name,R1:ICH,R2:ICH,R3:ICH\nx,1,2,0\n")
    with pytest.raises(StudyEvalError, match=r"row 1 \(line 2, id 'x'\), column 'R2:ICH': value '2'"):
        se.read_labels(bad)
    bad = _csv(tmp_path / "empty.csv", "study_uid,any\n1.1,\n")
    with pytest.raises(StudyEvalError, match=r"column 'any': value '' is not 0 or 1"):
        se.read_labels(bad)
    other = _csv(tmp_path / "other.csv", "study_uid,any\n9.9,1\n8.8,0\n")
    with pytest.raises(StudyEvalError, match=r"no study matched: none of the 2 ids in .*other\.csv"):
        se.evaluate_studies(pred, other)
    dup = _csv(tmp_path / "dup.csv", "study_uid,any\n1.1,1\n1.1,0\n")
    with pytest.raises(StudyEvalError, match=r"dup\.csv: id column 'study_uid' repeats 1\.1"):
        se.read_labels(dup)


def test_tool_exit_2_logs_the_message(tmp_path):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ppihd")
    logger.addHandler(handler)
    try:
        rc = load_tool("tools/eval_studies.py").main(["--pred", str(tmp_path / "none.csv"), "--labels",
                                                      str(tmp_path / "l.csv"), "--output", str(tmp_path / "o")])
    finally:
        logger.removeHandler(handler)
    assert rc == 2
    assert any("not found" in r.getMessage() and "l.csv" in r.getMessage() for r in records)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ end to end
def test_tool_end_to_end(tmp_path, capsys):
    # Studies s0..s5 carry the hand-worked case for "any" (Y6 / P6 above) and for subdural a perfect ranking;
    # s6 has no usable series (empty probabilities), s7 has no label; label "s9" has no study.
    rows = []
    for k, (pa, psd) in enumerate(zip(P6, [0.8, 0.7, 0.6, 0.3, 0.2, 0.1])):
        rows.append([f"P{k}", f"1.2.{k}", f"s{k}", 0.05, 0.1, 0.1, 0.1, psd, pa])
    rows.append(["P6", "1.2.6", "s6", *[""] * 6])
    rows.append(["P7", "1.2.7", "s7", *[0.5] * 6])
    pred = _studies(tmp_path, rows)
    lab = "study_folder,ICH,SDH,EDH\n" + "".join(f"s{k},{Y6[k]},{Y6[k]},0\n" for k in range(6)) + \
          "s6,1,1,0\ns9,0,0,0\n"
    labels = _csv(tmp_path / "labels.csv", lab)
    out = tmp_path / "eval"
    rc = load_tool("tools/eval_studies.py").main(["--pred", pred, "--labels", labels, "--output", str(out),
                                                  "--bootstrap", "300", "--seed", "1"])
    assert rc == 0
    res = json.loads((out / "study_eval.json").read_text())
    assert res["threshold"] == 0.5 and "p > threshold" in res["rule"]
    assert res["bootstrap"]["resamples"] == 300 and res["bootstrap"]["seed"] == 1
    assert res["id_column"] == "study_folder" and res["matched_by"]["study_folder"] == 7
    assert (res["n_labels"], res["n_matched"], res["n_evaluated"]) == (8, 7, 6)
    assert res["unmatched_labels"] == {"count": 1, "ids": ["s9"]}
    assert res["missing_prediction"] == {"count": 1, "ids": ["s6"]}
    assert res["unmatched_predictions"] == {"count": 1, "ids": ["1.2.7"]}
    assert list(res["classes"]) == ["epidural", "subdural", "any"]
    a = res["classes"]["any"]
    assert (a["n"], a["positives"]) == (6, 3)
    assert a["auc"] == pytest.approx(5 / 6)
    assert (a["sensitivity"], a["specificity"]) == pytest.approx((2 / 3, 2 / 3))
    assert a["youden"]["threshold"] == pytest.approx(0.3) and a["youden"]["sensitivity"] == 1.0
    assert a["ci"]["resamples_used"] <= 300 and a["ci"]["auc"][0] <= 5 / 6 <= a["ci"]["auc"][1]
    assert a["roc"]["thresholds"][0] is None  # +inf start point, stored as null
    assert a["label_source"] == "column 'ICH'"
    sd = res["classes"]["subdural"]
    # p = .8 .7 .6 for the positives, .3 .2 .1 for the negatives: perfect ranking; p > .5 calls exactly the
    # positives; Youden at s = .3 (p > .3 -> the three positives)
    assert sd["auc"] == 1.0 and sd["sensitivity"] == 1.0 and sd["specificity"] == 1.0
    assert sd["youden"]["threshold"] == pytest.approx(0.3) and sd["ci"]["auc"] == [1.0, 1.0]
    ep = res["classes"]["epidural"]
    assert ep["auc"] is None and "only negative" in ep["auc_reason"] and ep["specificity"] == 1.0
    import matplotlib.pyplot as plt

    img = plt.imread(str(out / "roc.png"))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300 and img.std() > 0.05
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    text = capsys.readouterr().out
    assert "subdural" in text and "0.833" in text and "1 labels without a study" in text
