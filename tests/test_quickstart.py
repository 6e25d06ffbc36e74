"""`mobilebert quickstart`: the offline main job learns, within the time limit, and says where
everything is.

One real run of the command as a subprocess (module fixture, ~1-1.5 min on 2 CPU cores)
backs most tests here: exit 0, one JSON document on stdout, EM from ~0 before training to
>= 80 after, every artifact present and usable, and the numbers consistent with the files
(the official-rule metric recomputed from predictions.json, `predict` agreeing with
`evaluate`). The generator and the bad-input checks are tested in-process, in milliseconds.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_tasks import load_benchmark, run_cli

from mobilebert_paddle.tools import quickstart

TIME_LIMIT_SECONDS = 180            # the bound for the whole command on 2 CPU cores


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> dict:
    """`python -m mobilebert_paddle quickstart --output DIR` once, as a user runs it."""
    output = tmp_path_factory.mktemp("quickstart") / "out"
    completed = subprocess.run([sys.executable, "-m", "mobilebert_paddle", "quickstart", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    return {"output": output, "code": completed.returncode, "stdout": completed.stdout,
            "stderr": completed.stderr}


@pytest.fixture(scope="module")
def summary(quickstart_run) -> dict:
    assert quickstart_run["code"] == 0, quickstart_run["stderr"][-3000:]
    return json.loads(quickstart_run["stdout"])      # the whole of stdout is one JSON document


# ----- the run ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_learns_from_about_zero_to_at_least_80(summary):
    assert summary["before_training"]["exact"] <= 20, summary["before_training"]
    assert summary["exact"] >= 80, summary
    assert summary["f1"] >= summary["exact"]
    assert summary["training"]["steps"] > 0 and summary["training"]["last_loss"] < 0.5


@pytest.mark.slow
def test_finishes_within_the_time_limit(summary):
    assert 0 < summary["seconds"] <= TIME_LIMIT_SECONDS


@pytest.mark.slow
def test_stdout_is_only_the_summary_and_stderr_tells_each_step(quickstart_run, summary):
    assert quickstart_run["stdout"].strip().startswith("{") and quickstart_run["stdout"].strip().endswith("}")
    for step in range(1, 7):
        assert f"quickstart {step}/6:" in quickstart_run["stderr"]
    written = json.loads((quickstart_run["output"] / "quickstart.json").read_text(encoding="utf-8"))
    assert written == summary


@pytest.mark.slow
def test_every_artifact_exists(summary, quickstart_run):
    artifacts = summary["artifacts"]
    for name, path in artifacts.items():
        assert Path(path).exists(), name
        assert Path(path).resolve().is_relative_to(quickstart_run["output"].resolve()), name
    for model_dir in (artifacts["start_model"], artifacts["best_model"]):
        assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in Path(model_dir).iterdir()}
    assert not list(quickstart_run["output"].rglob("*.tmp")), "a temporary file was left behind"


@pytest.mark.slow
def test_best_model_loads_and_predict_agrees_with_evaluate(summary):
    from mobilebert_paddle.inference.load import load_inference_model
    from mobilebert_paddle.tasks.base import QA_HEAD

    model = load_inference_model(summary["artifacts"]["best_model"], QA_HEAD)
    assert model.architecture == QA_HEAD and model.config.num_hidden_layers == 2
    dev = json.loads(Path(summary["artifacts"]["dev_data"]).read_text(encoding="utf-8"))
    predictions = json.loads(Path(summary["artifacts"]["predictions"]).read_text(encoding="utf-8"))
    first = dev["data"][0]["paragraphs"][0]["qas"][0]
    sample = summary["sample"]
    assert sample["question"] == first["question"] and sample["gold"] == first["answers"][0]["text"]
    assert sample["predicted"] == predictions[first["id"]]        # `predict` and `evaluate`: one code path
    assert sample["correct"] == (sample["predicted"] == sample["gold"])


@pytest.mark.slow
def test_reported_scores_are_the_metric_of_the_written_predictions(summary):
    from mobilebert_paddle.tasks.metrics import squad_evaluate

    dev = json.loads(Path(summary["artifacts"]["dev_data"]).read_text(encoding="utf-8"))
    predictions = json.loads(Path(summary["artifacts"]["predictions"]).read_text(encoding="utf-8"))
    scores = squad_evaluate(dev, predictions)
    assert scores["total"] == quickstart.question_count(dev) == len(predictions)
    assert (scores["exact"], scores["f1"]) == pytest.approx((summary["exact"], summary["f1"]))


@pytest.mark.slow
def test_training_log_shows_the_learning_curve(summary):
    lines = [json.loads(line) for line in Path(summary["artifacts"]["metrics_log"]).read_text().splitlines()]
    evals = [line for line in lines if line["kind"] == "eval"]
    assert len(evals) >= 2 and evals[-1]["step"] == summary["training"]["steps"]
    assert evals[0]["exact"] < 80 <= max(line["exact"] for line in evals)
    assert any(line["kind"] == "train" for line in lines)


@pytest.mark.slow
def test_the_next_predict_command_runs(summary, capsys):
    argv = shlex.split(summary["next"][0])
    assert argv[:2] == ["mobilebert", "predict"]
    code, answer, _ = run_cli(capsys, argv[1:])
    assert code == 0 and answer["answer"] == "baker"


@pytest.mark.slow
def test_export_accuracy_benchmark_on_the_trained_model(summary):
    """benchmarks/export_accuracy.py (the README's int8 table) on the quickstart's model: the
    float32 exports score as eager does, and int8 and the 8-bit-activation study run through
    the same evaluation."""
    benchmark = load_benchmark("export_accuracy")
    artifacts = summary["artifacts"]
    report = benchmark.score_model(Path(artifacts["best_model"]), Path(artifacts["dev_data"]), "squad1",
                                   batch_size=64, activation_study=True, exports=benchmark.DEFAULT_EXPORTS)
    results = report["results"]
    assert report["windows"] >= 300 and results["eager"]["argmax_agreement_pct"] == 100.0
    assert abs(results["eager"]["exact"] - summary["exact"]) <= 0.005 + 1e-9    # the report rounds to 0.01
    for name in ("onnx", "onnx-fused", "paddle-fused", "openvino", "openvino-fused"):
        assert results[name]["argmax_agreement_pct"] >= 99.5, (name, results[name])
        assert abs(results[name]["exact"] - results["eager"]["exact"]) <= 0.5, (name, results[name])
    rounded = [f"eager-8bit-inputs-per-{granularity}" for granularity in benchmark.ACTIVATION_GRANULARITIES]
    for name in ("onnx-int8", "onnx-fused-int8", "openvino-int8-static", "openvino-fused-int8-static", *rounded):
        assert 90 <= results[name]["argmax_agreement_pct"] < 100 + 1e-9, (name, results[name])


def test_8_bit_rounding_of_the_activation_study():
    rounding = load_benchmark("export_accuracy").round_to_uint8
    values = np.array([[0.0, 0.001], [-1.0, 0.003], [2.55, 0.002]])     # a wide and a narrow channel
    step = 3.55 / 255                                                    # one range for the whole tensor
    per_tensor = rounding(values, None)
    assert np.abs(per_tensor - values).max() <= step / 2 + 1e-12
    assert np.abs(per_tensor - values)[:, 1].max() > 1e-3               # the narrow channel is lost in it
    per_channel = rounding(values, 0)                                    # each column its own 255 steps
    assert np.abs(per_channel - values)[:, 1].max() <= 0.003 / 255 / 2 + 1e-12
    assert np.abs(rounding(values, 1) - values)[0].max() <= 0.001 / 255 / 2 + 1e-12   # per row: row 0 alone


# ----- the data --------------------------------------------------------------------------------

def test_dataset_is_squad_v1_with_real_spans_next_to_the_name(tmp_path):
    from mobilebert_paddle.tasks.squad import read_squad

    dataset = quickstart.make_squad_dataset(60, seed=3, title="t")
    assert dataset["version"] == "1.1" and quickstart.question_count(dataset) >= 60
    path = tmp_path / "train.json"
    path.write_text(json.dumps(dataset), encoding="utf-8")
    examples = read_squad(path, training=True)
    assert len(examples) == quickstart.question_count(dataset) and not examples.skipped_ids
    for example in examples:
        (answer,) = example.answers
        words = example.context.replace(".", " .").split()
        asked = example.question.rstrip("?").split()[-1]          # the name (or job) asked about
        start = len(example.context[:answer["answer_start"]].replace(".", " .").split())
        assert words[start] == answer["text"]
        assert asked in (words[start - 1], words[start + 1])       # the answer is its neighbour


def test_each_paragraph_needs_the_person_not_only_the_kind_of_answer():
    """Every kind of fact is asked about each person, with different answers: knowing the
    kind ("a job") leaves PEOPLE_PER_PARAGRAPH candidates, so EM >= 80 needs the person."""
    import re

    patterns = {kind: [re.compile(re.escape(template).replace(re.escape("{first}"), r"\w+")
                                  .replace(re.escape("{job}"), r"\w+") + "$") for template in templates]
                for kind, templates in quickstart.QUESTIONS.items()}
    for seed in range(5):
        paragraph = quickstart.make_paragraph(random.Random(seed), "p")
        answers_by_kind: dict[str, set] = {}
        for qa in paragraph["qas"]:
            (kind,) = [kind for kind, regexes in patterns.items() if any(r.match(qa["question"]) for r in regexes)]
            answers_by_kind.setdefault(kind, set()).add(qa["answers"][0]["text"])
        assert set(answers_by_kind) == set(quickstart.QUESTIONS)
        assert all(len(answers) == quickstart.PEOPLE_PER_PARAGRAPH for answers in answers_by_kind.values())


def test_generation_is_seeded():
    assert quickstart.make_squad_dataset(30, 5, "t") == quickstart.make_squad_dataset(30, 5, "t")
    assert quickstart.make_squad_dataset(30, 5, "t") != quickstart.make_squad_dataset(30, 6, "t")


def test_vocabulary_is_the_same_every_time_and_keeps_every_word_whole(tmp_path):
    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    texts = list(quickstart.dataset_texts(quickstart.make_squad_dataset(200, 3, "t")))
    first = quickstart.build_vocab(texts, tmp_path / "a").read_text(encoding="utf-8")
    assert quickstart.build_vocab(reversed(texts), tmp_path / "b").read_text(encoding="utf-8") == first
    pieces = first.splitlines()
    assert pieces[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(pieces)) == len(pieces)
    tokenizer = MobileBertTokenizer(tmp_path / "a" / "vocab.txt")
    for text in texts[:50]:
        tokens = tokenizer.tokenize(text)
        assert " ".join(tokens) == " ".join(text.lower().replace(".", " .").replace("?", " ?").split())


# ----- bad input: one line, exit 2, nothing written ----------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: must be a finite number > 0, got 0"),
    (["--epochs", "-1"], "argument --epochs: must be a finite number > 0, got -1"),
    (["--epochs", "nan"], "argument --epochs: must be a finite number > 0, got nan"),
    (["--epochs", "inf"], "argument --epochs: must be a finite number > 0, got inf"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["--learning-rate", "0"], "argument --learning-rate: must be a finite number > 0, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["--train-questions", "-5"], "argument --train-questions: must be an integer >= 1"),
    (["--train-questions", "8", "--batch-size", "16"], "--batch-size 16 is larger than --train-questions 8"),
])
def test_bad_values_exit_2_with_one_line_before_writing(tmp_path, capsys, flags, message):
    output = tmp_path / "out"
    code, summary, err = run_cli(capsys, ["quickstart", "--output", output, *flags])
    assert code == 2 and summary is None
    assert err.count("\n") == 1 and message in err and err.startswith("mobilebert quickstart: error:")
    assert not output.exists()


def test_output_under_a_file_exits_2_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, summary, err = run_cli(capsys, ["quickstart", "--output", blocker / "out"])
    assert code == 2 and summary is None
    assert err.count("\n") == 1 and str(blocker / "out") in err and "not writable" in err
    assert blocker.read_text() == "not a directory"
