"""Numerical accuracy at the released checkpoint's scale: our float32 forward is as close to
the exact (float64) result as PyTorch's float32 forward (issue 14).

MobileBERT's residual stream reaches ~1e7 (NoNorm has no statistics to hold it down), so
float32 rounding decides the last bits and the parity bar (1e-5, test_model_parity.py) only
holds if we round no worse than PyTorch. The truth here is the same HF model in float64
(identical weights), so only float32 rounding separates each framework from it.

The stand-in: the full 24-layer model (4k vocabulary to build fast), weights perturbed as in
every parity test, the embeddings' NoNorm scaled to ~0.2 and every layer's output NoNorm
doubling the residual stream: max |activation| every 6 layers ~0.2, 35, 2e3, 1.4e5, 1.1e7.
As in the checkpoint, the value projection reads that full-width stream directly, so the
attention context, the 128-wide block and its four FFNs run at the residual's scale, while
the two bottlenecks that feed queries and keys read it through weights shrunk by the same
growth, so the attention scores stay O(1-100) (pooler likewise). Six batches of 3 x 37
tokens with token types, padded (lengths 37, 25, 9) and unpadded; per output, the error of
each real token (max over its channels) relative to the largest |output|.

Measured (medians over the 6 batches of the worst token's error / mean of the per-token
means; torch = HF float32 with its default SDPA attention):
    output              torch              ours before issue 14   ours now          fused
    last_hidden_state   5.4e-7 / 3.4e-7    5.2e-7 / 3.3e-7        5.2e-7 / 3.3e-7   2.9e-7 / 1.9e-7
    pooled_output       3.8e-7 / 3.5e-7    6.7e-7 / 6.0e-7        3.0e-7 / 2.9e-7   2.5e-7 / 2.2e-7
    qa_logits           7.6e-7 / 3.1e-7    9.6e-7 / 3.9e-7        6.4e-7 / 2.5e-7   4.6e-7 / 1.8e-7
"fused" is fuse.fuse_model, the arithmetic of `export --fuse`: folding the NoNorms (in
float64) removes roundings, so it is the most accurate. The exported ONNX models (ONNX
Runtime, same QA head, same batches; not run here, export costs ~30 s): plain 7.2e-7 /
2.7e-7, fused 5.3e-7 / 2.0e-7.
Sub-block by sub-block (float64 inputs into each float32 block) the encoder is as accurate
as PyTorch's or better: our residual sums have HF's association (dense(x) + bias, then
+ residual, then x * w + b), and Paddle's Linear on (B*T, C) rounds ~20% less than torch's.
What was worse is the heads: Paddle's kernel for thin float32 products (2 QA outputs, the
pooler's B rows) accumulates 512 terms of ~1e7 with twice PyTorch's error; model.HeadLinear
accumulates them in float64. The margin on last_hidden_state's mean is thin (~2%).

Why the previous version of this test (4 layers, a few outlier channels, one batch) said
"as accurate": it compared hidden states and the MLM logits (a wide product), never a thin
head, so the heads' gap could not show. Issue 14's larger gaps on last_hidden_state (ours
1-24x PyTorch's error) come from a different regime, reproduced here by letting the
query/key bottlenecks read the growing stream too (same growth, errors 1e-5 to 5e-2):
scores reach 1e4-1e12 and softmax amplifies float32 rounding of q and k. There no float32
implementation is systematically closer to float64: over 12 batches PyTorch's own eager
attention (same weights) is 0.4-13x off PyTorch's SDPA path (median 1.5x), ours 0.3-6x
(median 1.0x), and two batches are chaotic even in float64 (ours in float64 vs HF's in
float64: 2e-9; elsewhere 1e-13). So this test stays where the comparison is meaningful
(PyTorch's own error < 1e-5) and covers depth, padding and three outputs.
"""

from __future__ import annotations

import copy

import numpy as np
import paddle
import pytest
import torch
from reference import make_hf_model, padded_batch, save_hf

from mobilebert_paddle.inference.fuse import fuse_model
from mobilebert_paddle.model.network import MobileBertForQuestionAnswering, MobileBertModel

pytestmark = pytest.mark.slow

VOCAB_SIZE = 4096        # full width otherwise; the real 30,522 only slows the build
EMBEDDING_SCALE = 0.05   # embeddings' NoNorm: max |activation| ~0.2 ...
GROWTH = 2.0             # ... x2 per layer through the output NoNorm -> ~1e7 after 24 layers
SEEDS = (5, 11, 12)
MAX_RATIO = 1.5          # median over batches of our worst-token error vs PyTorch's
MEAN_RATIO = 1.0         # and the mean per-token error no worse than PyTorch's


@torch.no_grad()
def grow_activations(model) -> None:
    """Residual stream x GROWTH per layer; the query/key bottlenecks and the pooler read it
    through weights shrunk by the growth so far (as trained weights do), the value does not."""
    model.embeddings.LayerNorm.weight *= EMBEDDING_SCALE
    model.embeddings.LayerNorm.bias *= EMBEDDING_SCALE
    growth = 1.0
    for layer in model.encoder.layer:
        layer.bottleneck.input.dense.weight /= growth
        layer.bottleneck.attention.dense.weight /= growth
        layer.output.bottleneck.LayerNorm.weight *= GROWTH
        growth *= GROWTH
    model.pooler.dense.weight /= growth


def hf_model():
    """HF MobileBertModel (with pooler) and a QA head for it (HF's QA forward is exactly
    qa_outputs(last_hidden_state)), float32."""
    model = make_hf_model("MobileBertModel", full_size=True, vocab_size=VOCAB_SIZE)
    grow_activations(model)
    qa_outputs = torch.nn.Linear(model.config.hidden_size, 2)
    with torch.no_grad():
        qa_outputs.weight.copy_(torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
                                / model.config.hidden_size ** 0.5)
    return model, qa_outputs


def paddle_models(hf, qa_outputs, directory):
    """Our MobileBertModel and MobileBertForQuestionAnswering converted from the same weights."""
    save_hf(hf, directory)
    base = MobileBertModel.from_pretrained(directory)
    qa = MobileBertForQuestionAnswering.from_pretrained(directory)  # pooler dropped, qa_outputs set below
    qa.qa_outputs.weight.set_value(qa_outputs.weight.detach().numpy().T)
    qa.qa_outputs.bias.set_value(qa_outputs.bias.detach().numpy())
    base.eval(), qa.eval()
    return base, qa


def batches():
    for lengths in ((37, 25, 9), (37, 37, 37)):
        for seed in SEEDS:
            yield padded_batch(VOCAB_SIZE, lengths=lengths, seed=seed)


def torch_outputs(model, qa_outputs, batch):
    with torch.no_grad():
        encoded = model(**{key: torch.from_numpy(value) for key, value in batch.items()})
        return dict(last_hidden_state=encoded.last_hidden_state.numpy(), pooled_output=encoded.pooler_output.numpy(),
                    qa_logits=qa_outputs(encoded.last_hidden_state).numpy())


def paddle_outputs(base, qa, batch):
    inputs = {key: paddle.to_tensor(value) for key, value in batch.items()}
    with paddle.no_grad():
        encoded, answers = base(**inputs), qa(**inputs)
    return dict(last_hidden_state=encoded.sequence_output.numpy(), pooled_output=encoded.pooled_output.numpy(),
                qa_logits=paddle.stack([answers.start_logits, answers.end_logits], -1).numpy())


def token_errors(value, truth, mask):
    """Per-token error (max over channels) relative to max|truth|, over real tokens (or rows)."""
    value, truth = np.asarray(value, np.float64), np.asarray(truth, np.float64)
    if truth.ndim == 3:
        value, truth = value[mask], truth[mask]
    error = np.abs(value - truth).reshape(len(truth), -1).max(axis=1)
    return error / np.abs(truth).max()


def measure(directory):
    """{output: {"torch" | "paddle": [(max, mean) per batch]}} against float64 HF, and the
    float64 last hidden states (for the scale check)."""
    hf, qa_outputs = hf_model()
    paddle_base, paddle_qa = paddle_models(hf, qa_outputs, directory)
    hf64, qa_outputs64 = copy.deepcopy(hf).double(), copy.deepcopy(qa_outputs).double()
    fused_base, fused_qa = fuse_model(paddle_base), fuse_model(paddle_qa)   # export --fuse's arithmetic
    result = {"final_hidden": []}
    for batch in batches():
        mask = batch["attention_mask"].astype(bool)
        truth = torch_outputs(hf64, qa_outputs64, batch)
        result["final_hidden"].append(truth["last_hidden_state"][mask])
        for framework, outputs in (("torch", torch_outputs(hf, qa_outputs, batch)),
                                   ("paddle", paddle_outputs(paddle_base, paddle_qa, batch)),
                                   ("fused", paddle_outputs(fused_base, fused_qa, batch))):
            for name, value in outputs.items():
                per_token = token_errors(value, truth[name], mask)
                result.setdefault(name, {}).setdefault(framework, []).append((per_token.max(), per_token.mean()))
    return result


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    return measure(tmp_path_factory.mktemp("precision"))


def test_activations_reach_the_checkpoint_scale(errors):
    largest = max(np.abs(hidden).max() for hidden in errors["final_hidden"])
    assert 3e6 < largest < 3e7


@pytest.mark.parametrize("framework", ["paddle", "fused"])
@pytest.mark.parametrize("output", ["last_hidden_state", "pooled_output", "qa_logits"])
def test_paddle_float32_as_accurate_as_torch(errors, output, framework):
    torch_errors, paddle_errors = (np.array(errors[output][name]) for name in ("torch", framework))
    report = (f"{output}: per batch max/mean torch "
              + ", ".join(f"{m:.2g}/{a:.2g}" for m, a in torch_errors)
              + f"; {framework} " + ", ".join(f"{m:.2g}/{a:.2g}" for m, a in paddle_errors))
    assert np.median(torch_errors[:, 0]) < 1e-5, f"the float32 reference itself is inaccurate: {report}"
    assert np.median(paddle_errors[:, 0]) <= MAX_RATIO * np.median(torch_errors[:, 0]), report
    assert paddle_errors[:, 1].mean() <= MEAN_RATIO * torch_errors[:, 1].mean(), report
