"""The PyTorch reference for parity tests: random HF MobileBERT models built in-process.

Weights are perturbed away from HF's init (zero biases, unit NoNorm scales) so that every
tensor, bias and NoNorm scale changes the output and a wrongly mapped one cannot hide.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import paddle
import torch
import transformers

from mobilebert_paddle.core.numerics import relative_error  # noqa: F401  (re-exported for the tests)
from mobilebert_paddle.tools import compare

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
def perturb(model, seed: int = 0) -> None:
    """Move every weight off HF's init (std 0.02, zero biases, unit norms): matrices to std
    0.5/sqrt(fan_in), embeddings +- 0.2, biases and norm offsets +- 0.05, norm scales 1 +- 0.05.

    At HF's init the attention scores are ~1e-3 and the softmax is uniform to float
    precision: the query and key weights, even scaled x10, left the outputs bit-identical,
    so a mapping error in them could not show. Here attention is far from uniform: scaling
    any one tensor by 1.5 moves the tiny QA logits by >= 1e-5 relative (most by far more),
    except the key bias, which softmax cancels exactly. Larger weights (std 1/sqrt(fan_in))
    make the models ill-conditioned (large attention scores amplify float32 rounding), and
    then both float32 runs drift from a float64 reference, Paddle or PyTorch further
    depending on the seed; tests/test_precision.py checks accuracy at the real checkpoint's
    activation scale instead. At this scale every parity error stays below ~2e-6."""
    generator = torch.Generator().manual_seed(seed + 1)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if name.endswith("LayerNorm.weight"):
            parameter.copy_(1.0 + 0.05 * noise)   # NoNorm / LayerNorm scales away from 1
        elif name.endswith("bias"):
            parameter.add_(0.05 * noise)          # biases away from 0
        elif parameter.ndim == 2 and "embeddings" not in name:
            parameter.copy_(0.5 * noise / math.sqrt(parameter.shape[1]))  # [out, in]
        else:
            parameter.add_(0.2 * noise)


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


def paired_outputs(head: str, torch_output, paddle_output, token_mask):
    """[(name, paddle array, torch array, mask or None)] for every output of a head, from
    compare.paired_outputs. Per-token outputs are compared on real (unpadded) tokens, and
    again at [CLS] alone (name + "[CLS]")."""
    rows = []
    for pair in compare.paired_outputs(head, torch_output, paddle_output):
        rows.append((pair.name, pair.paddle, pair.torch, token_mask if pair.per_token else None))
        if pair.per_token:
            rows.append((pair.name + "[CLS]", pair.paddle[:, 0], pair.torch[:, 0], None))
    return rows


def run_torch(model, batch):
    with torch.no_grad():
        return model(**{key: torch.from_numpy(value) for key, value in batch.items()})


def run_paddle(model, batch):
    model.eval()
    with paddle.no_grad():
        return model(**{key: paddle.to_tensor(value) for key, value in batch.items()})
