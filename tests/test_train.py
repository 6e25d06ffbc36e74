"""The trainer (`mobilebert finetune`): recipe pieces, learning, exact resume, guards, bad input.

Models are tiny and built here (tests/tiny_tasks.py); runs go through the real CLI, in this
process or -- where a kill or bit-exact reruns are needed -- as subprocesses.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from tiny_tasks import (
    make_tiny_model_dir,
    model_weights,
    run_cli,
    subprocess_env,
    write_colour_pairs,
    write_marker_squad,
)

from mobilebert_paddle.cli import parse_command_args
from mobilebert_paddle.core import flags
from mobilebert_paddle.core.numerics import relative_error
from mobilebert_paddle.tasks.registry import TASKS
from mobilebert_paddle.training import checkpoint as train
from mobilebert_paddle.training import optim, trainer


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return write_colour_pairs(root / "train.tsv", 1000, seed=1), write_colour_pairs(root / "dev.tsv", 200, seed=2)


# --------------------------------------------------------------------------------------------
# Recipe pieces
# --------------------------------------------------------------------------------------------

def test_schedule_warms_up_then_decays_to_min_lr_at_decay_ratio_then_stays():
    schedule = optim.WarmupDecaySchedule(peak_lr=8e-5, min_lr=1e-6, warmup_steps=10, decay_steps=70)
    rates = []
    for _ in range(101):
        rates.append(schedule.last_lr)
        schedule.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(4e-5) and rates[10] == pytest.approx(8e-5)
    midpoint = 1e-6 + (8e-5 - 1e-6) * 0.5                     # cosine halfway between warmup and decay end
    assert rates[40] == pytest.approx(midpoint)
    assert all(later < earlier for earlier, later in zip(rates[10:70], rates[11:70]))
    assert rates[70:] == [1e-6] * 31
    linear = optim.WarmupDecaySchedule(peak_lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=100, shape="linear")
    linear.step(25)
    assert linear.last_lr == pytest.approx(0.75)


def test_weight_decay_skips_biases_and_norm_weights(base_model):
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering

    model = MobileBertForQuestionAnswering.from_pretrained(base_model)
    skipped = optim.no_decay_parameter_names(model)
    by_path = {path: param.name for path, param in model.named_parameters()}
    assert by_path["qa_outputs.bias"] in skipped
    assert by_path["mobilebert.embeddings.LayerNorm.weight"] in skipped            # a NoNorm
    assert by_path["mobilebert.encoder.layer.0.attention.output.LayerNorm.weight"] in skipped
    assert by_path["qa_outputs.weight"] not in skipped
    assert by_path["mobilebert.embeddings.word_embeddings.weight"] not in skipped
    decayed = [path for path, name in by_path.items() if name not in skipped]
    assert all(not path.endswith("bias") and "LayerNorm" not in path for path in decayed)


@pytest.mark.parametrize("rows, batch", [(100, 16), (97, 10), (64, 64)])
def test_global_batches_are_the_same_for_any_number_of_processes(rows, batch):
    single = trainer.GlobalBatchSampler(rows, batch, seed=42, num_replicas=1, rank=0, min_batch_size=2)
    pair = [trainer.GlobalBatchSampler(rows, batch, seed=42, num_replicas=2, rank=rank, min_batch_size=2)
            for rank in (0, 1)]
    for epoch in (0, 3):
        for sampler in [single, *pair]:
            sampler.set_epoch(epoch)
        assert len(single) == len(pair[0]) == len(pair[1])
        for number in range(len(single)):
            joined = np.concatenate([sampler.local_batch(number) for sampler in pair])
            assert joined.tolist() == single.local_batch(number).tolist()
            assert abs(len(pair[0].local_batch(number)) - len(pair[1].local_batch(number))) <= 1
    seen = np.concatenate(list(map(np.asarray, single)))
    assert len(set(seen.tolist())) == len(seen) >= rows - batch      # each row at most once per epoch
    other_seed = trainer.GlobalBatchSampler(rows, batch, seed=7, num_replicas=1, rank=0)
    assert other_seed.epoch_order(0).tolist() != single.epoch_order(0).tolist()


@pytest.mark.parametrize("optimizer_name", flags.OPTIMIZERS)
def test_optimizer_state_moves_between_processes_by_parameter_path(base_model, optimizer_name):
    """Paddle keys Adam / LAMB moments by per-process unique names (linear_12.w_0); last/ keys
    them by path, so a model built in another order (another process) gets its own moments back."""
    from mobilebert_paddle.model.network import MobileBertForSequenceClassification

    def model_and_optimizer():
        model = MobileBertForSequenceClassification.from_pretrained(base_model)
        schedule = optim.WarmupDecaySchedule(1e-3, 0.0, 0, 10)
        return model, schedule, optim.build_optimizer(model, schedule, parse_command_args(
            "finetune", ["rte", "--model", "m", "--output", "o", "--optimizer", optimizer_name]))

    ids = paddle.to_tensor(np.arange(2, 12).reshape(2, 5))
    model, schedule, optimizer = model_and_optimizer()
    model(ids).sum().backward()
    optimizer.step()
    optimizer.clear_grad()
    saved = train.optimizer_state_by_name(optimizer, model)
    assert "classifier.weight_moment1_0" in saved
    copy, copy_schedule, copy_optimizer = model_and_optimizer()           # new unique names
    assert {p.name for p in copy.parameters()}.isdisjoint({p.name for p in model.parameters()})
    copy.set_state_dict(model.state_dict())
    train.load_optimizer_state(copy_optimizer, copy, saved, schedule.state_dict(), Path("last"))
    for layer in (model, copy):
        layer(ids).sum().backward()
    optimizer.step()
    copy_optimizer.step()
    for (path, first), second in zip(model.named_parameters(), copy.parameters()):
        assert np.array_equal(first.numpy(), second.numpy()), path


@pytest.mark.parametrize("optimizer_name", flags.OPTIMIZERS)
def test_learning_rate_multiplier_zero_leaves_parameters_bit_identical(base_model, optimizer_name):
    """Distillation freezes layers by a multiplier of 0 (and changes multipliers per phase): the
    update and the decoupled weight decay (0.1 here) must both leave such a parameter exactly as
    it was, step after step, while every other parameter moves."""
    from mobilebert_paddle.model.network import MobileBertForSequenceClassification

    model = MobileBertForSequenceClassification.from_pretrained(base_model)
    schedule = optim.WarmupDecaySchedule(1e-2, 0.0, 0, 10)
    optimizer = optim.build_optimizer(model, schedule, parse_command_args(
        "finetune", ["rte", "--model", "m", "--output", "o", "--optimizer", optimizer_name, "--weight-decay", "0.1"]))
    frozen = [path for path, _ in model.named_parameters() if ".layer.0." in path]
    start = {path: param.numpy().copy() for path, param in model.named_parameters()}
    ids = paddle.to_tensor(np.random.RandomState(0).randint(5, 40, (4, 8)))
    for step in range(4):
        multipliers = {path: 0.0 for path in frozen}
        if step >= 2:                     # the frozen layer's neighbour speeds up half-way (a phase change)
            multipliers["classifier.weight"] = 3.0
        optim.set_learning_rate_multipliers(model, multipliers)
        model(ids).sum().backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
    end = {path: param.numpy() for path, param in model.named_parameters()}
    assert frozen and all(np.array_equal(start[path], end[path]) for path in frozen)
    assert all(not np.array_equal(start[path], end[path]) for path in end if path not in frozen)
    with pytest.raises(ValueError, match="no parameter"):
        optim.set_learning_rate_multipliers(model, {"no.such.weight": 0.0})


def test_rng_states_round_trip_through_json():
    from mobilebert_paddle.core import dropout_masks

    def draws():
        return (np.random.rand(3), paddle.rand([3]).numpy(), __import__("random").random(),
                dropout_masks.scaled_mask((4, 5), 0.5))

    saved = json.loads(json.dumps(train.rng_state()))
    expected = draws()
    train.restore_rng_state(saved)
    again = draws()
    assert all(np.array_equal(first, second) for first, second in zip(expected, again))
    assert not np.array_equal(dropout_masks.scaled_mask((4, 5), 0.5), again[3])
    saved["dropout_masks"] = {"bit_generator": "PCG64", "state": "junk"}
    with pytest.raises((TypeError, ValueError, KeyError)):      # the trainer names it a damaged checkpoint
        train.restore_rng_state(saved)


# --------------------------------------------------------------------------------------------
# Learning, not just running
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_learns_synthetic_question_answering(base_model, tmp_path, capsys):
    """Two markers per context, the question names one: EM >= 80 needs reading the question."""
    train_file = write_marker_squad(tmp_path / "train.json", 2000, seed=1)
    dev_file = write_marker_squad(tmp_path / "dev.json", 200, seed=2)
    code, summary, err = run_cli(capsys, [
        "finetune", "squad1", "--model", base_model, "--train", train_file, "--dev", dev_file,
        "--output", tmp_path / "run", "--max-seq-length", 32, "--max-query-length", 8, "--doc-stride", 8,
        "--batch-size", 32, "--epochs", 6, "--learning-rate", 2e-3, "--eval-steps", 63, "--device", "cpu"])
    assert code == 0, err
    assert summary["best_metrics"]["exact"] >= 80, summary
    assert summary["main_metric"] == "f1" and summary["steps"] == summary["total_steps"] == 378
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals[0]["exact"] < 80 <= max(entry["exact"] for entry in evals)   # it got there by training


@pytest.mark.slow
def test_learns_synthetic_pair_classification(base_model, pair_data, tmp_path, capsys):
    train_file, dev_file = pair_data
    code, summary, err = run_cli(capsys, [
        "finetune", "rte", "--model", base_model, "--train", train_file, "--dev", dev_file,
        "--output", tmp_path / "run", "--max-seq-length", 16, "--batch-size", 32, "--epochs", 4,
        "--learning-rate", 1e-3, "--eval-steps", 32, "--device", "cpu"])
    assert code == 0, err
    assert summary["best_metrics"]["accuracy"] >= 0.9
    majority = max(np.mean([line.endswith("\tentailment") for line in dev_file.read_text().splitlines()[1:]]), 0.5)
    assert majority < 0.6
    best = tmp_path / "run" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert config["finetuning_task"] == "rte" and config["architectures"] == ["MobileBertForSequenceClassification"]
    predictions = (best / "dev_predictions.tsv").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 201


def test_mnli_from_a_glue_data_dir_evaluates_matched_and_mismatched(base_model, tmp_path, capsys):
    from tiny_tasks import write_mnli_dev

    folder = tmp_path / "glue_data" / "MNLI"                      # the GLUE download's layout
    folder.mkdir(parents=True)
    write_mnli_dev(folder / "train.tsv", 64, seed=1)
    write_mnli_dev(folder / "dev_matched.tsv", 20, seed=2)
    write_mnli_dev(folder / "dev_mismatched.tsv", 10, seed=3)
    code, summary, err = run_cli(capsys, [
        "finetune", "mnli", "--model", base_model, "--data-dir", tmp_path / "glue_data", "--output", tmp_path / "run",
        "--max-seq-length", 16, "--batch-size", 16, "--max-steps", 4, "--device", "cpu"])
    assert code == 0, err
    assert summary["main_metric"] == "matched_accuracy"
    assert set(summary["best_metrics"]) == {"step", "matched_accuracy", "mismatched_accuracy"}
    for name, rows in (("matched", 20), ("mismatched", 10)):
        assert len((tmp_path / "run" / "best" / f"{name}_predictions.tsv").read_text().splitlines()) == rows + 1
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}   # HF's label order


def test_training_passes_the_attention_mask(base_model, pair_data, tmp_path, capsys, monkeypatch):
    """The reproduction this project replaces trained without it: padding was attended to."""
    from mobilebert_paddle.model.network import MobileBertForSequenceClassification

    seen = []
    original = MobileBertForSequenceClassification.forward

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None):
        if self.training:
            seen.append((input_ids.numpy(), None if attention_mask is None else attention_mask.numpy()))
        return original(self, input_ids, token_type_ids, attention_mask, position_ids)

    monkeypatch.setattr(MobileBertForSequenceClassification, "forward", forward)
    code, _, err = run_cli(capsys, small_pair_run(base_model, pair_data, tmp_path / "run"))
    assert code == 0, err
    assert len(seen) == 6
    for input_ids, attention_mask in seen:
        assert attention_mask is not None and np.array_equal(attention_mask, (input_ids != 0).astype(attention_mask.dtype))
        assert (attention_mask == 0).any()                   # there was padding to hide


@pytest.mark.skipif(__import__("importlib").util.find_spec("datasets") is not None,
                    reason="the optional `datasets` package is installed")
def test_data_hub_without_datasets_says_what_to_install(base_model, tmp_path, capsys):
    code, _, err = run_cli(capsys, ["finetune", "rte", "--model", base_model, "--data", "hub", "--output",
                                    tmp_path / "run", "--max-seq-length", 16, "--device", "cpu"])
    assert code == 2 and "--data hub needs the optional `datasets` package" in err


# --------------------------------------------------------------------------------------------
# Exact resume and atomic checkpoints (subprocesses: SIGKILL, and reruns that must be bit-identical)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resume_case(tmp_path_factory):
    """A 60-step run with dropout, checkpointed every 10 steps, and its uninterrupted result."""
    root = tmp_path_factory.mktemp("resume")
    base = make_tiny_model_dir(root / "base", attention_probs_dropout_prob=0.1)   # dropout: RNG state matters
    train_file, dev_file = write_colour_pairs(root / "train.tsv", 320, 1), write_colour_pairs(root / "dev.tsv", 64, 2)
    argv = ["finetune", "rte", "--model", base, "--train", train_file, "--dev", dev_file, "--max-seq-length", 16,
            "--batch-size", 16, "--max-steps", 60, "--learning-rate", 1e-3, "--save-steps", 10, "--eval-steps", 20,
            "--logging-steps", 5, "--device", "cpu"]
    reference = root / "uninterrupted"
    completed = cli_subprocess(argv + ["--output", reference])
    assert completed.returncode == 0, completed.stderr[-2000:]
    return root, argv, reference


def cli_subprocess(argv, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *map(str, argv)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=300, **options)


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, reference: Path) -> None:
    resumed, uninterrupted = model_weights(run / "last"), model_weights(reference / "last")
    assert all(np.array_equal(resumed[key], uninterrupted[key]) for key in uninterrupted)   # bit-identical
    assert metric_lines(run) == metric_lines(reference)             # same steps, same losses, same evals
    assert model_weights(run / "best").keys() == model_weights(reference / "best").keys()
    assert json.loads((run / "best" / "metrics.json").read_text()) == \
        json.loads((reference / "best" / "metrics.json").read_text())


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(resume_case):
    root, argv, reference = resume_case
    run = root / "killed"
    process = subprocess.Popen([sys.executable, "-m", "mobilebert_paddle", *map(str, argv), "--output", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    checkpoint = run / "last" / train.CHECKPOINT_STATE
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL                       # killed, not finished
    killed_at = json.loads(checkpoint.read_text())["state"]["step"]
    assert 10 <= killed_at < 60
    completed = cli_subprocess(argv + ["--output", run, "--resume"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout)
    assert summary["resumed_from_step"] == killed_at and summary["steps"] == 60
    assert_same_run(run, reference)


KILL_IN_SECOND_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    from mobilebert_paddle import cli
    from mobilebert_paddle.training import trainer
    writes = []
    original = trainer.optimizer_state_by_name
    def dies_in_second_checkpoint(optimizer, model):
        writes.append(1)
        if len(writes) == 2:                  # model files already staged, optimizer and state not yet
            os.kill(os.getpid(), signal.SIGKILL)
        return original(optimizer, model)
    trainer.optimizer_state_by_name = dies_in_second_checkpoint
    raise SystemExit(cli.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(resume_case):
    from mobilebert_paddle.model.network import MobileBertForSequenceClassification

    root, argv, reference = resume_case
    run = root / "killed-while-writing"
    killed = subprocess.run([sys.executable, "-c", KILL_IN_SECOND_CHECKPOINT, *map(str, argv), "--output", str(run)],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run / "last" / train.CHECKPOINT_STATE).read_text())["state"]["step"] == 10
    assert list(run.glob(".last*.tmp")), "the interrupted write left its staging dir (and nothing else)"
    MobileBertForSequenceClassification.from_pretrained(run / "last")     # the previous checkpoint loads
    completed = cli_subprocess(argv + ["--output", run, "--resume"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert not list(run.glob(".*.tmp"))
    assert_same_run(run, reference)


def test_resume_refuses_changed_batch_size(resume_case, capsys):
    root, argv, reference = resume_case
    changed = [str(arg) for arg in argv]
    changed[changed.index("--batch-size") + 1] = "32"
    code, _, err = run_cli(capsys, changed + ["--output", reference, "--resume"])
    assert code == 2 and "cannot resume with a changed run: --batch-size was 16, now 32" in err


# --------------------------------------------------------------------------------------------
# Non-finite guard
# --------------------------------------------------------------------------------------------

def poison_third_step(monkeypatch, task_name: str) -> None:
    """Make the loss of the 3rd forward pass NaN."""
    task = TASKS[task_name]
    original = task.per_example_loss
    calls = []

    def loss(outputs, labels):
        calls.append(1)
        value = original(outputs, labels)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(task, "per_example_loss", loss)


def small_pair_run(base_model, pair_data, output: Path) -> list[str]:
    train_file, dev_file = pair_data
    return ["finetune", "rte", "--model", base_model, "--train", train_file, "--dev", dev_file, "--output", output,
            "--max-seq-length", 16, "--batch-size", 32, "--max-steps", 6, "--save-steps", 2, "--eval-steps", 3,
            "--logging-steps", 1, "--device", "cpu"]


def test_non_finite_loss_stops_naming_the_step(base_model, pair_data, tmp_path, capsys, monkeypatch):
    poison_third_step(monkeypatch, "rte")
    code, _, err = run_cli(capsys, small_pair_run(base_model, pair_data, tmp_path / "run"))
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("mobilebert finetune: error: non-finite loss nan") and "at step 3 of 6" in message
    assert "last/ holds step 2" in message and "Traceback" not in err
    weights = model_weights(tmp_path / "run" / "last")
    assert all(np.isfinite(value).all() for value in weights.values())


def test_skip_nonfinite_skips_that_update_only(base_model, pair_data, tmp_path, capsys, monkeypatch):
    poison_third_step(monkeypatch, "rte")
    code, summary, err = run_cli(capsys, small_pair_run(base_model, pair_data, tmp_path / "run") + ["--skip-nonfinite"])
    assert code == 0, err
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    kinds = [(line["kind"], line["step"]) for line in metric_lines(tmp_path / "run")]
    assert ("skipped", 3) in kinds and ("train", 3) not in kinds and ("train", 4) in kinds
    assert all(np.isfinite(value).all() for value in model_weights(tmp_path / "run" / "best").values())


def test_non_finite_weights_are_never_saved(base_model):
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering

    model = MobileBertForQuestionAnswering.from_pretrained(base_model)
    train.check_finite_weights(model, step=1)
    model.qa_outputs.bias.set_value(np.array([0.0, math.inf], dtype="float32"))
    with pytest.raises(train.NonFiniteLossError, match="step 7: parameter qa_outputs.bias is not finite"):
        train.check_finite_weights(model, step=7)


# --------------------------------------------------------------------------------------------
# Real data: finetune squad2 writes everything
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_squad2_on_real_data_writes_every_output(shared_data, bert_vocab_file, tmp_path, capsys):
    from tiny_tasks import TINY_CONFIG

    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering, MobileBertModel
    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    tokenizer = MobileBertTokenizer(bert_vocab_file)
    config = MobileBertConfig(vocab_size=tokenizer.vocab_size, **{**TINY_CONFIG, "max_position_embeddings": 128})
    MobileBertModel(config).save_pretrained(tmp_path / "base", tokenizer=tokenizer)
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, [
        "finetune", "squad2", "--model", tmp_path / "base",
        "--train", shared_data / "squad" / "train-v2.0-first10articles.json",
        "--dev", shared_data / "squad" / "dev-v2.0-first5articles.json", "--output", run,
        "--max-steps", 3, "--max-seq-length", 128, "--doc-stride", 32, "--batch-size", 8, "--logging-steps", 1,
        "--device", "cpu"])
    assert code == 0, err
    assert summary["steps"] == 3 and summary["best_step"] == 3
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "metrics.json",
                 "predictions.json", "nbest_predictions.json", "null_odds.json"):
        assert (run / "best" / name).is_file(), name
    for name in ("model.safetensors", "optimizer.safetensors", train.CHECKPOINT_STATE, "vocab.txt"):
        assert (run / "last" / name).is_file(), name
    assert list((run / "vdl").iterdir())
    predictions = json.loads((run / "best" / "predictions.json").read_text())
    null_odds = json.loads((run / "best" / "null_odds.json").read_text())
    assert len(predictions) == len(null_odds) == 1407
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["total"] == 1407 and metrics["NoAns_total"] == 702 and "best_f1_thresh" in metrics
    assert metrics["null_score_diff_threshold"] == -1.5                      # the squad2 recipe value
    assert [(line["kind"], line["step"]) for line in metric_lines(run)] == [
        ("train", 1), ("train", 2), ("train", 3), ("eval", 3)]
    config = json.loads((run / "train_config.json").read_text())
    recipe = (config["learning_rate"], config["adam_beta2"], config["min_lr"], config["decay_ratio"])
    assert recipe == (8e-5, 0.98, 5e-7, 0.9)
    model = MobileBertForQuestionAnswering.from_pretrained(run / "best")
    assert model.config.extra["finetuning_task"] == "squad2"


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# --------------------------------------------------------------------------------------------

def bert_model_dir(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    return path


BAD_INPUTS = {
    "squad data for a GLUE task": (["rte", "--train", "{squad}"], "line 1: header has 1 columns"),
    "GLUE data for a SQuAD task": (["squad1", "--train", "{tsv}"], "invalid JSON at line 1"),
    "not a MobileBERT": (["rte", "--train", "{tsv}", "--model", "{bert}"], "model_type is 'bert', not 'mobilebert'"),
    "no model dir": (["rte", "--train", "{tsv}", "--model", "{tsv}"], "expected a model directory, found a file"),
    "unwritable output": (["rte", "--train", "{tsv}", "--output", "{tsv}/run"], "output directory is not writable"),
    "fp16": (["rte", "--train", "{tsv}", "--amp", "fp16"], "fp16 is refused: MobileBERT's activations reach ~1e7"),
    "bf16 on cpu": (["rte", "--train", "{tsv}", "--amp", "bf16"], "--amp bf16 needs a GPU"),
    "window too long": (["rte", "--train", "{tsv}", "--max-seq-length", "512"],
                        "exceeds the model's max_position_embeddings (64)"),
    "no training data": (["rte"], "rte: no training data; pass --train FILE, --data-dir DIR or --data hub"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(case, base_model, pair_data, tmp_path, capsys):
    flags, expected = BAD_INPUTS[case]
    squad = write_marker_squad(tmp_path / "train.json", 3, seed=0)
    places = {"squad": squad, "tsv": pair_data[0], "bert": bert_model_dir(tmp_path / "bert")}
    argv = ["finetune", *[flag.format(**places) for flag in flags]]
    if "--model" not in argv:
        argv += ["--model", str(base_model)]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "run")]
    if "--max-seq-length" not in argv:
        argv += ["--max-seq-length", "32"]
    code, _, err = run_cli(capsys, argv + ["--device", "cpu"])
    assert code == 2
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("mobilebert finetune: error: ") and expected in last_line, err
    assert "Traceback" not in err


def test_existing_run_is_not_overwritten_without_resume_or_overwrite(base_model, pair_data, tmp_path, capsys):
    argv = small_pair_run(base_model, pair_data, tmp_path / "run")
    assert run_cli(capsys, argv)[0] == 0
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "already holds a run (last, best, metrics.jsonl); pass --resume" in err
    code, summary, _ = run_cli(capsys, argv + ["--overwrite"])
    assert code == 0 and summary["resumed_from_step"] is None


def test_help_lists_every_hyperparameter_with_its_default(capsys):
    from mobilebert_paddle.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]     # after the usage line
    for flag, default in [("--learning-rate", "8e-05"), ("--batch-size", "64"), ("--epochs", "6.0"),
                          ("--weight-decay", "0.1"), ("--adam-beta1", "0.9"), ("--adam-beta2", "0.98"),
                          ("--adam-epsilon", "1e-06"), ("--warmup-ratio", "0.1"), ("--seed", "42"),
                          ("--schedule", "cosine"), ("--max-grad-norm", "0.0"), ("--gradient-accumulation-steps", "1"),
                          ("--amp", "none"), ("--logging-steps", "30")]:
        assert flag in text and f"(default: {default})" in text.split(flag, 1)[1][:400], flag
    for flag, default in [("--doc-stride", "128"), ("--max-query-length", "64"), ("--n-best-size", "20"),
                          ("--max-answer-length", "30")]:   # task-dependent flags spell their default out
        assert flag in text and f"[default: {default}]" in text.split(flag, 1)[1][:400], flag
    for recipe in ("1e-6 squad1, 5e-7 others", "0.7 squad1, 0.9 others", "384 for SQuAD, 128 for GLUE", "-1.5 for squad2"):
        assert recipe in text


@pytest.mark.parametrize("small", [0, 100])
def test_our_lamb_equals_paddles_lamb_and_keeps_its_state(small, monkeypatch):
    """optim.Lamb (Paddle's AdamW kernel at learning rate 1 on a copy, then the trust ratio) takes
    Paddle's LAMB's steps within float rounding: decayed tensors (trust ratio), a tensor left out
    of weight decay (no trust ratio), a zero tensor (ratio 1), learning-rate multipliers 0 (the
    tensor stays bit-identical) and 0.5; and its state dict has Paddle's LAMB's keys and values.
    With `small` 0 every tensor takes our path, with 100 the ones under 100 values Paddle's."""
    monkeypatch.setattr(optim.Lamb, "SMALL", small)
    rng = np.random.default_rng(0)
    shapes = {"weight": (24, 8), "bias": (8,), "zero": (8, 8), "frozen": (4, 8), "half": (8, 4)}
    start = {name: (rng.standard_normal(shape) * 0.1).astype("float32") for name, shape in shapes.items()}
    start["zero"][:] = 0.0

    def parameters():
        made = {}
        for name, value in start.items():
            made[name] = paddle.create_parameter(list(value.shape), "float32")
            made[name].set_value(value)
        made["frozen"].optimize_attr["learning_rate"] = 0.0
        made["half"].optimize_attr["learning_rate"] = 0.5
        return made

    ours, theirs = parameters(), parameters()
    exclude = {ours["bias"].name, theirs["bias"].name}
    settings = dict(learning_rate=0.01, lamb_weight_decay=0.01, beta1=0.9, beta2=0.999, epsilon=1e-6,
                    exclude_from_weight_decay_fn=lambda param: param.name in exclude)
    our_optimizer = optim.Lamb(parameters=list(ours.values()), **settings)
    their_optimizer = paddle.optimizer.Lamb(parameters=list(theirs.values()), **settings)
    for _ in range(6):
        gradients = {name: rng.standard_normal(shape).astype("float32") for name, shape in shapes.items()}
        for made, optimizer in ((ours, our_optimizer), (theirs, their_optimizer)):
            for name, param in made.items():
                param.grad = paddle.to_tensor(gradients[name])
            optimizer.step()
            optimizer.clear_grad()
    for name in shapes:
        assert relative_error(ours[name].numpy(), theirs[name].numpy()) <= 1e-6, name
    assert np.array_equal(ours["frozen"].numpy(), start["frozen"])
    assert not np.allclose(ours["zero"].numpy(), 0.0) and not np.allclose(ours["bias"].numpy(), start["bias"])
    by_name = {param.name: name for made in (ours, theirs) for name, param in made.items()}

    def state(optimizer):
        return {key.replace(param_name, by_name[param_name]): value.numpy()
                for key, value in optimizer.state_dict().items() if isinstance(value, paddle.Tensor)
                for param_name in [next(n for n in by_name if key.startswith(n + "_"))]}

    our_state, their_state = state(our_optimizer), state(their_optimizer)
    assert set(our_state) == set(their_state) and len(our_state) == 4 * len(shapes)
    for key in our_state:
        assert relative_error(our_state[key], their_state[key]) <= 1e-6, key


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_a_restarted_optimizer_is_saved_under_the_names_a_resumed_run_loads(optimizer):
    """Distillation's stage 2 starts a new optimizer (Paddle names its accumulators "_moment1_1");
    its checkpoint is saved under the first optimizer's names, which the one optimizer of a resumed
    process loads; the updates after that are bit-identical to the uninterrupted ones."""
    from types import SimpleNamespace

    config = SimpleNamespace(optimizer=optimizer, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
                             adam_epsilon=1e-6)
    paddle.seed(0)
    model, resumed = paddle.nn.Linear(3, 2), paddle.nn.Linear(3, 2)
    inputs = paddle.randn([4, 3])

    def steps(layer, layer_optimizer, count):
        for _ in range(count):
            (layer(inputs) ** 2).sum().backward()
            layer_optimizer.step()
            layer_optimizer.clear_grad()

    steps(model, optim.build_optimizer(model, 1e-2, config), 2)
    restarted = optim.build_optimizer(model, 1e-2, config)            # the restart
    steps(model, restarted, 2)
    saved = train.optimizer_state_by_name(restarted, model)
    assert saved and all(key.endswith("_0") for key in saved), sorted(saved)
    resumed.set_state_dict(model.state_dict())
    resumed_optimizer = optim.build_optimizer(resumed, 1e-2, config)
    train.load_optimizer_state(resumed_optimizer, resumed, saved, {"last_epoch": 0, "last_lr": 1e-2}, Path("last"))
    steps(model, restarted, 2)
    steps(resumed, resumed_optimizer, 2)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.parameters(), resumed.parameters()))


@pytest.mark.parametrize("vendor, flags, preset, expected", [
    ("AuthenticAMD", "fpu sse2 avx avx2 fma", None, "5"),
    ("AuthenticAMD", "fpu sse2 avx", None, None),                 # no AVX2: its kernels would fault
    ("GenuineIntel", "fpu sse2 avx avx2 avx512f", None, None),    # Intel: MKL picks its best path itself
    ("AuthenticAMD", "fpu sse2 avx avx2", "4", "4"),              # the user's choice stands
])
def test_mkl_avx2_dispatch_is_set_only_on_amd_with_avx2(vendor, flags, preset, expected, tmp_path):
    from mobilebert_paddle.core.device import MKL_DISPATCH_VARIABLE, use_avx2_mkl_on_amd

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\n")
    environ = {} if preset is None else {MKL_DISPATCH_VARIABLE: preset}
    assert use_avx2_mkl_on_amd(environ, cpuinfo) == (expected is not None and preset is None)
    assert environ.get(MKL_DISPATCH_VARIABLE) == expected
    assert not use_avx2_mkl_on_amd({}, tmp_path / "missing")


def test_training_without_strided_views_is_bit_identical():
    """core/device.copy_instead_of_strided_views (what --device cpu sets) changes no value: a
    pretraining model's outputs and gradients, with the flag off and on, bit for bit."""
    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.network import MobileBertForPreTraining

    config = MobileBertConfig(vocab_size=50, hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                              intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=32, attention_probs_dropout_prob=0.0)
    config.architectures = ["MobileBertForPreTraining"]
    paddle.seed(3)
    model = MobileBertForPreTraining(config)
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(0, 50, (3, 20)))
    mask = paddle.to_tensor((np.arange(20)[None, :] < np.array([[20], [13], [7]])).astype("int64"))
    positions = paddle.to_tensor(rng.integers(0, 7, (3, 4)))
    previous = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    results = {}
    try:
        for strided in (True, False):
            paddle.set_flags({"FLAGS_use_stride_kernel": strided})
            model.train()
            model.clear_gradients()
            output = model(ids, paddle.zeros_like(ids), mask, masked_positions=positions)
            (output.prediction_logits.square().mean() + output.seq_relationship_logits.sum()).backward()
            results[strided] = [output.prediction_logits.numpy()] + [param.grad.numpy() for param in model.parameters()
                                                                      if param.grad is not None]
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": previous})
    assert len(results[True]) == len(results[False]) > 20
    assert all((a == b).all() for a, b in zip(results[True], results[False]))


def test_clip_gradients_norm_and_scaling():
    """The global norm equals float64's; under --max-grad-norm nothing changes (bit for bit),
    over it every gradient is scaled by max / (norm + 1e-6), as paddle.nn.utils.clip_grad_norm_."""
    from mobilebert_paddle.training.optim import clip_gradients

    rng = np.random.default_rng(0)
    values = [rng.standard_normal(shape).astype("float32") * scale
              for shape, scale in (((3000, 128), 1.0), ((128,), 30.0), ((64, 64), 0.01))]
    exact = math.sqrt(sum(float(np.sum(value.astype(np.float64) ** 2)) for value in values))

    def parameters_with(gradients):
        """Parameters whose .grad is `gradients`, made by a backward pass (as in training)."""
        params = [paddle.create_parameter(list(gradient.shape), "float32") for gradient in gradients]
        sum(paddle.sum(param * paddle.to_tensor(gradient)) for param, gradient in zip(params, gradients)).backward()
        return params

    params = parameters_with(values)
    assert clip_gradients(params, 0.0) == pytest.approx(exact, rel=1e-6)
    assert clip_gradients(params, exact * 1.01) == pytest.approx(exact, rel=1e-6)
    assert all((param.grad.numpy() == value).all() for param, value in zip(params, values))   # untouched
    assert clip_gradients(params, 1.0) == pytest.approx(exact, rel=1e-6)
    clipped = [param.grad.numpy() for param in params]
    for value, gradient in zip(values, clipped):
        np.testing.assert_allclose(gradient, value * (1.0 / (exact + 1e-6)), rtol=2e-6, atol=1e-12)
    reference = parameters_with(values)
    paddle.nn.utils.clip_grad_norm_(reference, 1.0)
    for param, gradient in zip(reference, clipped):
        np.testing.assert_allclose(param.grad.numpy(), gradient, rtol=1e-3)    # theirs sums squares less exactly

