"""SQuAD scoring (hand-worked against the official script's rules, plus real-data checks),
the `squad-eval` command, and the GLUE metrics against scipy / scikit-learn."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.tasks import metrics
from mobilebert_paddle.tasks.metrics import (
    answer_f1,
    apply_na_threshold,
    glue_metrics,
    normalize_answer,
    raw_squad_scores,
    squad_evaluate,
    squad_gold_answers,
    summarize,
)


def squad_json(questions: list[tuple[str, list[str]]]) -> dict:
    """A one-paragraph SQuAD file; each question is (id, gold answer texts); [] = unanswerable."""
    qas = [{"id": qid, "question": "?", "answers": [{"text": text, "answer_start": 0} for text in golds],
            "is_impossible": not golds} for qid, golds in questions]
    return {"version": "test", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


# ---------------------------------------------------------------------------------------------
# Normalisation and per-answer scores
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Cat", "cat"),                          # lower case + leading article
    ("Hello, world!", "hello world"),            # punctuation
    ("a dog", "dog"), ("an apple", "apple"), ("the end", "end"),  # each article
    ("eat a pie and an egg at the inn", "eat pie and egg at inn"),
    ("  lots   of\tspace \n", "lots of space"),  # white space collapsed
    ("theater", "theater"), ("another banana", "another banana"),  # articles only as whole words
    ("the-end", "theend"),                       # punctuation is deleted, not turned into a space
    ("A.B.", "ab"), ("don't", "dont"),
    ("The.", ""), ("A", ""), ("", ""),
    ("“curly” quotes — dash", "“curly” quotes — dash"),  # only ASCII string.punctuation is removed
    ("Ünïcode THE Ärger", "ünïcode ärger"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("gold, prediction, expected", [
    ("the quick brown fox", "quick fox jumps", 2 / 3),  # shared {quick, fox}: P = R = 2/3
    ("x x y", "x", 0.5),                                # P = 1, R = 1/3 -> 2*(1/3)/(4/3)
    ("x x y", "x y y", 2 / 3),                          # token counts are clipped: shared x:1, y:1
    ("Carolina Panthers", "the Panthers", 2 / 3),       # P = 1, R = 1/2
    ("Denver", "Broncos", 0),
    ("", "", 1), ("the", "", 1), ("a", "an", 1),   # both empty after normalisation
    ("", "x", 0), ("x", "", 0),
])
def test_answer_f1(gold, prediction, expected):
    assert answer_f1(gold, prediction) == pytest.approx(expected, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Whole-dataset scores, worked by hand
# ---------------------------------------------------------------------------------------------

MIXED = squad_json([
    ("q1", ["Denver Broncos", "the Denver Broncos"]),
    ("q2", ["Carolina Panthers"]),
    ("q3", []),
    ("q4", []),
    ("q5", ["the", "A"]),   # answers that all normalise to "" -> gold [""], yet it counts as HasAns
])
MIXED_PREDICTIONS = {"q1": "denver broncos!", "q2": "the Panthers", "q3": "", "q4": "something", "q5": ""}
# per question: exact 1, 0, 1, 0, 1 and F1 1, 2/3, 1, 0, 1


def test_squad_evaluate_mixed_by_hand():
    result = squad_evaluate(MIXED, MIXED_PREDICTIONS)
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]
    expected = {"exact": 60.0, "f1": 100 * (11 / 3) / 5, "total": 5,
                "HasAns_exact": 200 / 3, "HasAns_f1": 100 * (8 / 3) / 3, "HasAns_total": 3,
                "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
    assert result == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(result[key], float) for key in result if not key.endswith("total"))
    assert all(type(result[key]) is int for key in result if key.endswith("total"))
    # the "data" list is accepted as well as the whole file
    assert squad_evaluate(MIXED["data"], MIXED_PREDICTIONS) == result


def test_gold_answers_that_normalise_to_empty_are_dropped():
    # "the" is dropped, so an empty prediction no longer matches it; only "Paris" counts
    dataset = squad_json([("q", ["the", "Paris"])])
    assert squad_evaluate(dataset, {"q": ""})["exact"] == 0.0
    assert squad_evaluate(dataset, {"q": "paris."})["exact"] == 100.0
    assert squad_evaluate(squad_json([("q", ["The", "an"])]), {"q": "a"})["f1"] == 100.0  # none left -> [""]


def test_subset_keys_only_when_present():
    answerable_only = squad_json([("a", ["x"]), ("b", ["y"])])
    result = squad_evaluate(answerable_only, {"a": "x", "b": "z"})
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    unanswerable_only = squad_json([("a", []), ("b", [])])
    result = squad_evaluate(unanswerable_only, {"a": "", "b": "z"})
    assert list(result) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert result["exact"] == result["NoAns_f1"] == 50.0


def test_na_prob_threshold_is_strict():
    na_probs = {"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.95, "q5": 0.1}
    # thresh 0.75: q1, q2, q4 are answered with "" -> exact/F1 per question 0, 0, 1(raw), 1, 1(raw)
    result = squad_evaluate(MIXED, MIXED_PREDICTIONS, na_probs, na_prob_thresh=0.75)
    assert (result["exact"], result["f1"]) == pytest.approx((60.0, 60.0))
    assert (result["HasAns_exact"], result["NoAns_exact"]) == pytest.approx((100 / 3, 100.0))
    # thresh 0.8: q2's probability equals it and is not above it, so q2 keeps its raw F1 2/3
    result = squad_evaluate(MIXED, MIXED_PREDICTIONS, na_probs, na_prob_thresh=0.8)
    assert result["f1"] == pytest.approx(100 * (0 + 2 / 3 + 1 + 1 + 1) / 5, rel=1e-12)
    assert result["exact"] == pytest.approx(60.0)


def test_best_threshold_by_hand():
    na_probs = {"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.95, "q5": 0.1}
    result = squad_evaluate(MIXED, MIXED_PREDICTIONS, na_probs)
    assert list(result)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    # sweep from 2 (q3, q4 unanswerable), in order q5 q3 q2 q1 q4:
    # exact 2 -> 3 (q5, 0.1) -> 3 -> 3 -> 4 (q1, 0.9) -> 3 (q4 has a non-empty prediction: -1)
    assert result["best_exact"] == pytest.approx(80.0) and result["best_exact_thresh"] == 0.9
    # F1    2 -> 3 (0.1) -> 3 -> 3 2/3 (0.8) -> 4 2/3 (0.9) -> 3 2/3
    assert result["best_f1"] == pytest.approx(100 * (14 / 3) / 5) and result["best_f1_thresh"] == 0.9


def test_best_threshold_starts_from_all_unanswered_at_zero():
    dataset = squad_json([("a", ["right"]), ("b", [])])
    result = squad_evaluate(dataset, {"a": "wrong", "b": "x"}, {"a": 0.3, "b": 0.6})
    # start 1 (b), then a +0, b -1: never better than the start
    assert result["best_exact"] == 50.0 and result["best_exact_thresh"] == 0.0
    assert result["best_f1"] == 50.0 and result["best_f1_thresh"] == 0.0


def test_best_threshold_ties_keep_file_order():
    dataset = squad_json([("a", ["right"]), ("b", [])])
    predictions = {"a": "right", "b": "x"}
    # equal probabilities: the stable sort keeps the na-prob file's order, and the sweep counts
    # a point between the two tied questions (no real threshold gives 100 here; the official does)
    result = squad_evaluate(dataset, predictions, {"a": 0.5, "b": 0.5})
    assert (result["best_exact"], result["best_exact_thresh"]) == (100.0, 0.5)
    result = squad_evaluate(dataset, predictions, {"b": 0.5, "a": 0.5})
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)  # b -1, a +1: no strict gain


def test_best_threshold_uses_raw_prediction_truthiness():
    # " " normalises to "" (exact 1 for an unanswerable question), but as a non-empty string
    # the official sweep counts it -1 when it passes the threshold
    dataset = squad_json([("a", ["right"]), ("b", [])])
    result = squad_evaluate(dataset, {"a": "right", "b": " "}, {"a": 0.2, "b": 0.1})
    assert result["exact"] == 100.0
    # start 1 (b), b -1 -> 0, a +1 -> 1: no strict gain (counting b as 0 would give 100 at 0.2)
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)


def test_missing_prediction_scores_zero(caplog):
    dataset = squad_json([("q1", ["x"]), ("q2", ["y"]), ("q3", [])])
    with caplog.at_level(logging.WARNING, logger="mobilebert_paddle.tasks.metrics"):
        result = squad_evaluate(dataset, {"q1": "x"}, {"q1": 0.5})
    assert "Missing prediction for q2" in caplog.text and "Missing prediction for q3" in caplog.text
    assert result["total"] == 3 and result["exact"] == pytest.approx(100 / 3)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (50.0, 0.0)
    # a missing question scores 0 at every threshold: the sweep starts at 0 (q3 has no prediction)
    assert (result["best_exact"], result["best_exact_thresh"]) == (pytest.approx(100 / 3), 0.5)


@pytest.mark.parametrize("predictions, na_probs, message", [
    (["x"], None, "must be a JSON object"),
    ({"q1": 3}, None, "prediction for question q1 must be a string"),
    ({"q1": "x"}, {"q1": "high"}, "no-answer probability for question q1"),
    ({"q1": "x"}, {"q1": True}, "no-answer probability for question q1"),
    ({"q1": "x"}, {"q1": float("nan")}, "finite"),
    ({"q1": "x"}, {"other": 0.1}, "no entry for question q1"),
])
def test_bad_predictions_or_probabilities(predictions, na_probs, message):
    with pytest.raises(UserInputError, match=message):
        squad_evaluate(squad_json([("q1", ["x"])]), predictions, na_probs)


@pytest.mark.parametrize("dataset, message", [
    ({"version": "1"}, "no 'data' key"),
    ({"data": [{"title": "t"}]}, "article 0: missing 'paragraphs'"),
    ({"data": [{"paragraphs": [{"qas": [{"answers": []}]}]}]}, "article 0 paragraph 0 question 0: missing 'id'"),
    ({"data": [{"paragraphs": [{"qas": [{"id": "q9", "answers": [{"start": 1}]}]}]}]},
     "question q9 answer 0: missing 'text'"),
    ({"data": [{"paragraphs": [{"qas": [{"id": 7, "answers": []}]}]}]}, "'id' must be a string"),
])
def test_bad_dataset(dataset, message):
    with pytest.raises(UserInputError, match=message):
        squad_evaluate(dataset, {})


# ---------------------------------------------------------------------------------------------
# Real data (../shared/data)
# ---------------------------------------------------------------------------------------------

def load_json(shared_data, name):
    path = shared_data / "squad" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def test_v11_dev_gold_and_empty_predictions(shared_data):
    dataset = load_json(shared_data, "dev-v1.1.json")
    gold = squad_gold_answers(dataset)
    assert len(gold) == 10570
    perfect = squad_evaluate(dataset, {qid: answers[0] for qid, answers in gold.items()})
    assert perfect == {"exact": 100.0, "f1": 100.0, "total": 10570,
                       "HasAns_exact": 100.0, "HasAns_f1": 100.0, "HasAns_total": 10570}
    empty = squad_evaluate(dataset, {qid: "" for qid in gold})
    assert (empty["exact"], empty["f1"]) == (0.0, 0.0)
    # a prediction of one gold answer's last token: exact only where that token is a whole gold answer
    last_words = {qid: answers[0].split()[-1] for qid, answers in gold.items()}
    result = squad_evaluate(dataset, last_words)
    assert 0 < result["exact"] < result["f1"] < 100


def test_v20_dev_counts_and_trivial_predictions(shared_data):
    dataset = load_json(shared_data, "dev-v2.0-reconstructed.json")
    gold = squad_gold_answers(dataset)
    all_empty = squad_evaluate(dataset, {qid: "" for qid in gold})
    assert (all_empty["total"], all_empty["HasAns_total"], all_empty["NoAns_total"]) == (11873, 5928, 5945)
    assert all_empty["exact"] == pytest.approx(100 * 5945 / 11873, rel=1e-12)
    assert (all_empty["HasAns_exact"], all_empty["NoAns_exact"], all_empty["NoAns_f1"]) == (0.0, 100.0, 100.0)
    perfect = squad_evaluate(dataset, {qid: answers[0] if answers else "" for qid, answers in gold.items()})
    assert perfect["exact"] == perfect["f1"] == 100.0
    # every prediction wrong and non-empty: no threshold beats "all unanswered" (start, 0.0)
    wrong = squad_evaluate(dataset, {qid: "zzz" for qid in gold}, {qid: 0.5 for qid in gold})
    assert wrong["best_exact"] == pytest.approx(100 * 5945 / 11873, rel=1e-12)
    assert wrong["best_exact_thresh"] == 0.0 and wrong["exact"] == 0.0


def test_best_threshold_equals_best_real_threshold(shared_data):
    """With distinct probabilities, the sweep equals the best of thresholding at each probability."""
    dataset = load_json(shared_data, "dev-v2.0-first5articles.json")
    gold = squad_gold_answers(dataset)
    rng = np.random.default_rng(0)
    predictions = {}
    for qid, answers in gold.items():  # right, partly right, empty, or wrong
        choice = rng.integers(4)
        text = answers[0] if answers else "no"
        predictions[qid] = [text, " ".join(text.split()[:1] + ["extra"]), "", "wrong"][choice]
    na_probs = {qid: float(value) for qid, value in zip(gold, rng.permutation(len(gold)) / len(gold))}
    result = squad_evaluate(dataset, predictions, na_probs)

    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw = raw_squad_scores(gold, predictions)
    for key, raw in (("exact", exact_raw), ("f1", f1_raw)):
        # "all unanswered" (reported as 0.0), then each probability in increasing order
        thresholds = [-1.0] + sorted(na_probs.values())
        curve = []
        for threshold in thresholds:
            scores = apply_na_threshold(raw, predictions, na_probs, has_answer, threshold)
            curve.append(summarize(scores, scores, list(gold))["exact"])  # 100 x mean of these scores
        best_index = int(np.argmax(curve))  # first maximum
        assert result[f"best_{key}"] == pytest.approx(curve[best_index], rel=1e-12)
        assert result[f"best_{key}_thresh"] == (0.0 if best_index == 0 else thresholds[best_index])
    thresholded = squad_evaluate(dataset, predictions, na_probs, na_prob_thresh=0.5)
    assert thresholded["exact"] <= result["best_exact"] and thresholded["f1"] <= result["best_f1"]


# ---------------------------------------------------------------------------------------------
# `mobilebert squad-eval`
# ---------------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", "squad-eval", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def squad_files(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(MIXED))
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(MIXED_PREDICTIONS))
    na_probs = tmp_path / "null_odds.json"
    na_probs.write_text(json.dumps({"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.95, "q5": 0.1}))
    return data, predictions, na_probs


def test_cli_prints_and_writes_the_official_json(squad_files, tmp_path):
    data, predictions, na_probs = squad_files
    out_file = tmp_path / "out" / "eval.json"
    completed = run_cli(data, predictions, "--na-prob-file", na_probs, "--na-prob-thresh", "0.75",
                        "--out-file", out_file)
    assert completed.returncode == 0, completed.stderr
    expected = squad_evaluate(MIXED, MIXED_PREDICTIONS, json.loads(na_probs.read_text()), na_prob_thresh=0.75)
    assert json.loads(completed.stdout) == expected
    assert list(json.loads(completed.stdout)) == list(expected)
    assert out_file.read_text() == json.dumps(expected)  # byte-for-byte what the official script writes


def test_cli_without_na_probs(squad_files):
    data, predictions, _ = squad_files
    completed = run_cli(data, predictions)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == squad_evaluate(MIXED, MIXED_PREDICTIONS)
    assert "best_exact" not in json.loads(completed.stdout)


@pytest.mark.parametrize("case, message", [
    ("missing data", "SQuAD data file not found"),
    ("invalid json", "invalid JSON at line 1"),
    ("predictions list", "predictions must be a JSON object"),
    ("prediction number", "prediction for question q2 must be a string"),
    ("na-prob string", "no-answer probability for question q1 must be a finite number"),
    ("na-prob incomplete", "no entry for question q3"),
])
def test_cli_bad_input(squad_files, tmp_path, case, message):
    data, predictions, na_probs = squad_files
    bad = tmp_path / "bad.json"
    if case == "missing data":
        data = tmp_path / "absent.json"
    elif case == "invalid json":
        bad.write_text('{"q1": "x",')
        predictions = bad
    elif case == "predictions list":
        bad.write_text('["x"]')
        predictions = bad
    elif case == "prediction number":
        bad.write_text(json.dumps({**MIXED_PREDICTIONS, "q2": 2}))
        predictions = bad
    elif case == "na-prob string":
        bad.write_text(json.dumps({"q1": "x"}))
        na_probs = bad
    elif case == "na-prob incomplete":
        bad.write_text(json.dumps({"q1": 0.1, "q2": 0.2}))
        na_probs = bad
    out_file = tmp_path / "eval.json"
    completed = run_cli(data, predictions, "--na-prob-file", na_probs, "--out-file", out_file)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], completed.stderr
    assert not out_file.exists()


# ---------------------------------------------------------------------------------------------
# GLUE metrics against scipy / scikit-learn
# ---------------------------------------------------------------------------------------------

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, size)
    predictions = np.where(rng.random(size) < 0.7, labels, rng.integers(0, 2, size))
    assert metrics.accuracy(predictions, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
    assert metrics.f1(predictions, labels) == pytest.approx(sklearn_metrics.f1_score(labels, predictions))
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    three_class_labels = rng.integers(0, 3, size)
    three_class_predictions = np.where(rng.random(size) < 0.6, three_class_labels, rng.integers(0, 3, size))
    assert metrics.matthews_corrcoef(three_class_predictions, three_class_labels) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(three_class_labels, three_class_predictions), abs=1e-12)


@pytest.mark.parametrize("predictions, labels", [
    ([1, 1, 1, 1], [0, 1, 0, 1]),   # constant predictions
    ([0, 1, 0, 1], [1, 1, 1, 1]),   # constant labels
    ([0, 0, 0], [0, 0, 0]),         # nothing positive: F1 0 (sklearn's zero_division default)
    ([1, 0, 1], [1, 0, 1]),         # perfect
    ([0, 1, 0], [1, 0, 1]),         # perfectly wrong
])
def test_classification_edge_cases(predictions, labels):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_f1 = sklearn_metrics.f1_score(labels, predictions)
        expected_mcc = sklearn_metrics.matthews_corrcoef(labels, predictions)
    assert metrics.f1(predictions, labels) == pytest.approx(expected_f1)
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(expected_mcc, abs=1e-12)
    if len(set(predictions)) == 1 or len(set(labels)) == 1:
        assert metrics.matthews_corrcoef(predictions, labels) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, 200), 1)            # STS-B-like scores, many ties
    predictions = labels + rng.normal(0, 1.5, 200)
    tied_predictions = np.round(predictions)                 # ties on both sides
    assert metrics.pearson(predictions, labels) == pytest.approx(
        scipy_stats.pearsonr(predictions, labels)[0], abs=1e-12)
    assert metrics.spearman(predictions, labels) == pytest.approx(
        scipy_stats.spearmanr(predictions, labels)[0], abs=1e-12)
    assert metrics.spearman(tied_predictions, labels) == pytest.approx(
        scipy_stats.spearmanr(tied_predictions, labels)[0], abs=1e-12)
    assert metrics.average_ranks(tied_predictions) == pytest.approx(scipy_stats.rankdata(tied_predictions))


def test_constant_correlation_is_zero_not_nan():
    assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert metrics.spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
    with pytest.raises(ValueError, match="equally many"):
        metrics.pearson([1.0, 2.0], [1.0])


def test_glue_metrics_per_task():
    labels, predictions = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 1])
    assert glue_metrics("cola", predictions, labels) == {"mcc": pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions))}
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert glue_metrics(task, predictions, labels) == {"accuracy": pytest.approx(4 / 6)}
    mrpc = glue_metrics("mrpc", predictions, labels)
    assert mrpc == pytest.approx({"accuracy": 4 / 6, "f1": 0.75, "accuracy_and_f1": (4 / 6 + 0.75) / 2})
    assert glue_metrics("qqp", predictions, labels) == mrpc
    scores, predicted_scores = np.array([0.0, 1.2, 2.5, 3.1, 4.8]), np.array([0.3, 1.0, 3.0, 2.9, 4.1])
    stsb = glue_metrics("stsb", predicted_scores, scores)
    assert list(stsb) == ["pearson", "spearman", "pearson_and_spearman"]
    assert stsb["spearman"] == pytest.approx(0.9)   # ranks differ by one swap: 1 - 6*2/(5*24)
    assert stsb["pearson_and_spearman"] == pytest.approx((stsb["pearson"] + 0.9) / 2)
    assert all(type(value) is float for value in stsb.values())
    with pytest.raises(UserInputError, match="unknown GLUE task 'boolq'"):
        glue_metrics("boolq", predictions, labels)
    assert not math.isnan(stsb["pearson"])
