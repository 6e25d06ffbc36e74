"""Forward parity: the Paddle model equals HF's PyTorch MobileBERT, by relative error.

Every head x every config variant (tiny), and the full-size 24-layer config, on a padded
batch of different lengths with an attention mask and token types set.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import mobilebert_paddle as mbp
from mobilebert_paddle.model import HEADS
from reference import (HF_HEADS, VARIANTS, make_hf_model, padded_batch, paired_outputs, relative_error,
                       run_paddle, run_torch, save_hf)

TOLERANCE = 1e-5


def convert_to_paddle(hf_model, tmp_path, head):
    save_hf(hf_model, tmp_path / "hf")
    return HEADS[head].from_pretrained(tmp_path / "hf")


def assert_parity(head, hf_model, paddle_model, batch):
    choices = batch["input_ids"].ndim == 3
    token_mask = batch["attention_mask"].astype(bool)
    outputs = paired_outputs(head, run_torch(hf_model, batch), run_paddle(paddle_model, batch), token_mask)
    assert outputs
    for name, paddle_value, torch_value, mask in outputs:
        assert paddle_value.shape == torch_value.shape, name
        assert np.isfinite(torch_value).all(), name
        error = relative_error(paddle_value, torch_value, None if choices else mask)
        assert error <= TOLERANCE, f"{head} {name}: relative error {error:.3g}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("head", HF_HEADS)
def test_every_head_every_variant(head, variant, tmp_path):
    hf_model = make_hf_model(head, **VARIANTS[variant])
    paddle_model = convert_to_paddle(hf_model, tmp_path, head)
    choices = 3 if head == "MobileBertForMultipleChoice" else None
    assert_parity(head, hf_model, paddle_model, padded_batch(hf_model.config.vocab_size, choices=choices))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["MobileBertModel", "MobileBertForQuestionAnswering"])
def test_full_size_default_config(head, tmp_path):
    hf_model = make_hf_model(head, full_size=True)
    assert hf_model.config.num_hidden_layers == 24
    paddle_model = convert_to_paddle(hf_model, tmp_path, head)
    assert_parity(head, hf_model, paddle_model, padded_batch(hf_model.config.vocab_size, lengths=(40, 64, 23)))


def _padded_and_alone(paddle_model, vocab_size):
    batch = padded_batch(vocab_size, lengths=(5, 11))
    padded = run_paddle(paddle_model, batch).sequence_output.numpy()[0, :5]
    alone = {key: value[:1, :5] for key, value in batch.items()}
    return batch, padded, alone, run_paddle(paddle_model, alone).sequence_output.numpy()[0]


def test_padding_does_not_change_real_tokens_with_zero_pad_embedding(tmp_path):
    """The reference semantics: invariant to padding when the [PAD] row is zero (HF's init)."""
    hf_model = make_hf_model("MobileBertModel")
    with torch.no_grad():
        hf_model.embeddings.word_embeddings.weight[hf_model.config.pad_token_id] = 0.0
    paddle_model = convert_to_paddle(hf_model, tmp_path, "MobileBertModel")
    batch, padded, _, alone = _padded_and_alone(paddle_model, hf_model.config.vocab_size)
    assert relative_error(padded, alone) <= TOLERANCE


def test_trigram_ignores_padding_makes_outputs_padding_invariant(tmp_path):
    """With a non-zero [PAD] row the reference itself depends on padding (the last real token's
    trigram sees [PAD]); trigram_ignores_padding removes that and equals HF on the bare sequence."""
    hf_model = make_hf_model("MobileBertModel")
    paddle_model = convert_to_paddle(hf_model, tmp_path, "MobileBertModel")
    _, padded, alone_batch, alone = _padded_and_alone(paddle_model, hf_model.config.vocab_size)
    assert relative_error(padded, alone) > 1e-4  # the reference behaviour, reproduced
    invariant = mbp.MobileBertModel.from_pretrained(tmp_path / "hf", trigram_ignores_padding=True)
    _, padded, _, alone = _padded_and_alone(invariant, hf_model.config.vocab_size)
    assert relative_error(padded, alone) <= TOLERANCE
    hf_alone = run_torch(hf_model, alone_batch).last_hidden_state.numpy()[0]
    assert relative_error(padded, hf_alone) <= TOLERANCE
    # Junk ids under the padding change nothing while masked, and leak in when not masked.
    batch = padded_batch(hf_model.config.vocab_size, lengths=(5, 11))
    batch["input_ids"][0, 5:] = np.arange(10, 16)
    masked = run_paddle(invariant, batch).sequence_output.numpy()[0, :5]
    assert relative_error(masked, alone) <= TOLERANCE
    unmasked = dict(batch, attention_mask=np.ones_like(batch["attention_mask"]))
    leaked = run_paddle(invariant, unmasked).sequence_output.numpy()[0, :5]
    assert relative_error(leaked, alone) > 1e-3


def test_heads_importable_from_package():
    for name in HF_HEADS + ["MobileBertConfig"]:
        assert hasattr(mbp, name), name


def test_base_checkpoint_into_head_initialises_head(tmp_path, caplog):
    hf_model = make_hf_model("MobileBertModel")
    save_hf(hf_model, tmp_path / "hf")
    with caplog.at_level("WARNING"):
        qa = mbp.MobileBertForQuestionAnswering.from_pretrained(tmp_path / "hf")
    assert "qa_outputs.weight" in caplog.text and "qa_outputs.bias" in caplog.text
    base = mbp.MobileBertModel.from_pretrained(tmp_path / "hf")
    word = "embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(qa.mobilebert.state_dict()[word].numpy(), base.state_dict()[word].numpy())
