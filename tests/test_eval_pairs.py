"""`portrait eval pairs` and `portrait calibrate`: what a reviewer reads. Pairs files with
fold and group columns are written at test time over the test data's photos."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from portrait import evaluation
from portrait.pipeline import CALIBRATION
from portrait.settings import Settings
from portrait.stages.fusion import Fusion, learn

DF = "images/deepface"
FR = "images/face_recognition/examples"
# (img_a, img_b, same_person, fold, group); img1-img7 of deepface are labelled in pairs.csv.
PAIRS = [
    (f"{DF}/img1.jpg", f"{DF}/img2.jpg", 1, 1, "a"),
    (f"{DF}/img1.jpg", f"{DF}/img4.jpg", 1, 2, "a"),
    (f"{DF}/img1.jpg", f"{DF}/img5.jpg", 1, 1, "a"),
    (f"{DF}/img1.jpg", f"{DF}/img3.jpg", 0, 2, "a"),
    (f"{DF}/img1.jpg", f"{DF}/img8.jpg", 0, 1, "a"),
    (f"{DF}/img1.jpg", f"{DF}/img9.jpg", 0, 2, "a"),
    (f"{FR}/obama.jpg", f"{FR}/obama2.jpg", 1, 1, "b"),
    (f"{FR}/obama.jpg", f"{FR}/obama-480p.jpg", 1, 2, "b"),
    (f"{FR}/obama2.jpg", f"{FR}/obama-720p.jpg", 1, 1, "b"),
    (f"{FR}/obama.jpg", f"{FR}/biden.jpg", 0, 2, "b"),
    (f"{FR}/obama2.jpg", f"{FR}/biden.jpg", 0, 1, "b"),
    (f"{FR}/biden.jpg", f"{FR}/alex-lacamoire.png", 0, 2, "b"),
    (f"{FR}/obama.jpg", f"{FR}/knn_examples/test/obama_and_biden.jpg", 1, 1, "b"),  # a group photo: refused
    (f"{FR}/obama.jpg", "README.md", 1, 2, "b"),  # not an image: an error, not a refusal
]


def _write_pairs(path, rows, columns=("img_a", "img_b", "same_person", "fold", "group")):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(row[: len(columns)] for row in rows)
    return path


def test_wilson_interval_holds_at_zero_and_small_counts():
    low, high = evaluation.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = evaluation.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert evaluation.wilson_interval(0, 0) is None


def test_pad_error_rates_carry_intervals_from_the_counts():
    is_attack = np.array([True] * 4 + [False] * 10)
    accepted_live = np.array([True, False, False, False] + [True] * 10)
    kinds = np.array(["print"] * 4 + ["unspecified"] * 10)
    rates = evaluation.pad_error_rates(is_attack, accepted_live, kinds)
    assert rates["apcer"] == 0.25 and rates["apcer_ci95"] == evaluation.wilson_interval(1, 4)
    assert rates["bpcer"] == 0.0 and rates["bpcer_ci95"] == evaluation.wilson_interval(0, 10)
    assert rates["bpcer_ci95"][1] > 0.27  # no live sample rejected of ten still allows a rate over a quarter


def test_error_rates_and_differentials():
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.1, -np.inf])
    same = np.array([True, True, True, False, False, True])
    rates = evaluation.error_rates(scores, same, 0.5)
    assert (rates["false_matches"], rates["impostor_pairs"]) == (1, 2)
    assert (rates["false_non_matches"], rates["genuine_pairs"]) == (2, 4)  # the refused pair is a non-match
    assert rates["fmr_ci95"][0] < rates["fmr"] < rates["fmr_ci95"][1]
    ratios = evaluation.differentials({"x": {"fmr": 0.01, "fnmr": 0.02}, "y": {"fmr": 0.04, "fnmr": 0.0}})
    assert ratios["fmr_max_over_min"] == 4.0 and ratios["fnmr_max_over_min"] is None


def test_det_curve_counts_each_side():
    fmr, fnmr = evaluation.det_curve(np.array([0.6, 0.8, 0.9]), np.array([0.1, 0.7]))
    # thresholds 0.1, 0.6, 0.7, 0.8, 0.9
    np.testing.assert_allclose(fmr, [1.0, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(fnmr, [0.0, 0.0, 1 / 3, 1 / 3, 2 / 3])


def test_assigned_folds_are_balanced_and_fixed():
    folds = evaluation.assign_folds(1848)
    assert np.bincount(folds).tolist() == [185] * 8 + [184] * 2
    np.testing.assert_array_equal(folds, evaluation.assign_folds(1848))


def test_fusion_weights_favour_the_score_that_separates_and_survive_the_record():
    rng = np.random.default_rng(0)
    same = np.arange(400) < 100
    good = np.where(same, 0.6, 0.1) + rng.normal(0, 0.1, 400)
    poor = np.where(same, 0.3, 0.1) + rng.normal(0, 0.1, 400)
    fusion = learn(good, poor, same)
    assert fusion.weights[0] > fusion.weights[1] and sum(fusion.weights) == pytest.approx(1.0)
    again = Fusion.from_record(json.loads(json.dumps(fusion.to_record())))
    np.testing.assert_allclose(again(good, poor), fusion(good, poor), atol=1e-3)


@pytest.fixture(scope="module")
def offline(model_repository):
    from portrait.offline import Offline

    return Offline(Settings(model_repository=model_repository))


def test_eval_pairs_reads_folds_groups_refusals_and_errors(offline, testdata, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    pairs = _write_pairs(tmp_path / "pairs.csv", PAIRS)
    plot, scores_csv = tmp_path / "det.png", tmp_path / "scores.csv"
    report = offline.eval_pairs(pairs, testdata, plot=plot, scores_csv=scores_csv, by="group")

    assert report["refusals"]["pairs"] == 1
    assert report["refusals"]["images"] == {f"{FR}/knn_examples/test/obama_and_biden.jpg": "multiple_faces"}
    assert report["errors"]["pairs"] == 1 and list(report["errors"]["images"]) == ["README.md"]
    assert report["far_resolution"] == pytest.approx(1 / report["impostor"], abs=1e-6)
    assert set(report["scores"]) == {"sface", "dlib", "fused"}
    for score in report["scores"].values():
        assert [t["far_target"] for t in score["tar_at_far"]] == [1e-3, 1e-4]
        assert all(t["far_resolution"] == report["far_resolution"] for t in score["tar_at_far"])
        assert score["accuracy_10fold"]["folds"] == 2
    assert report["folds"] == {"count": 2, "from": "the file's fold column"}
    assert set(report["fused_cross_validated"]["accuracy_10fold"]) == {"sface", "dlib", "fused"}

    groups = report["by_group"]["groups"]
    assert set(groups) == {"a", "b"}
    assert groups["a"]["genuine_pairs"] == 3 and groups["a"]["impostor_pairs"] == 3
    assert groups["b"]["genuine_pairs"] == 5 and groups["b"]["impostor_pairs"] == 3
    assert groups["b"]["false_non_matches"] >= 2  # the refused and the unreadable pair
    for group in groups.values():
        for rate in ("fmr", "fnmr"):
            low, high = group[f"{rate}_ci95"]
            assert low <= group[rate] <= high
    assert "fnmr_max_over_min" in report["by_group"] and "fmr_max_over_min" in report["by_group"]

    with scores_csv.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(PAIRS)
    assert {"sface", "dlib", "fused", "decision", "fold", "group"} <= set(written[0])
    assert [r["decision"] for r in written[-2:]] == ["refused", "refused"]
    genuine = written[0]
    assert float(genuine["sface"]) > report["scores"]["sface"]["threshold"] and genuine["decision"] == "match"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_pairs_without_fold_column_assigns_folds_and_refuses_unknown_group(offline, testdata, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.csv", PAIRS[:12], ("img_a", "img_b", "same_person"))
    report = offline.eval_pairs(pairs, testdata)
    assert report["folds"]["from"].startswith("assigned") and report["refusals"]["pairs"] == 0
    with pytest.raises(ValueError, match="no 'group' column"):
        offline.eval_pairs(pairs, testdata, by="group")


def test_plot_without_matplotlib_is_one_clear_error(offline, testdata, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    pairs = _write_pairs(tmp_path / "pairs.csv", PAIRS[:12])
    from portrait.plots import PlotUnavailable

    with pytest.raises(PlotUnavailable, match=r"pip install 'portrait\[plot\]'"):
        offline.eval_pairs(pairs, testdata, plot=tmp_path / "det.png")


def test_calibrate_writes_each_score_and_keeps_other_records(offline, testdata, tmp_path):
    record = tmp_path / "calibration.json"
    shutil.copyfile(CALIBRATION, record)
    kept = {k: v for k, v in json.loads(record.read_text()).items() if k not in ("match", "calibrated_at")}
    pairs = _write_pairs(tmp_path / "pairs.csv", PAIRS[:12])
    result = offline.calibrate(pairs, testdata, 1e-3, record)
    written = json.loads(record.read_text())
    match = written["match"]
    assert match["score"] in ("sface", "fused") and match["threshold"] == match["thresholds"][match["score"]]
    assert set(match["thresholds"]) == {"sface", "dlib", "fused"}
    assert match["data"] == "pairs.csv (12 pairs)" and match["impostor_pairs"] == 6 and match["genuine_pairs"] == 6
    assert "optimistic" in match["optimism"] and {e["name"] for e in match["embedders"]} == {"sface", "dlib_resnet"}
    assert written["match_threshold"] == match["thresholds"]["sface"] == result["match_threshold"]
    assert {k for k in kept if k not in written} == set()  # other decisions' records survive


def test_a_recorded_far_threshold_refuses_the_impostor_it_sits_just_above():
    """The FAR point sits a hair over an impostor's score; kept to the record's 4 decimals by
    plain rounding (3.5722), this shipped threshold accepted that impostor."""
    impostor = np.array([3.572215, 1.0, 0.5])
    threshold = evaluation.threshold_at_far(impostor, 1e-4)
    kept = evaluation.recorded(threshold)
    assert round(threshold, 4) < impostor.max()  # what plain rounding would have kept
    assert kept == round(kept, 4) and kept >= threshold and not (impostor >= kept).any()
    assert evaluation.recorded(0.25) == 0.25 and evaluation.recorded(-0.53734) == -0.5373
