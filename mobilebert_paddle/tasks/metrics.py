"""Task metrics: SQuAD scoring equal to the official evaluation script, and the GLUE metrics.

SQuAD: `squad_evaluate` follows the rules of the official `evaluate-v2.0.py` (which also
scores v1.1 data) and returns the same keys, in the same order, with the same values:

- an answer is normalised by lower-casing, deleting every `string.punctuation` character,
  replacing the whole words a / an / the by a space, and collapsing white space;
- exact match is equality of normalised texts; F1 is over normalised white-space tokens, and
  when either side has no token it is 1 if both are empty, else 0; both take the max over the
  gold answers;
- gold answers that normalise to "" are dropped, and a question left with none has the gold
  list [""] -- this is how an unanswerable question scores: only an empty prediction is right;
- with a no-answer probability per question, a question whose probability exceeds
  `na_prob_thresh` counts as answered with "" (score 1 if unanswerable, else 0);
- `exact`, `f1` are 100 x the mean; `HasAns_*` / `NoAns_*` are added only when that subset is
  non-empty; with probabilities, `best_exact` / `best_f1` and their thresholds come from a
  sweep over the questions sorted by probability, starting from "everything unanswered" with
  threshold 0.0 and moving only on a strict improvement (so ties keep the earliest point).

A missing prediction is logged ("Missing prediction for <qid>") and scores 0 at every
threshold, counted in every total (as `evaluate-v1.1.py` does; `evaluate-v2.0.py` logs the
same line and then fails with a KeyError, so there is no result of its own to match).

GLUE: numpy versions of accuracy, binary F1, Matthews correlation, Pearson and Spearman
(average ranks for ties), and `glue_metrics(task, ...)` which computes the metrics named in
`glue.GLUE_TASKS[task].metrics`. Every function takes `(predictions, labels)`.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import re
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import atomic_write_text, check_creatable_dir, read_json
from .glue import get_glue_task

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# SQuAD: one answer against one gold answer
# --------------------------------------------------------------------------------------------

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)  # whole words only: "theater" stays


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse white space (in this order)."""
    text = text.lower()
    text = "".join(char for char in text if char not in PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def answer_exact_match(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def answer_f1(gold: str, prediction: str) -> float:
    """Token-overlap F1 of two answers (an int 0/1 in the degenerate cases, as the official script)."""
    gold_tokens = answer_tokens(gold)
    predicted_tokens = answer_tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        return int(gold_tokens == predicted_tokens)  # no-answer: right only if both are empty
    shared = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    if shared == 0:
        return 0
    precision = shared / len(predicted_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def scoring_gold_answers(gold_texts: Sequence[str]) -> list[str]:
    """Gold answers as scored: those that normalise to "" are dropped; none left -> [""]."""
    kept = [text for text in gold_texts if normalize_answer(text)]
    return kept or [""]


# --------------------------------------------------------------------------------------------
# SQuAD: input checks (one line naming the file and the record)
# --------------------------------------------------------------------------------------------

def squad_gold_answers(dataset: Any, where: str = "dataset") -> dict[str, list[str]]:
    """{question id: gold answer texts} in file order, from the official JSON or its "data" list.

    Only `id` and `answers[].text` are read, as the official script does. A repeated id keeps
    its last answers (the official script keys by id the same way).
    """
    if isinstance(dataset, Mapping):
        if "data" not in dataset:
            raise UserInputError(f"{where}: no 'data' key (not a SQuAD JSON file)")
        dataset = dataset["data"]
    if not isinstance(dataset, list):
        raise UserInputError(f"{where}: 'data' must be a list of articles")
    gold: dict[str, list[str]] = {}
    for article_index, article in enumerate(dataset):
        paragraphs = _field(article, "paragraphs", list, f"{where}: article {article_index}")
        for paragraph_index, paragraph in enumerate(paragraphs):
            record = f"{where}: article {article_index} paragraph {paragraph_index}"
            for question_index, question in enumerate(_field(paragraph, "qas", list, record)):
                question_record = f"{record} question {question_index}"
                qid = _field(question, "id", str, question_record)
                answers = _field(question, "answers", list, f"{where}: question {qid}")
                gold[qid] = [_field(answer, "text", str, f"{where}: question {qid} answer {number}")
                             for number, answer in enumerate(answers)]
    return gold


def _field(record: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(record, Mapping) or key not in record:
        raise UserInputError(f"{where}: missing '{key}'")
    if not isinstance(record[key], kind):
        raise UserInputError(f"{where}: '{key}' must be a {_json_kind(kind)}, got {_json_kind(type(record[key]))}")
    return record[key]


def _json_kind(kind: type) -> str:
    names = {str: "string", list: "list", dict: "object", int: "number", float: "number", bool: "boolean"}
    return "null" if kind is type(None) else names.get(kind, kind.__name__)


def check_predictions(predictions: Any, where: str = "predictions") -> dict[str, str]:
    """Predictions must be a JSON object {question id: answer text}."""
    if not isinstance(predictions, Mapping):
        raise UserInputError(f"{where}: predictions must be a JSON object {{question id: answer text}}")
    for qid, text in predictions.items():
        if not isinstance(text, str):
            raise UserInputError(f"{where}: prediction for question {qid} must be a string, "
                                 f"got {_json_kind(type(text))}")
    return dict(predictions)


def check_na_probs(na_probs: Any, where: str = "na_probs") -> dict[str, float]:
    """No-answer probabilities must be a JSON object {question id: finite number}."""
    if not isinstance(na_probs, Mapping):
        raise UserInputError(f"{where}: no-answer probabilities must be a JSON object {{question id: number}}")
    for qid, value in na_probs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"{where}: no-answer probability for question {qid} must be a finite "
                                 f"number, got {value!r}")
    return dict(na_probs)


# --------------------------------------------------------------------------------------------
# SQuAD: whole-dataset scores
# --------------------------------------------------------------------------------------------

def raw_squad_scores(gold: Mapping[str, list[str]], predictions: Mapping[str, str]
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question exact and F1 before any threshold; a missing prediction scores 0."""
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    missing = [qid for qid in gold if qid not in predictions]
    for qid in missing[:10]:
        logger.warning("Missing prediction for %s", qid)
    if len(missing) > 10:
        logger.warning("... %d predictions missing in all (each scores 0)", len(missing))
    for qid, gold_texts in gold.items():
        if qid not in predictions:
            exact_scores[qid] = f1_scores[qid] = 0
            continue
        answers = scoring_gold_answers(gold_texts)
        exact_scores[qid] = max(answer_exact_match(answer, predictions[qid]) for answer in answers)
        f1_scores[qid] = max(answer_f1(answer, predictions[qid]) for answer in answers)
    return exact_scores, f1_scores


def apply_na_threshold(scores: Mapping[str, float], predictions: Mapping[str, str],
                       na_probs: Mapping[str, float], has_answer: Mapping[str, bool],
                       na_prob_thresh: float) -> dict[str, float]:
    """A question whose no-answer probability exceeds the threshold is answered with ""."""
    thresholded = {}
    for qid, score in scores.items():
        if qid in predictions and na_probs[qid] > na_prob_thresh:
            score = float(not has_answer[qid])
        thresholded[qid] = score
    return thresholded


def summarize(exact_scores: Mapping[str, float], f1_scores: Mapping[str, float],
              qids: Sequence[str]) -> collections.OrderedDict:
    total = len(qids)
    return collections.OrderedDict([
        ("exact", 100.0 * sum(exact_scores[qid] for qid in qids) / total),
        ("f1", 100.0 * sum(f1_scores[qid] for qid in qids) / total),
        ("total", total),
    ])


def find_best_threshold(scores: Mapping[str, float], predictions: Mapping[str, str],
                        na_probs: Mapping[str, float], has_answer: Mapping[str, bool]
                        ) -> tuple[float, float]:
    """(best score in %, its threshold), sweeping the threshold up through the sorted probabilities.

    Start: every answered question predicted as "" (each unanswerable one scores 1), threshold
    0.0. Passing a question's probability switches it to its own prediction: +score if it has
    an answer, -1 if it is unanswerable and the prediction is a non-empty string (raw text, not
    normalised), else 0. Sorting is stable, so equal probabilities keep the file's order, and
    only a strict improvement moves the best point.
    """
    answered = [qid for qid in scores if qid in predictions]
    current = best = sum(1 for qid in answered if not has_answer[qid])
    best_threshold = 0.0
    for qid in sorted(na_probs, key=lambda key: na_probs[key]):
        if qid not in scores or qid not in predictions:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def squad_evaluate(dataset: Any, predictions: Mapping[str, str],
                   na_probs: Mapping[str, float] | None = None,
                   na_prob_thresh: float = 1.0) -> collections.OrderedDict:
    """Score SQuAD v1.1/v2.0 predictions exactly as the official evaluate-v2.0.py.

    dataset: the parsed official JSON (a dict with "data") or its "data" list.
    predictions: {question id: answer text}; na_probs: {question id: no-answer probability}
    (must cover every predicted question of the dataset). Returns an OrderedDict with exact,
    f1, total, [HasAns_exact, HasAns_f1, HasAns_total], [NoAns_...], and with na_probs
    best_exact, best_exact_thresh, best_f1, best_f1_thresh. Bad input -> UserInputError.
    """
    gold = squad_gold_answers(dataset)
    predictions = check_predictions(predictions)
    if not gold:
        raise UserInputError("dataset: no questions to score")
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    probabilities = {qid: 0.0 for qid in predictions} if na_probs is None else check_na_probs(na_probs)
    uncovered = [qid for qid in gold if qid in predictions and qid not in probabilities]
    if uncovered:
        raise UserInputError(f"na_probs: no entry for question {uncovered[0]} "
                             f"({len(uncovered)} predicted questions have none)")

    exact_raw, f1_raw = raw_squad_scores(gold, predictions)
    exact_scores = apply_na_threshold(exact_raw, predictions, probabilities, has_answer, na_prob_thresh)
    f1_scores = apply_na_threshold(f1_raw, predictions, probabilities, has_answer, na_prob_thresh)
    result = summarize(exact_scores, f1_scores, list(gold))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        subset = [qid for qid in gold if has_answer[qid] == wanted]
        if subset:
            for key, value in summarize(exact_scores, f1_scores, subset).items():
                result[f"{prefix}_{key}"] = value
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = find_best_threshold(
            exact_raw, predictions, probabilities, has_answer)
        result["best_f1"], result["best_f1_thresh"] = find_best_threshold(
            f1_raw, predictions, probabilities, has_answer)
    return result


# --------------------------------------------------------------------------------------------
# `mobilebert squad-eval`: drop-in for the official script
# --------------------------------------------------------------------------------------------

def add_squad_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_file", metavar="DATA.json", help="official SQuAD v1.1/v2.0 JSON (e.g. dev-v2.0.json)")
    parser.add_argument("pred_file", metavar="PREDICTIONS.json", help="JSON object {question id: answer text}")
    parser.add_argument("--na-prob-file", default=None,
                        help="JSON object {question id: no-answer probability}; adds best_exact/best_f1")
    parser.add_argument("--na-prob-thresh", type=flags.number(), default=1.0,
                        help="predict no answer when the no-answer probability is above this")
    parser.add_argument("--out-file", default=None, help="also write the scores here (JSON, as the official script)")


def run_squad_eval(args: argparse.Namespace) -> collections.OrderedDict:
    if args.out_file:   # before scoring: a path that cannot be written fails first, saying why
        check_creatable_dir(Path(args.out_file).absolute().parent)
    dataset = read_json(args.data_file, "SQuAD data file")
    if not isinstance(dataset, dict):
        raise UserInputError(f"{args.data_file}: a SQuAD data file must hold a JSON object with 'data'")
    gold = squad_gold_answers(dataset, where=args.data_file)
    predictions = check_predictions(read_json(args.pred_file, "predictions file"), where=args.pred_file)
    na_probs = None
    if args.na_prob_file:
        na_probs = check_na_probs(read_json(args.na_prob_file, "no-answer probability file"),
                                  where=args.na_prob_file)
        uncovered = [qid for qid in gold if qid in predictions and qid not in na_probs]
        if uncovered:
            raise UserInputError(f"{args.na_prob_file}: no entry for question {uncovered[0]} "
                                 f"({len(uncovered)} predicted questions have none)")
    result = squad_evaluate(dataset, predictions, na_probs, args.na_prob_thresh)
    if args.out_file:
        try:
            atomic_write_text(args.out_file, json.dumps(result))  # exactly what the official writes
        except OSError as error:
            raise UserInputError(f"{args.out_file}: cannot write ({error.strerror or error})") from None
    return result


# --------------------------------------------------------------------------------------------
# GLUE metrics (numpy); inputs are 1-D: label ids for classification, scores for STS-B
# --------------------------------------------------------------------------------------------

def _as_pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(f"need equally many predictions and labels (> 0), got {predictions.size} and {labels.size}")
    return predictions, labels


def accuracy(predictions: Any, labels: Any) -> float:
    predictions, labels = _as_pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions: Any, labels: Any) -> float:
    """Binary F1 of the positive class 1; 0.0 when there is no positive on either side."""
    predictions, labels = _as_pair(predictions, labels)
    true_positives = np.sum((predictions == 1) & (labels == 1))
    wrong = np.sum((predictions == 1) != (labels == 1))  # false positives + false negatives
    denominator = 2 * true_positives + wrong
    return float(2 * true_positives / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004); 0.0 when it is undefined."""
    predictions, labels = _as_pair(predictions, labels)
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true_codes, predicted_codes = codes[:labels.size], codes[labels.size:]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)  # (true, predicted)
    np.add.at(confusion, (true_codes, predicted_codes), 1.0)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    covariance = correct * total - predicted_counts @ true_counts
    variance_predicted = total ** 2 - predicted_counts @ predicted_counts
    variance_true = total ** 2 - true_counts @ true_counts
    if variance_predicted == 0 or variance_true == 0:
        return 0.0  # a constant side: no correlation to measure
    return float(covariance / math.sqrt(variance_predicted * variance_true))


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation; 0.0 when one side is constant (scipy would give nan)."""
    predictions, labels = _as_pair(predictions, labels)
    x = predictions.astype(np.float64) - predictions.mean(dtype=np.float64)
    y = labels.astype(np.float64) - labels.mean(dtype=np.float64)
    scale = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / scale) if scale else 0.0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of their ranks (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], values.size]                                          # one past its last index
    group_rank = (starts + ends + 1) / 2.0                                          # mean of ranks start+1..end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(predictions: Any, labels: Any) -> float:
    predictions, labels = _as_pair(predictions, labels)
    return pearson(average_ranks(predictions), average_ranks(labels))


METRIC_FUNCTIONS = {"mcc": matthews_corrcoef, "accuracy": accuracy, "f1": f1,
                    "pearson": pearson, "spearman": spearman}
# The GLUE benchmark scores a task with two metrics by their mean.
COMBINED_METRICS = {"accuracy_and_f1": ("accuracy", "f1"), "pearson_and_spearman": ("pearson", "spearman")}


def glue_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """The metrics of a GLUE task (names from glue.GLUE_TASKS[task].metrics), as Python floats.

    predictions / labels: label ids for classification tasks, scores for stsb.
    """

    results: dict[str, float] = {}
    for name in get_glue_task(task).metrics:
        if name in COMBINED_METRICS:
            first, second = COMBINED_METRICS[name]
            results[name] = (results[first] + results[second]) / 2
        else:
            results[name] = METRIC_FUNCTIONS[name](predictions, labels)
    return results
