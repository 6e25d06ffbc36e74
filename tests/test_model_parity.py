"""Forward parity: the Paddle model equals HF's PyTorch MobileBERT, by relative error.

Every head x every config variant (tiny), and the full-size 24-layer config, on a padded
batch of different lengths with an attention mask and token types set.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from reference import (
    HF_HEADS,
    VARIANTS,
    make_hf_model,
    padded_batch,
    paired_outputs,
    perturb,
    relative_error,
    run_paddle,
    run_torch,
    save_hf,
)

import mobilebert_paddle as mbp
from mobilebert_paddle.model.network import HEADS

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


def pretraining_gradients(model, batch: dict, projections) -> dict:
    """Gradients (by parameter path) of a fixed random projection of the pretraining head's
    logits, in training mode."""
    model.train()
    model.clear_gradients()
    output = model(**{key: paddle.to_tensor(value) for key, value in batch.items()})
    loss = ((output.prediction_logits * paddle.to_tensor(projections[0])).sum()
            + (output.seq_relationship_logits * paddle.to_tensor(projections[1])).sum())
    loss.backward()
    return {path: param.grad.numpy() for path, param in model.named_parameters() if param.grad is not None}


@pytest.mark.parametrize("variant", ["default", "layer_norm", "no_bottleneck", "bottleneck_attention"])
def test_training_gradients_of_the_fused_cpu_path_equal_plain_ops_and_hf(variant, tmp_path, monkeypatch):
    """Training on CPU takes network.LinearFunction / NoNormFunction (bias in the GEMM, bias and
    scale gradients as products with ones): every gradient equals the plain ops' (bit for bit
    here; 1e-6 allowed for other BLAS paths) and HF's autograd (1e-4: gradients sum many more terms)."""
    from mobilebert_paddle.model import network
    from mobilebert_paddle.model.modeldir import paddle_to_hf

    head = "MobileBertForPreTraining"
    hf_model = make_hf_model(head, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **VARIANTS[variant])
    paddle_model = convert_to_paddle(hf_model, tmp_path, head)
    batch = padded_batch(hf_model.config.vocab_size)
    rng = np.random.default_rng(1)
    projections = (rng.standard_normal((*batch["input_ids"].shape, hf_model.config.vocab_size)).astype("float32"),
                   rng.standard_normal((len(batch["input_ids"]), 2)).astype("float32"))
    paddle_model.train()
    assert network.fused_training(paddle_model.mobilebert.embeddings.LayerNorm, paddle.ones([1], "float32"))
    fused = pretraining_gradients(paddle_model, batch, projections)
    monkeypatch.setattr(network, "fused_training", lambda layer, x: False)
    plain = pretraining_gradients(paddle_model, batch, projections)
    assert set(fused) == set(plain) and len(fused) > 20
    for path in fused:
        assert relative_error(fused[path], plain[path]) <= 1e-6, path

    hf_model.train()
    outputs = hf_model(**{key: torch.from_numpy(value) for key, value in batch.items()})
    ((outputs.prediction_logits * torch.from_numpy(projections[0])).sum()
     + (outputs.seq_relationship_logits * torch.from_numpy(projections[1])).sum()).backward()
    torch_gradients = {path: param.grad.numpy() for path, param in hf_model.named_parameters() if param.grad is not None}
    ours = paddle_to_hf(fused, paddle_model.config, type(paddle_model))
    # HF's Embedding has padding_idx, so torch never trains the [PAD] row (id 0); Google's TF
    # code and ours do (the trigram input reads it beside every last token): left out here.
    for gradients in (ours, torch_gradients):
        gradients["mobilebert.embeddings.word_embeddings.weight"] = gradients[
            "mobilebert.embeddings.word_embeddings.weight"][1:]
    for path, gradient in ours.items():
        if path.endswith("attention.self.key.bias"):     # exactly 0 in theory (softmax cancels it): rounding noise
            continue
        assert relative_error(gradient, torch_gradients[path]) <= 1e-4, path


@pytest.mark.parametrize("rows", [3, 40])
def test_vocabulary_logits_function_equals_the_concatenated_product(rows):
    """The MLM head's training path (network.VocabularyLogitsFunction: two products and an add for
    few rows, one product over concatenated weights for many) gives the plain concatenated
    product's logits and every gradient, for both branches (hidden width 16: 3 rows take the
    first, 40 the second)."""
    from mobilebert_paddle.model import network

    rng = np.random.default_rng(rows)
    values = {"hidden": rng.standard_normal((rows, 16)), "embeddings": rng.standard_normal((50, 4)),
              "dense": rng.standard_normal((50, 12)), "bias": rng.standard_normal(50)}
    projection = paddle.to_tensor(rng.standard_normal((rows, 50)).astype("float32"))

    def run(fused: bool):
        tensors = {name: paddle.to_tensor(value.astype("float32"), stop_gradient=False) for name, value in values.items()}
        if fused:
            logits = network.VocabularyLogitsFunction.apply(*tensors.values())
        else:
            weight = paddle.concat([tensors["embeddings"], tensors["dense"]], axis=1)
            logits = paddle.matmul(tensors["hidden"], weight, transpose_y=True) + tensors["bias"]
        (logits * projection).sum().backward()
        return logits.numpy(), {name: tensor.grad.numpy() for name, tensor in tensors.items()}

    (fused_logits, fused_grads), (plain_logits, plain_grads) = run(True), run(False)
    assert relative_error(fused_logits, plain_logits) <= 1e-6
    assert set(fused_grads) == {"hidden", "embeddings", "dense", "bias"}
    for name in fused_grads:
        assert relative_error(fused_grads[name], plain_grads[name]) <= 1e-6, name


def test_dropout_on_cpu_training_is_inverted_dropout_from_the_seeded_mask_generator():
    """network.Dropout in eager CPU training: a share p of zeros, the rest x / (1 - p), the same
    mask in the gradient, the same masks again after the same seed; identity in eval mode."""
    from mobilebert_paddle.core import dropout_masks
    from mobilebert_paddle.model import network

    layer = network.Dropout(0.25)
    x = paddle.to_tensor(np.random.default_rng(0).uniform(1.0, 2.0, (64, 256)).astype("float32"), stop_gradient=False)

    def forward_and_gradient():
        out = layer(x)
        out.sum().backward()
        gradient = x.grad.numpy().copy()
        x.clear_gradient()
        return out.numpy(), gradient

    layer.train()
    dropout_masks.seed(3)
    out, gradient = forward_and_gradient()
    kept = out != 0
    assert 0.23 <= 1 - kept.mean() <= 0.27
    np.testing.assert_allclose(out[kept], x.numpy()[kept] / 0.75, rtol=1e-6)
    np.testing.assert_allclose(gradient, kept / 0.75, rtol=1e-6)
    dropout_masks.seed(3)
    assert np.array_equal(forward_and_gradient()[0], out)
    assert not np.array_equal(forward_and_gradient()[0], out)
    layer.eval()
    assert np.array_equal(layer(x).numpy(), x.numpy())


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


# ----------------------------------------------------------------------------------------
# Hidden states and attention maps (distillation reads both), and Google's IB-BERT layout
# ----------------------------------------------------------------------------------------

def assert_internals_equal(hf_model, paddle_model, batch, head):
    """hidden_states (embeddings + every layer) and attention probabilities equal HF's."""
    with torch.no_grad():
        torch_output = hf_model(**{key: torch.from_numpy(value) for key, value in batch.items()},
                                output_hidden_states=True, output_attentions=True)
    paddle_model.eval()
    with paddle.no_grad():
        wrapped = paddle_model(**{key: paddle.to_tensor(value) for key, value in batch.items()},
                               output_hidden_states=True, output_attentions=True)
    layers = hf_model.config.num_hidden_layers
    assert len(wrapped.hidden_states) == len(torch_output.hidden_states) == layers + 1
    assert len(wrapped.attentions) == len(torch_output.attentions) == layers
    token_mask = batch["attention_mask"].astype(bool)
    for index, (ours, theirs) in enumerate(zip(wrapped.hidden_states, torch_output.hidden_states)):
        error = relative_error(ours.numpy(), theirs.numpy(), token_mask)
        assert error <= TOLERANCE, f"{head} hidden state {index}: relative error {error:.3g}"
    # Attention rows of real query tokens; masked keys hold exact zeros on both sides.
    query_mask = token_mask[:, None, :, None]
    for index, (ours, theirs) in enumerate(zip(wrapped.attentions, torch_output.attentions)):
        ours, theirs = ours.numpy(), theirs.numpy()
        assert ours.shape == theirs.shape == (*batch["input_ids"].shape[:1], hf_model.config.num_attention_heads,
                                              batch["input_ids"].shape[1], batch["input_ids"].shape[1])
        error = np.abs(np.where(query_mask, ours - theirs, 0)).max() / np.abs(theirs).max()
        assert error <= TOLERANCE, f"{head} attention {index}: relative error {error:.3g}"
        np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-5)
    # The head's own output is unchanged by asking for internals.
    plain = run_paddle(paddle_model, batch)
    head_output = wrapped if head == "MobileBertModel" else wrapped.output   # the backbone carries them itself
    for ours, theirs in zip(tensors_of(head_output), tensors_of(plain), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def tensors_of(output) -> list:
    if isinstance(output, paddle.Tensor):
        return [output.numpy()]
    return [item.numpy() for item in output if isinstance(item, paddle.Tensor)]


@pytest.mark.parametrize("variant", ["default", "layer_norm", "bottleneck_attention", "no_bottleneck", "four_ffn"])
@pytest.mark.parametrize("head", ["MobileBertModel", "MobileBertForPreTraining", "MobileBertForQuestionAnswering"])
def test_hidden_states_and_attentions_equal_hf(head, variant, tmp_path):
    hf_model = make_hf_model(head, attn_implementation="eager", **VARIANTS[variant])
    paddle_model = convert_to_paddle(hf_model, tmp_path, head)
    assert_internals_equal(hf_model, paddle_model, padded_batch(hf_model.config.vocab_size), head)


def test_internals_not_requested_change_nothing(tmp_path):
    hf_model = make_hf_model("MobileBertForSequenceClassification")
    paddle_model = convert_to_paddle(hf_model, tmp_path, "MobileBertForSequenceClassification")
    batch = padded_batch(hf_model.config.vocab_size)
    output = run_paddle(paddle_model, batch)
    assert isinstance(output, paddle.Tensor)          # no wrapper unless asked
    backbone = paddle_model.mobilebert(paddle.to_tensor(batch["input_ids"]))
    assert backbone.hidden_states is None and backbone.attentions is None


# IB-BERT (Google's uncased_L-24_H-1024_B-512_A-4 layout), tiny: the block input (H) is narrower
# than the block's inside (I), and queries, keys and values all read the H-wide block input.
IB_BERT_TINY = dict(hidden_size=32, intra_bottleneck_size=48, intermediate_size=64, embedding_size=16,
                    num_feedforward_networks=1, use_bottleneck=True, use_bottleneck_attention=False,
                    key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu_new",
                    num_attention_heads=4)


def make_ib_bert_reference(head: str, seed: int = 0):
    """HF's MobileBERT with the query/key Linear layers rebuilt to read hidden_size: HF's forward
    already feeds them the block input in this layout, only their shapes are I wide."""
    hf_model = make_hf_model(head, seed=seed, attn_implementation="eager", **IB_BERT_TINY)
    config = hf_model.config
    for layer in (hf_model.mobilebert if hasattr(hf_model, "mobilebert") else hf_model).encoder.layer:
        attention = layer.attention.self
        attention.query = torch.nn.Linear(config.hidden_size, config.true_hidden_size)
        attention.key = torch.nn.Linear(config.hidden_size, config.true_hidden_size)
    perturb(hf_model, seed)
    return hf_model.eval()


@pytest.mark.parametrize("head", ["MobileBertModel", "MobileBertForPreTraining", "MobileBertForQuestionAnswering"])
def test_ib_bert_layout_equals_reference(head, tmp_path):
    hf_model = make_ib_bert_reference(head)
    paddle_model = convert_to_paddle(hf_model, tmp_path, head)
    query = paddle_model.state_dict()[f"{'' if head == 'MobileBertModel' else 'mobilebert.'}"
                                      "encoder.layer.0.attention.self.query.weight"]
    assert query.shape == [32, 48]                    # [in = hidden_size, out = intra_bottleneck_size]
    batch = padded_batch(hf_model.config.vocab_size)
    assert_parity(head, hf_model, paddle_model, batch)
    assert_internals_equal(hf_model, paddle_model, batch, head)


def test_ib_bert_round_trip_to_hf_layout(tmp_path):
    """Paddle -> HF-named layout -> Paddle is bit-identical; the summary says transformers cannot load it."""
    from mobilebert_paddle.model.convert import convert

    hf_model = make_ib_bert_reference("MobileBertForPreTraining")
    save_hf(hf_model, tmp_path / "hf")
    first = convert(tmp_path / "hf", tmp_path / "paddle")
    back = convert(tmp_path / "paddle", tmp_path / "hf-again", to="hf")
    assert "transformers" in back["note"] and "note" in first
    again = convert(tmp_path / "hf-again", tmp_path / "paddle-again")
    assert again["tensors"] == first["tensors"]
    from safetensors.numpy import load_file

    ours, twice = load_file(tmp_path / "paddle" / "model.safetensors"), load_file(tmp_path / "paddle-again" / "model.safetensors")
    assert ours.keys() == twice.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], twice[key], err_msg=key)
    theirs = {key: value.numpy() for key, value in hf_model.state_dict().items()}
    reloaded = load_file(tmp_path / "hf-again" / "model.safetensors")
    for key, value in reloaded.items():
        np.testing.assert_array_equal(value, theirs[key], err_msg=key)


@pytest.mark.parametrize("preset", ["mobilebert", "mobilebert-tiny", "ib-bert"])
def test_presets_build_google_configs(preset):
    """Google's released configs, at full size: backbone parameter counts within 5% of the paper's
    (MobileBERT 25.3M, MobileBERT-TINY 15.1M, IB-BERT_LARGE 293M; measured 24.6M, 15.5M, 294.5M)."""
    from mobilebert_paddle.model.config import load_config

    config = load_config(preset)
    assert config.num_hidden_layers == 24 and config.hidden_size == 512 and config.vocab_size == 30522
    expected = {"mobilebert": 25.3e6, "mobilebert-tiny": 15.1e6, "ib-bert": 293e6}[preset]
    with paddle.LazyGuard():
        model = mbp.MobileBertModel(config)
    count = sum(int(np.prod(parameter.shape)) for parameter in model.parameters())
    assert abs(count - expected) / expected < 0.05, count
    assert (config.transformers_incompatibility() is None) == (preset != "ib-bert")


def test_load_config_refuses_unknown_spec(tmp_path):
    from mobilebert_paddle.core.errors import UserInputError
    from mobilebert_paddle.model.config import load_config

    with pytest.raises(UserInputError, match="neither a preset"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "embedding_size": 32, "intra_bottleneck_size": 32, "num_attention_heads": 4}')
    assert load_config(tmp_path).hidden_size == 64
    assert load_config(tmp_path / "config.json").intra_bottleneck_size == 32
