"""`mobilebert evaluate` / `predict` and the evaluation code path the trainer shares with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_tasks import FILLERS, make_tiny_model_dir, run_cli, write_marker_squad, write_mnli_dev

from mobilebert_paddle.inference import load as inference_load
from mobilebert_paddle.tasks.metrics import glue_metrics, squad_evaluate


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny QA model fine-tuned on the one-marker task (learnt in ~60 steps): (run dir, dev file)."""
    from mobilebert_paddle.cli import main

    root = tmp_path_factory.mktemp("qa")
    base = make_tiny_model_dir(root / "base")
    # 24-word contexts fill the 32-token windows, so every position embedding gets trained.
    train = write_marker_squad(root / "train.json", 640, seed=1, markers=1, length=24)
    dev = write_marker_squad(root / "dev.json", 100, seed=2, markers=1, length=24)
    code = main([str(arg) for arg in [
        "finetune", "squad1", "--model", base, "--train", train, "--dev", dev, "--output", root / "run",
        "--max-seq-length", 32, "--max-query-length", 8, "--doc-stride", 8, "--batch-size", 32, "--epochs", 6,
        "--learning-rate", 2e-3, "--eval-steps", 20, "--device", "cpu"]])
    assert code == 0
    return root / "run", dev


@pytest.fixture(scope="module")
def mnli_model(tmp_path_factory) -> Path:
    """An (untrained) MNLI classifier saved as fine-tuning saves one."""
    from tiny_tasks import make_tokenizer

    from mobilebert_paddle.model.network import MobileBertForSequenceClassification
    from mobilebert_paddle.tasks.glue import id2label

    root = tmp_path_factory.mktemp("mnli")
    model = MobileBertForSequenceClassification.from_pretrained(make_tiny_model_dir(root / "base"),
                                                                id2label=id2label("mnli"))
    model.config.extra["finetuning_task"] = "mnli"
    model.save_pretrained(root / "model", tokenizer=make_tokenizer())
    return root / "model"


QA_FLAGS = ["--max-seq-length", 32, "--max-query-length", 8, "--doc-stride", 8, "--device", "cpu"]


def test_evaluate_reproduces_the_training_time_evaluation(qa_run, tmp_path, capsys):
    """One code path: `evaluate` on best/ gives the metrics and predictions training recorded."""
    run, dev = qa_run
    code, summary, err = run_cli(capsys, ["evaluate", "squad1", "--model", run / "best", "--data", dev,
                                          "--output", tmp_path / "eval", *QA_FLAGS])
    assert code == 0, err
    recorded = json.loads((run / "best" / "metrics.json").read_text())
    recorded.pop("step")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == recorded == summary["metrics"]
    assert recorded["exact"] >= 80                       # the fixture's model did learn
    for name in ("predictions.json", "nbest_predictions.json", "null_odds.json"):
        assert (tmp_path / "eval" / name).read_text() == (run / "best" / name).read_text(), name


def test_evaluate_squad2_reports_the_chosen_threshold_and_best_thresholds(qa_run, tmp_path, capsys):
    run, _ = qa_run
    dev = write_marker_squad(tmp_path / "dev-v2.json", 60, seed=5, markers=1, unanswerable_share=0.4)
    threshold = 0.5
    code, summary, err = run_cli(capsys, ["evaluate", "squad2", "--model", run / "best", "--data", dev,
                                          "--output", tmp_path / "eval", "--null-score-diff-threshold", threshold,
                                          *QA_FLAGS])
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predictions = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    null_odds = json.loads((tmp_path / "eval" / "null_odds.json").read_text())
    # Predictions are "" exactly where null score - best span score exceeds the threshold ...
    assert all((predictions[qid] == "") == (null_odds[qid] > threshold) for qid in predictions)
    # ... and the metrics are the official rules applied to the written files at that threshold.
    official = squad_evaluate(json.loads(dev.read_text()), predictions, null_odds, na_prob_thresh=threshold)
    assert metrics == {**official, "null_score_diff_threshold": threshold}
    assert {"HasAns_exact", "NoAns_exact", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(metrics)
    assert summary["main_metric"] == "f1"


def test_evaluate_mnli_scores_matched_and_mismatched(mnli_model, tmp_path, capsys):
    matched = write_mnli_dev(tmp_path / "dev_matched.tsv", 30, seed=1)
    mismatched = write_mnli_dev(tmp_path / "dev_mismatched.tsv", 20, seed=2)
    code, summary, err = run_cli(capsys, ["evaluate", "mnli", "--model", mnli_model, "--data", matched, mismatched,
                                          "--output", tmp_path / "eval", "--max-seq-length", 32, "--device", "cpu"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"matched_accuracy", "mismatched_accuracy"}
    assert summary["main_metric"] == "matched_accuracy"
    labels = ("contradiction", "entailment", "neutral")
    for name, path in (("matched", matched), ("mismatched", mismatched)):
        gold = [line.split("\t")[-1] for line in path.read_text().splitlines()[1:]]
        written = [line.split("\t") for line in (tmp_path / "eval" / f"{name}_predictions.tsv").read_text().splitlines()]
        assert written[0] == ["index", "prediction"] and len(written) == len(gold) + 1
        predicted = [labels.index(label) for _, label in written[1:]]
        expected = glue_metrics("mnli", predicted, [labels.index(label) for label in gold])["accuracy"]
        assert metrics[f"{name}_accuracy"] == expected


def test_predict_answers_from_a_long_context_cut_into_windows(qa_run, capsys):
    run, _ = qa_run
    rng = np.random.default_rng(0)
    words = [str(word) for word in rng.choice(FILLERS, size=60)]
    words[47:49] = ["m4", "w13"]                        # the answer sits in a later window
    code, answer, err = run_cli(capsys, ["predict", "--model", run / "best", "--question", "what follows m4 ?",
                                         "--context", " ".join(words), "--top-k", 2, *QA_FLAGS])
    assert code == 0, err
    assert answer["windows"] > 3 and answer["answer"] == "w13" and not answer["no_answer"]
    assert len(answer["candidates"]) == 2 and answer["candidates"][0]["text"] == "w13"
    assert answer["candidates"][0]["probability"] >= answer["candidates"][1]["probability"]


def test_predict_classifies_a_text_pair(mnli_model, capsys):
    code, result, err = run_cli(capsys, ["predict", "--model", mnli_model, "--text", "the w1 is red",
                                         "--text-pair", "a w2 is blue", "--top-k", 3, "--max-seq-length", 32,
                                         "--device", "cpu"])
    assert code == 0, err
    assert [entry["label"] for entry in result["labels"]] == sorted(
        ("contradiction", "entailment", "neutral"), key=lambda label: -next(
            entry["probability"] for entry in result["labels"] if entry["label"] == label))
    assert result["label"] == result["labels"][0]["label"]
    assert sum(entry["probability"] for entry in result["labels"]) == pytest.approx(1.0)


def test_other_backends_plug_in_through_load_predictor(qa_run, tmp_path, capsys, monkeypatch):
    """--backend X calls inference.load.load_predictor(model_dir, X); whatever it returns
    is scored by the same windows, post-processing and metric."""
    run, dev = qa_run
    model = inference_load.load_inference_model(str(run / "best"), "MobileBertForQuestionAnswering")
    calls = []

    def load_predictor(directory, backend):
        calls.append((Path(directory), backend))
        return lambda batch: model.predictor(batch)       # numpy in, numpy out

    monkeypatch.setattr(inference_load, "load_predictor", load_predictor)
    code, summary, err = run_cli(capsys, ["evaluate", "squad1", "--model", run / "best", "--data", dev,
                                          "--output", tmp_path / "eval", "--backend", "onnx", *QA_FLAGS])
    assert code == 0, err
    assert calls == [(run / "best", "onnx")]
    recorded = json.loads((run / "best" / "metrics.json").read_text())
    assert summary["metrics"] == {key: value for key, value in recorded.items() if key != "step"}


@pytest.mark.slow
def test_evaluate_on_openvino_scores_as_eager(qa_run, tmp_path, capsys):
    """`evaluate --backend openvino` on the trained model dir (exported to OpenVINO IR in memory,
    run in float32): the same metrics and predictions training recorded with eager Paddle."""
    pytest.importorskip("openvino")
    assert_scores_as_recorded("openvino", qa_run, tmp_path, capsys)


def assert_scores_as_recorded(backend: str, qa_run, tmp_path, capsys) -> None:
    """`evaluate --backend BACKEND` on the run's best/ gives the metrics and predictions.json
    training recorded there with eager Paddle."""
    run, dev = qa_run
    code, summary, err = run_cli(capsys, ["evaluate", "squad1", "--model", run / "best", "--data", dev,
                                          "--output", tmp_path / "eval", "--backend", backend, *QA_FLAGS])
    assert code == 0, err
    recorded = json.loads((run / "best" / "metrics.json").read_text())
    recorded.pop("step")
    assert summary["backend"] == backend and summary["metrics"] == recorded
    assert (tmp_path / "eval" / "predictions.json").read_text() == (run / "best" / "predictions.json").read_text()


def test_evaluate_on_litert_scores_as_eager(qa_run, tmp_path, capsys):
    """`evaluate --backend litert` on the trained model dir (converted to a .tflite in memory at
    the model's max_seq_length, run by ai-edge-litert): the metrics and predictions training
    recorded with eager Paddle. An export at 32 tokens refuses 48-token windows in one line."""
    pytest.importorskip("litert_torch")
    assert_scores_as_recorded("litert", qa_run, tmp_path, capsys)
    run, dev = qa_run
    code, _, err = run_cli(capsys, ["export", "--model", run / "best", "--format", "litert", "--output",
                                    tmp_path / "litert"])
    assert code == 0, err
    code, _, err = run_cli(capsys, ["evaluate", "squad1", "--model", tmp_path / "litert", "--data", dev,
                                    "--output", tmp_path / "eval48", "--backend", "litert",
                                    "--max-seq-length", 48, *QA_FLAGS[2:]])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a row of 48 tokens is longer than the LiteRT export's longest signature (32)" in err


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "mnli", "--model", "{qa}", "--data", "{dev}", "--output", "{out}"],
     "the model is a MobileBertForQuestionAnswering; this needs a fine-tuned MobileBertForSequenceClassification"),
    (["predict", "--model", "{qa}", "--text", "w1 w2"], "this needs a fine-tuned MobileBertForSequenceClassification"),
    (["predict", "--model", "{qa}", "--question", "what follows m1 ?"], "--context is missing or empty"),
    (["predict", "--model", "{qa}", "--question", "q", "--context", "c", "--text", "t"], "not both"),
    (["evaluate", "squad1", "--model", "{qa}", "--data", "{tsv}", "--output", "{out}"], "invalid JSON at line 1"),
    (["evaluate", "squad1", "--model", "{base}", "--data", "{dev}", "--output", "{out}"],
     "the model is a MobileBertModel; this needs a fine-tuned MobileBertForQuestionAnswering"),
    (["evaluate", "squad1", "--model", "{qa}", "--data", "{dev}", "--output", "{dev}/out"], "not writable"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, qa_run, tmp_path, capsys):
    run, dev = qa_run
    tsv = write_mnli_dev(tmp_path / "dev.tsv", 3, seed=0)
    places = {"qa": run / "best", "dev": dev, "tsv": tsv, "out": tmp_path / "out", "base": run.parent / "base"}
    code, _, err = run_cli(capsys, [arg.format(**places) for arg in argv] + QA_FLAGS)
    assert code == 2
    assert expected in err.strip().splitlines()[-1] and "Traceback" not in err
