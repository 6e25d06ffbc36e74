"""The PyTorch reference for parity tests: random HF MobileBERT models built in-process.

Weights are perturbed away from HF's init (zero biases, unit NoNorm scales) so that every
tensor, bias and NoNorm scale changes the output and a wrongly mapped one cannot hide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import torch
import transformers

TINY = dict(vocab_size=99, hidden_size=32, embedding_size=16, intra_bottleneck_size=8, intermediate_size=24,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, type_vocab_size=2,
            num_feedforward_networks=2, hidden_act="relu")

# Every config variant the model supports (issue 2); each differs from TINY in one or two keys.
VARIANTS = {
    "default": {},
    "layer_norm": dict(normalization_type="layer_norm"),
    "no_bottleneck": dict(use_bottleneck=False, hidden_size=32, intermediate_size=24),
    "bottleneck_attention": dict(use_bottleneck_attention=True),
    "no_shared_bottleneck": dict(key_query_shared_bottleneck=False, use_bottleneck_attention=True),
    "no_shared_no_bottleneck": dict(key_query_shared_bottleneck=False, use_bottleneck=False),
    "no_trigram": dict(trigram_input=False),
    "no_trigram_same_width": dict(trigram_input=False, embedding_size=32),
    "one_ffn": dict(num_feedforward_networks=1),
    "four_ffn": dict(num_feedforward_networks=4),
    "no_classifier_activation": dict(classifier_activation=False),
    "intra_bottleneck_12": dict(intra_bottleneck_size=12, num_attention_heads=3),
    "gelu": dict(hidden_act="gelu"),
    "gelu_layer_norm_no_bottleneck": dict(hidden_act="gelu", normalization_type="layer_norm", use_bottleneck=False),
}

HF_HEADS = ["MobileBertModel", "MobileBertForMaskedLM", "MobileBertForPreTraining",
            "MobileBertForNextSentencePrediction", "MobileBertForSequenceClassification",
            "MobileBertForQuestionAnswering", "MobileBertForTokenClassification", "MobileBertForMultipleChoice"]


def make_hf_model(head: str = "MobileBertForQuestionAnswering", seed: int = 0, **config_values):
    """A tiny random HF model; `full_size=True` starts from the real model's default config."""
    torch.manual_seed(seed)
    base = {} if config_values.pop("full_size", False) else TINY
    config = transformers.MobileBertConfig(**{**base, **config_values})
    model = getattr(transformers, head)(config).eval()
    perturb(model, seed)
    return model


@torch.no_grad()
def perturb(model, seed: int = 0, scale: float = 0.02) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator) * scale
        if name.endswith("LayerNorm.weight"):
            parameter.copy_(1.0 + 5 * noise)   # NoNorm / LayerNorm scales away from 1
        elif name.endswith("bias"):
            parameter.add_(5 * noise)          # biases away from 0
        else:
            parameter.add_(noise)


def save_hf(model, directory: Path, vocab_tokens: list[str] | None = None) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory)
    tokens = vocab_tokens or default_vocab(model.config.vocab_size)
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory


def default_vocab(size: int) -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + [f"tok{index}" for index in range(size - len(specials))]


def padded_batch(vocab_size: int, lengths=(7, 12, 5), seed: int = 0, choices: int | None = None):
    """input_ids, token_type_ids, attention_mask as int64 numpy, padded to max(lengths).

    Each row: [CLS]-like id, random ids, a segment B marked by token type 1, zeros after."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    shape = (len(lengths), width)
    input_ids = np.zeros(shape, dtype=np.int64)
    token_type_ids = np.zeros(shape, dtype=np.int64)
    attention_mask = np.zeros(shape, dtype=np.int64)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(5, vocab_size, size=length)
        input_ids[row, 0] = 2
        token_type_ids[row, length // 2:length] = 1
        attention_mask[row, :length] = 1
    batch = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    if choices:
        batch = {key: np.stack([np.roll(value, shift, axis=0) for shift in range(choices)], axis=1)
                 for key, value in batch.items()}
    return batch


def relative_error(paddle_value, torch_value, mask=None) -> float:
    paddle_value = np.asarray(paddle_value, dtype=np.float64)
    torch_value = np.asarray(torch_value, dtype=np.float64)
    if mask is not None:
        paddle_value, torch_value = paddle_value[mask], torch_value[mask]
    scale = np.abs(torch_value).max()
    return float(np.abs(paddle_value - torch_value).max() / (scale if scale > 0 else 1.0))


def paired_outputs(head: str, torch_output, paddle_output, token_mask):
    """[(name, paddle array, torch array, mask or None)] for every output of a head.

    Per-token outputs are compared on real (unpadded) tokens only."""
    def pd(value):
        return value.numpy()

    def th(value):
        return value.detach().numpy()

    if head == "MobileBertModel":
        return [("sequence_output", pd(paddle_output.sequence_output), th(torch_output.last_hidden_state), token_mask),
                ("cls", pd(paddle_output.sequence_output[:, 0]), th(torch_output.last_hidden_state[:, 0]), None),
                ("pooled_output", pd(paddle_output.pooled_output), th(torch_output.pooler_output), None)]
    if head == "MobileBertForPreTraining":
        return [("prediction_logits", pd(paddle_output.prediction_logits), th(torch_output.prediction_logits),
                 token_mask),
                ("seq_relationship_logits", pd(paddle_output.seq_relationship_logits),
                 th(torch_output.seq_relationship_logits), None)]
    if head == "MobileBertForQuestionAnswering":
        return [("start_logits", pd(paddle_output.start_logits), th(torch_output.start_logits), token_mask),
                ("end_logits", pd(paddle_output.end_logits), th(torch_output.end_logits), token_mask)]
    per_token = head in ("MobileBertForMaskedLM", "MobileBertForTokenClassification")
    return [("logits", pd(paddle_output), th(torch_output.logits), token_mask if per_token else None)]


def run_torch(model, batch):
    with torch.no_grad():
        return model(**{key: torch.from_numpy(value) for key, value in batch.items()})


def run_paddle(model, batch):
    model.eval()
    with paddle.no_grad():
        return model(**{key: paddle.to_tensor(value) for key, value in batch.items()})
