"""`mobilebert pretrain` and `evaluate pretraining` on real text: the SQuAD v1.1 dev contexts
(Wikipedia paragraphs) made into a BERT-format corpus, one paragraph a document.

The vocabulary is built here from that text (specials, characters, ##characters, the 1500 most
frequent words), so a tiny model's embeddings and MLM output stay small; rarer words become
character pieces, as WordPiece would split them. Articles 0-39 train, 40-47 are held out.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tiny_tasks import max_relative_difference, model_weights, run_cli, subprocess_env, write_marker_squad

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS_IN_VOCAB = 1500
HELD_OUT_FROM_ARTICLE = 40
# Small, with MobileBERT's structure (bottlenecks, stacked FFNs, NoNorm, trigram input).
TINY = dict(hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_feedforward_networks=2, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, initializer_range=0.05)


# --------------------------------------------------------------------------------------------
# Corpus, vocabulary, DATA_DIRs (built once)
# --------------------------------------------------------------------------------------------

def corpus_text(articles: list[dict]) -> str:
    """BERT's input format: one sentence a line, a blank line between documents (paragraphs)."""
    documents = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            sentences = [part.strip() for part in re.split(r"(?<=[.!?])\s+", paragraph["context"]) if part.strip()]
            documents.append("\n".join(sentences))
    return "\n\n".join(documents) + "\n"


def write_vocab(text: str, directory: Path) -> Path:
    from tokenizers import normalizers, pre_tokenizers

    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in words for character in word})
    frequent = sorted(word for word, _ in words.most_common(WORDS_IN_VOCAB) if len(word) > 1)
    pieces = SPECIALS + characters + [f"##{character}" for character in characters] + frequent
    MobileBertTokenizer({piece: index for index, piece in enumerate(pieces)}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def corpus(squad_articles, tmp_path_factory) -> dict:
    """{"tokenizer", "train", "dev": DATA_DIRs, "vocab_size"} made through `mobilebert pretrain-data`."""
    from mobilebert_paddle.cli import main

    squad = squad_articles
    root = tmp_path_factory.mktemp("corpus")
    (root / "train.txt").write_text(corpus_text(squad[:HELD_OUT_FROM_ARTICLE]), encoding="utf-8")
    (root / "heldout.txt").write_text(corpus_text(squad[HELD_OUT_FROM_ARTICLE:]), encoding="utf-8")
    tokenizer = write_vocab((root / "train.txt").read_text(encoding="utf-8"), root / "tokenizer")
    for name, text in (("train", "train.txt"), ("dev", "heldout.txt")):
        code = main(["pretrain-data", str(root / text), "--tokenizer", str(tokenizer), "--output", str(root / name),
                     "--max-seq-length", "64", "--seed", "1"])
        assert code == 0
    vocab_size = len((tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = root / "tiny.json"
    config.write_text(json.dumps({"vocab_size": vocab_size, **TINY}))
    return {"tokenizer": tokenizer, "train": root / "train", "dev": root / "dev", "config": config,
            "vocab_size": vocab_size, "root": root}


def pretrain_argv(corpus: dict, output: Path, *extra) -> list:
    return ["pretrain", "--config", corpus["config"], "--data", corpus["train"], "--output", output,
            "--batch-size", 32, "--learning-rate", 1e-2, "--warmup-steps", 20, "--max-predictions-per-seq", 10,
            "--logging-steps", 10, "--device", "cpu", *extra]


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# Learning, evaluation, fine-tuning from the result
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learned(corpus, tmp_path_factory):
    """A 300-step LAMB run (batch 32, 64-token rows: ~1.3 epochs) evaluated on the held-out articles."""
    from mobilebert_paddle.cli import main

    run = tmp_path_factory.mktemp("pretrain") / "run"
    code = main([str(arg) for arg in pretrain_argv(corpus, run, "--dev", corpus["dev"], "--max-steps", 300,
                                                    "--eval-steps", 100)])
    assert code == 0
    return run


def most_frequent_token_accuracy(dev: Path, seed: int, max_predictions: int) -> float:
    """Accuracy of always predicting the held-out set's most frequent masked token (its labels)."""
    from mobilebert_paddle.pretraining.task import MaskingSettings, PretrainingTask, open_data

    data = open_data(dev)
    eval_set = PretrainingTask().eval_set("dev", str(dev), data, None,
                                          MaskingSettings(seed=seed, max_predictions_per_seq=max_predictions))
    labels = eval_set.rows["masked_labels"][eval_set.rows["masked_weights"] > 0]
    return Counter(labels.tolist()).most_common(1)[0][1] / len(labels)


@pytest.mark.slow
def test_pretraining_learns_held_out_masked_tokens(learned, corpus):
    baseline = most_frequent_token_accuracy(corpus["dev"], seed=42, max_predictions=10)
    evals = [line for line in metric_lines(learned) if line["kind"] == "eval"]
    assert [line["step"] for line in evals] == [100, 200, 300]
    best = json.loads((learned / "best" / "metrics.json").read_text())
    assert 0.03 < baseline < 0.15, baseline                # "the" among Wikipedia's masked tokens
    assert best["masked_lm_accuracy"] >= baseline + 0.05, (best, baseline)     # 0.07 -> 0.14 by step 200
    assert evals[-1]["masked_lm_accuracy"] > evals[0]["masked_lm_accuracy"]
    assert best["masked_lm_accuracy"] == max(line["masked_lm_accuracy"] for line in evals)
    assert best["next_sentence_accuracy"] > 0.5 and best["masked_lm_loss"] < evals[0]["masked_lm_loss"] + 1
    train_lines = [line for line in metric_lines(learned) if line["kind"] == "train"]
    for line in train_lines:        # the loss is the sum of its logged parts
        assert line["loss"] == pytest.approx(line["masked_lm_loss"] + line["next_sentence_loss"], rel=1e-6)
    assert train_lines[-1]["masked_lm_loss"] < train_lines[0]["masked_lm_loss"] - 1.0
    config = json.loads((learned / "best" / "config.json").read_text())
    assert config["architectures"] == ["MobileBertForPreTraining"]
    assert config["pretraining_settings"] == {"masked_lm_prob": 0.15, "max_predictions_per_seq": 10,
                                              "whole_word_masking": False, "seed": 42}
    assert (learned / "best" / "vocab.txt").read_bytes() == (corpus["tokenizer"] / "vocab.txt").read_bytes()


@pytest.mark.slow
def test_evaluate_pretraining_reproduces_the_training_evaluation(learned, corpus, tmp_path, capsys):
    """`evaluate pretraining` takes the masking stored in config.json: the same dev masks, the same numbers."""
    code, summary, err = run_cli(capsys, ["evaluate", "pretraining", "--model", learned / "best",
                                          "--data", corpus["dev"], "--output", tmp_path / "eval", "--device", "cpu"])
    assert code == 0, err
    recorded = json.loads((learned / "best" / "metrics.json").read_text())
    assert summary["main_metric"] == "masked_lm_accuracy"
    for key in ("masked_lm_accuracy", "next_sentence_accuracy", "masked_tokens"):
        assert summary["metrics"][key] == recorded[key], key
    assert summary["metrics"]["masked_lm_loss"] == pytest.approx(recorded["masked_lm_loss"], rel=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == summary["metrics"]


def test_the_pretrained_model_fine_tunes_on_squad(learned, tmp_path, capsys):
    train_file = write_marker_squad(tmp_path / "train.json", 64, seed=1)
    dev_file = write_marker_squad(tmp_path / "dev.json", 16, seed=2)
    code, summary, err = run_cli(capsys, [
        "finetune", "squad1", "--model", learned / "best", "--train", train_file, "--dev", dev_file,
        "--output", tmp_path / "squad", "--max-seq-length", 64, "--doc-stride", 16, "--max-query-length", 16,
        "--batch-size", 16, "--max-steps", 4, "--device", "cpu"])
    assert code == 0, err
    assert summary["steps"] == 4 and "f1" in summary["best_metrics"]
    pretrained, finetuned = model_weights(learned / "best"), model_weights(tmp_path / "squad" / "last")
    backbone = [key for key in pretrained if key.startswith("mobilebert.encoder.")]
    assert backbone and all(key in finetuned for key in backbone)          # the backbone carried over


# --------------------------------------------------------------------------------------------
# Exact resume, data parallel, both optimizers
# --------------------------------------------------------------------------------------------

def cli_subprocess(argv, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *map(str, argv)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=600, **options)


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_weights(corpus, tmp_path):
    """LAMB moments, the schedule, the RNG (dropout on) and the masks drawn per step all resume."""
    config = tmp_path / "dropout.json"
    config.write_text(json.dumps({**json.loads(corpus["config"].read_text()), "attention_probs_dropout_prob": 0.1,
                                  "hidden_dropout_prob": 0.1}))
    argv = pretrain_argv(corpus, "OUT", "--max-steps", 40, "--save-steps", 10, "--dev", corpus["dev"],
                         "--eval-steps", 20)
    argv[argv.index("--config") + 1] = config

    def with_output(output):
        return [output if arg == "OUT" else arg for arg in argv]

    reference = cli_subprocess(with_output(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "mobilebert_paddle", *map(str, with_output(run))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    checkpoint = run / "last" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = json.loads(checkpoint.read_text())["state"]["step"]
    assert 10 <= killed_at < 40
    resumed = cli_subprocess(with_output(run) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["resumed_from_step"] == killed_at
    first, second = model_weights(run / "last"), model_weights(tmp_path / "uninterrupted" / "last")
    assert all(np.array_equal(first[key], second[key]) for key in second)
    assert metric_lines(run) == metric_lines(tmp_path / "uninterrupted")


LAUNCH_ENTRY = "from mobilebert_paddle.cli import main\nraise SystemExit(main())\n"


def launch(argv: list, processes: int, log_dir: Path) -> subprocess.CompletedProcess:
    entry = log_dir.parent / "launch_entry.py"
    entry.write_text(LAUNCH_ENTRY)
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
               "--log_dir", str(log_dir), str(entry)]
    return subprocess.run(command + [str(arg) for arg in argv], capture_output=True, text=True,
                          env=subprocess_env(), timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_two_gloo_processes_equal_one_process(corpus, tmp_path, optimizer):
    """As tests/test_distributed.py: 2 processes equal, bit for bit, 1 process splitting each
    global batch the same way (accumulation 2); and 1 process without the split to rounding."""
    argv = pretrain_argv(corpus, "OUT", "--max-steps", 6, "--warmup-steps", 2, "--logging-steps", 1,
                         "--optimizer", optimizer)

    def with_output(output):
        return [output if arg == "OUT" else arg for arg in argv]

    one = cli_subprocess(with_output(tmp_path / "one"))
    split = cli_subprocess(with_output(tmp_path / "split") + ["--gradient-accumulation-steps", 2])
    two = launch(with_output(tmp_path / "two"), 2, tmp_path / "logs")
    for completed in (one, split, two):
        assert completed.returncode == 0, completed.stderr[-3000:]
    two_weights, split_weights = model_weights(tmp_path / "two" / "last"), model_weights(tmp_path / "split" / "last")
    assert all(np.array_equal(two_weights[key], split_weights[key]) for key in two_weights)
    one_weights = model_weights(tmp_path / "one" / "last")
    assert max_relative_difference(two_weights, one_weights, skip=("attention.self.key.bias",)) <= 1e-4
    one_lines, two_lines = metric_lines(tmp_path / "one"), metric_lines(tmp_path / "two")
    assert [line["step"] for line in one_lines] == [line["step"] for line in two_lines] == list(range(1, 7))
    for first, second in zip(one_lines, two_lines):
        for key in ("loss", "masked_lm_loss", "next_sentence_loss"):
            assert second[key] == pytest.approx(first[key], rel=1e-5)
    train_config = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert train_config["optimizer"] == optimizer and train_config["world_size"] == 2


# --------------------------------------------------------------------------------------------
# Starting points and refusals (the CLI table in test_cli_errors.py has the one-line cases)
# --------------------------------------------------------------------------------------------

def test_init_from_continues_from_a_model_dir(learned, corpus, tmp_path, capsys):
    code, summary, err = run_cli(capsys, pretrain_argv(corpus, tmp_path / "more", "--max-steps", 2, "--warmup-steps", 1)
                                 + ["--init-from", learned / "best"])
    assert code == 0, err
    config = json.loads((tmp_path / "more" / "best" / "config.json").read_text())
    assert config["hidden_size"] == TINY["hidden_size"]


def test_config_disagreeing_with_init_from_is_one_line(learned, corpus, tmp_path, capsys):
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**json.loads(corpus["config"].read_text()), "intermediate_size": 128}))
    argv = pretrain_argv(corpus, tmp_path / "run", "--max-steps", 2, "--warmup-steps", 1) + ["--init-from",
                                                                                              learned / "best"]
    argv[argv.index("--config") + 1] = wider
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "disagrees with --init-from" in err and "intermediate_size 128 vs 64" in err
    assert not (tmp_path / "run").exists()
