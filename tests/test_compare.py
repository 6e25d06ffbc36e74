"""`mobilebert compare`: passes on a converted model, fails on a 1% change to one weight.

The HF models are tiny (and one full-size), built in-process with a small English
vocabulary so the built-in texts tokenise to real word pieces, not [UNK].
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import HF_HEADS, make_hf_model, save_hf
from safetensors import safe_open
from safetensors.numpy import save_file

from mobilebert_paddle.cli import main
from mobilebert_paddle.core import numerics
from mobilebert_paddle.model.convert import convert
from mobilebert_paddle.tools import compare

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def english_vocab(extra_size: int = 0) -> list[str]:
    """Special tokens, every word and punctuation mark of the built-in texts, then fillers."""
    words = sorted({word for text in compare.DEFAULT_TEXTS for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    tokens = SPECIALS + words
    return tokens + [f"[unused{index}]" for index in range(max(0, extra_size - len(tokens)))]


def build_pair(root: Path, head: str = "MobileBertForQuestionAnswering", **config) -> tuple[Path, Path]:
    """(HF dir, Paddle dir converted from it) for a perturbed random model."""
    vocab = english_vocab(config.pop("vocab_size", 0))
    hf_dir = save_hf(make_hf_model(head, vocab_size=len(vocab), **config), root / "hf", vocab)
    convert(hf_dir, root / "paddle")
    return hf_dir, root / "paddle"


@pytest.fixture(scope="module")
def qa_pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("qa"))


def run_compare(capsys, *args) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else {}, captured.err


def perturb_one_tensor(directory: Path, key: str, factor: float = 1.01) -> None:
    """Rewrite model.safetensors with one tensor scaled, keeping the other tensors and metadata."""
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors[key] = tensors[key] * np.float32(factor)
    save_file(tensors, str(path), metadata=metadata)


# ----------------------------------------------------------------------------------------
# The measures themselves
# ----------------------------------------------------------------------------------------

def test_relative_error_is_max_abs_difference_over_max_abs_reference():
    torch_value = np.array([[1.0, -4.0], [2.0, 100.0]])
    paddle_value = np.array([[1.0, -4.002], [2.0, 100.0]])
    assert numerics.relative_error(paddle_value, torch_value) == pytest.approx(0.002 / 100)
    mask = np.array([True, False])  # the first row only: scale 4
    assert numerics.relative_error(paddle_value, torch_value, mask) == pytest.approx(0.002 / 4)
    assert numerics.relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_output_errors_masks_padding_and_measures_cls_alone():
    torch_value = np.ones((2, 3, 4))
    paddle_value = torch_value.copy()
    paddle_value[1, 2] = 50.0                  # a padded position: must not count
    paddle_value[0, 0] += 1e-3                 # [CLS] of the first row
    mask = np.array([[True, True, True], [True, True, False]])
    errors = compare.output_errors(compare.OutputPair("x", paddle_value, torch_value, True), mask)
    assert errors["all"] == pytest.approx(1e-3) and errors["cls"] == pytest.approx(1e-3)
    per_sequence = compare.output_errors(compare.OutputPair("y", paddle_value[:, 0], torch_value[:, 0], False), mask)
    assert per_sequence["cls"] is None and per_sequence["all"] == pytest.approx(1e-3)


def test_not_finite_error_never_passes():
    assert not compare.within(math.nan, 1e-5) and not compare.within(math.inf, 1e-5)
    assert compare.within(None, 1e-5) and compare.within(1e-6, 1e-5) and not compare.within(2e-5, 1e-5)


def test_batch_is_padded_real_text_with_pairs(qa_pair):
    _, paddle_dir = qa_pair
    encode, pad_id = compare.load_encoder([paddle_dir])
    batch = compare.build_batch(encode, pad_id, compare.DEFAULT_TEXTS, 512)
    lengths = batch["attention_mask"].sum(axis=1)
    assert len(set(lengths)) == len(lengths)  # all different: every row but the longest is padded
    assert (batch["input_ids"][batch["attention_mask"] == 0] == pad_id).all()
    assert (batch["token_type_ids"].max(axis=1) == [1, 0, 1, 0, 0]).all()  # the pairs have a segment B
    real = batch["input_ids"][batch["attention_mask"] == 1]
    assert (real == SPECIALS.index("[UNK]")).sum() == 0  # real word pieces, not [UNK]


# ----------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------

def test_compare_passes_on_converted_model(qa_pair, capsys):
    hf_dir, paddle_dir = qa_pair
    code, summary, stderr = run_compare(capsys, hf_dir, paddle_dir)
    assert code == 0 and summary["passed"]
    assert summary["architecture"] == "MobileBertForQuestionAnswering"
    assert summary["texts"] == len(compare.DEFAULT_TEXTS)
    assert summary["real_tokens"] < summary["batch_shape"][0] * summary["batch_shape"][1]  # padding present
    assert set(summary["outputs"]) == {"start_logits", "end_logits"}
    for row in summary["outputs"].values():
        assert row["all"] <= 1e-5 and row["cls"] <= 1e-5
    assert summary["max_relative_error"] <= 1e-5
    assert "start_logits" in stderr and "PASS" in stderr


def test_compare_layers_and_custom_texts(qa_pair, capsys):
    hf_dir, paddle_dir = qa_pair
    code, summary, stderr = run_compare(capsys, hf_dir, paddle_dir, "--layers", "--text", "the fox",
                                        "--text", "what jumps? ||| the quick brown fox jumps.")
    assert code == 0
    assert summary["texts"] == 2 and summary["batch_shape"][0] == 2
    assert list(summary["layers"]) == ["embeddings", "layer.1", "layer.2"]
    for row in summary["layers"].values():
        assert row["all"] <= 1e-5 and row["cls"] <= 1e-5
    assert "layer.2" in stderr


@pytest.mark.parametrize("head", [head for head in HF_HEADS if head != "MobileBertForQuestionAnswering"])
def test_compare_every_head(head, tmp_path):
    hf_dir, paddle_dir = build_pair(tmp_path, head)
    summary = compare.compare(str(hf_dir), str(paddle_dir), layers=True)
    assert summary["architecture"] == head and summary["passed"], summary
    assert summary["outputs"] and summary["layers"]


@pytest.mark.parametrize("key", ["mobilebert.embeddings.embedding_transformation.weight",
                                 "mobilebert.encoder.layer.1.output.bottleneck.LayerNorm.weight",
                                 "qa_outputs.bias"])
def test_one_weight_off_by_one_percent_fails(key, qa_pair, tmp_path, capsys):
    hf_dir, paddle_dir = qa_pair
    shutil.copytree(paddle_dir, tmp_path / "perturbed")
    perturb_one_tensor(tmp_path / "perturbed", key)
    code, summary, stderr = run_compare(capsys, hf_dir, tmp_path / "perturbed")
    assert code == 1 and not summary["passed"]
    assert summary["max_relative_error"] > 1e-4
    assert "ABOVE TOLERANCE" in stderr and "FAIL" in stderr


@pytest.mark.slow
def test_exit_code_1_from_the_real_cli(qa_pair, tmp_path):
    hf_dir, paddle_dir = qa_pair
    shutil.copytree(paddle_dir, tmp_path / "perturbed")
    perturb_one_tensor(tmp_path / "perturbed", "mobilebert.encoder.layer.0.output.bottleneck.dense.weight")
    result = subprocess.run([sys.executable, "-m", "mobilebert_paddle", "compare", str(hf_dir),
                             str(tmp_path / "perturbed")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["passed"] is False


def test_bad_inputs_are_one_line_errors(qa_pair, tmp_path, capsys):
    hf_dir, paddle_dir = qa_pair
    base = build_pair(tmp_path / "base", "MobileBertModel")[1]
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(paddle_dir, no_tokenizer)
    (no_tokenizer / "vocab.txt").unlink()
    hf_no_tokenizer = tmp_path / "hf-no-tokenizer"
    shutil.copytree(hf_dir, hf_no_tokenizer)
    (hf_no_tokenizer / "vocab.txt").unlink()
    cases = [((paddle_dir, paddle_dir), "a Paddle model dir; HF_SRC must be"),
             ((hf_dir, base), "no weights for qa_outputs"),
             ((hf_no_tokenizer, no_tokenizer), "no tokenizer files"),
             ((hf_dir, tmp_path / "missing"), "no such directory"),
             ((hf_dir, paddle_dir, "--text", " "), "empty text")]
    for args, words in cases:
        code, summary, stderr = run_compare(capsys, *args)
        lines = [line for line in stderr.splitlines() if line.startswith("mobilebert compare: error: ")]
        assert code == 2 and not summary and len(lines) == 1 and words in lines[0], (args, stderr)


@pytest.mark.slow
def test_compare_full_size(tmp_path, capsys):
    """The real architecture (24 layers, 512/128 wide, 4 FFNs) at the real vocabulary size."""
    hf_dir, paddle_dir = build_pair(tmp_path, "MobileBertForQuestionAnswering", full_size=True, vocab_size=30522)
    code, summary, _ = run_compare(capsys, hf_dir, paddle_dir)
    assert code == 0 and summary["passed"], summary
    assert summary["max_relative_error"] <= 1e-5
