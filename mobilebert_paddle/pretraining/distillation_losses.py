"""The losses of distillation (paper §3-4), with Google's knob names and defaults (DISTILL_DEFAULTS).

Stage 1, one layer's transfer losses (`layer_transfer_losses`):
  feature maps   mean over tokens and H of (LN(teacher_l) - LN(student_l))^2   x hidden factor
  attention      per head and query, -sum_k teacher_p * log student_p           x attention factor
  mean           mean over tokens of (mean_H teacher_l - mean_H student_l)^2   x beta
  variance       mean over tokens of |var_H teacher_l - var_H student_l|       x gamma
(LN: LayerNorm over H without parameters.)
Stage 2 (`pretraining_distillation_losses`): MLM against ratio x one-hot + (1 - ratio) x the
teacher's softmax (`soft_target_cross_entropy`, linear in the vocabulary), plus NSP.
Shapes: B batch, T tokens, H hidden_size, N heads, P masked positions per row, V vocabulary.
"""


from __future__ import annotations

from typing import NamedTuple

import paddle
import paddle.nn.functional as F

# Google's values (paper §4.3; run_pretraining.py flag names without the leading "--").
DISTILL_DEFAULTS = {"hidden_distill_factor": 100.0, "attention_distill_factor": 1.0,
                    "beta_distill_factor": 5000.0, "gamma_distill_factor": 5.0,
                    "distill_ground_truth_ratio": 0.5, "distill_temperature": 1.0}

# TF1 normalises feature maps with contrib layer_norm, whose epsilon is 1e-12 (as MobileBERT's own).
FEATURE_NORM_EPSILON = 1e-12


# --------------------------------------------------------------------------------------------
# Transfer losses of one layer (stage 1)
# --------------------------------------------------------------------------------------------

class TransferFactors(NamedTuple):
    hidden: float = DISTILL_DEFAULTS["hidden_distill_factor"]
    attention: float = DISTILL_DEFAULTS["attention_distill_factor"]
    beta: float = DISTILL_DEFAULTS["beta_distill_factor"]
    gamma: float = DISTILL_DEFAULTS["gamma_distill_factor"]


def token_weights(attention_mask, batch: int, length: int):
    """(B, T) float32: 1 for real tokens, 0 for padding (all ones without a mask).

    Every transfer loss is a per-row mean over the row's real tokens; the Trainer then averages
    rows. Google's means include padded positions (its inputs are always padded to
    max_seq_length, so every row weighs the same there too); here a batch may be padded to its
    own length, so counting padding would make a layer's loss depend on how much padding its
    batch happens to have, and spend gradient on matching the states of [PAD] tokens, which
    nothing downstream reads.
    """
    if attention_mask is None:
        return paddle.ones([batch, length], dtype="float32")
    return attention_mask.astype("float32")


def row_mean_over_tokens(per_token, weights):
    """(B, T) or (B, N, T) per-token values -> (B,): each row's mean over its real tokens (and heads)."""
    if per_token.ndim == 3:                                   # (B, N, T): every head counts
        return (per_token * weights.unsqueeze(1)).sum(axis=[1, 2]) / (per_token.shape[1] * weights.sum(axis=1))
    return (per_token * weights).sum(axis=1) / weights.sum(axis=1)


class TokenStatistics(NamedTuple):
    """Per token, over H: the mean (B, T, 1), the centred values (B, T, H) and the population
    variance (B, T, 1). Feature maps and the mean/variance losses both read them: computed once."""

    mean: paddle.Tensor
    centred: paddle.Tensor
    variance: paddle.Tensor


def token_statistics(hidden) -> TokenStatistics:
    mean = hidden.mean(axis=-1, keepdim=True)
    centred = hidden - mean
    return TokenStatistics(mean, centred, paddle.square(centred).mean(axis=-1, keepdim=True))


def normalise_features(hidden, statistics: TokenStatistics | None = None):
    """LayerNorm over H without scale or shift: (B, T, H) -> (B, T, H)."""
    statistics = statistics or token_statistics(hidden)
    return statistics.centred / paddle.sqrt(statistics.variance + FEATURE_NORM_EPSILON)


def feature_map_loss(teacher_hidden, student_hidden, weights, statistics: tuple | None = None):
    """Per row, the mean over real tokens and H of the squared difference of the normalised
    layer outputs: (B, T, H) twice -> (B,).

    TF1 takes the mean over every element (tf.losses.mean_squared_error); TF2's
    keras mean_squared_error leaves a (B, T) tensor whose gradient is that of its *sum*, an
    accident of Keras; the TF1 mean is followed here (TF2's logged metric is that mean too).
    """
    teacher_statistics, student_statistics = statistics or (token_statistics(teacher_hidden.detach()),
                                                            token_statistics(student_hidden))
    difference = (normalise_features(teacher_hidden, teacher_statistics)
                  - normalise_features(student_hidden, student_statistics))
    return row_mean_over_tokens(paddle.square(difference).mean(axis=-1), weights)         # (B, T) -> (B,)


def attention_loss(teacher_attention, student_attention, weights):
    """Per head and query position: -sum over keys of teacher p * log student p, averaged over
    heads and real query positions of each row: (B, N, T, T) probabilities twice -> (B,).

    Google's TF1 code computes exactly this cross-entropy (it calls it a KL divergence; it
    differs from the KL by the teacher's entropy, which has no gradient). TF1 applies softmax
    to the attention *scores*; TF2 applies it to Keras' attention *probabilities* (a second
    softmax), which flattens both maps: TF1 is followed. The model returns probabilities, so the
    student's log-probabilities are log(p): equal to log_softmax(scores) wherever p is a
    normal float. Padded keys have probability exactly 0 in teacher and student (the mask is the
    dtype minimum, as HF's), so they add exactly 0; Google's mask is a soft -6 added to the
    scores (chosen for quantisation), which leaves e^-6-sized weight on padding that the student
    is then asked to copy. Clipping at the smallest normal float keeps 0 * log 0 at 0 with a
    zero gradient instead of nan.
    """
    tiny = paddle.finfo(student_attention.dtype).tiny
    student_log = paddle.log(paddle.clip(student_attention, min=tiny))
    cross_entropy = -(teacher_attention.detach() * student_log).sum(axis=-1)       # (B, N, T)
    return row_mean_over_tokens(cross_entropy, weights)                            # (B,)


def mean_variance_losses(teacher_hidden, student_hidden, weights, statistics: tuple | None = None):
    """(beta part, gamma part), each (B,), before their factors: per token, the mean and the
    (population) variance over H of the raw layer outputs; squared difference of the means,
    absolute difference of the variances, each averaged over the row's real tokens.

    Computed per layer from teacher layer l, as TF2's _get_distribution_losses does. TF1's
    run_pretraining.py takes the teacher's mean and variance of `teacher_hiddens` -- the list of
    every layer, not layer l -- so its student layer l is pulled towards statistics pooled over
    all teacher layers: a bug (a typo for `teacher_hidden`), not followed here.
    """
    teacher, student = statistics or (token_statistics(teacher_hidden.detach()), token_statistics(student_hidden))
    beta = row_mean_over_tokens(paddle.square(teacher.mean - student.mean).squeeze(-1), weights)       # (B, T) -> (B,)
    gamma = row_mean_over_tokens((teacher.variance - student.variance).abs().squeeze(-1), weights)
    return beta, gamma


def layer_transfer_losses(teacher_hidden, student_hidden, teacher_attention, student_attention,
                          attention_mask=None, factors: TransferFactors = TransferFactors()) -> dict:
    """Layer l's four transfer losses per row (B,), each times its factor, and their sum under
    "loss". The batch's loss is the mean over rows (what the Trainer computes).

    teacher_hidden / student_hidden: layer l's outputs (B, T, H); *_attention: layer l's
    attention probabilities (B, N, T, T). Google divides the sum by the number of layers (TF1)
    or by l + 1 (TF2); a constant scale that Adam and LAMB normalise away (but for epsilon), so
    the losses here are the plain sum, comparable across phases.
    """
    weights = token_weights(attention_mask, student_hidden.shape[0], student_hidden.shape[1])
    statistics = (token_statistics(teacher_hidden.detach()), token_statistics(student_hidden))
    beta, gamma = mean_variance_losses(teacher_hidden, student_hidden, weights, statistics)
    parts = {"feature_map_loss": factors.hidden * feature_map_loss(teacher_hidden, student_hidden, weights,
                                                                   statistics),
             "attention_loss": factors.attention * attention_loss(teacher_attention, student_attention, weights),
             "mean_loss": factors.beta * beta,
             "variance_loss": factors.gamma * gamma}
    parts["loss"] = parts["feature_map_loss"] + parts["attention_loss"] + parts["mean_loss"] + parts["variance_loss"]
    return parts


# --------------------------------------------------------------------------------------------
# Pretraining distillation losses (stage 2)
# --------------------------------------------------------------------------------------------

def soft_target_cross_entropy(student_logits, labels, teacher_logits, ratio: float, temperature: float):
    """Per prediction (B, P): -sum over the vocabulary of targets x log_softmax(student_logits),
    targets = ratio x one-hot(labels) + (1 - ratio) x softmax(teacher_logits / temperature)
    (Google's TF1 distillation target); and the cross entropy against the label alone (Google's
    `true_loss`).

    The loss is linear in the targets, so it is computed as ratio x (hard-label cross entropy)
    + (1 - ratio) x (soft-label cross entropy against the teacher's softmax), each by Paddle's
    fused softmax-with-cross-entropy kernel, whose backward (softmax - targets) is linear in V on
    every device, and no one-hot (B, P, V) tensor is built. tests/test_distillation.py checks it
    against the targets x F.log_softmax formula and against Google's definition in float64.
    Never F.log_softmax on this axis: Paddle's CPU backward of log_softmax is quadratic in the
    axis length (a stage 2 step with BERT's 30,522 pieces took ~150 s; benchmarks/training_speed.py).

    The temperature divides the teacher's logits (the usual definition; the student's logits
    are not scaled, as in Google's code). Google's TF1 instead multiplies the teacher's
    sequence output by the temperature before the MLM head, whose LayerNorm largely undoes it,
    and TF2 has no temperature; all three agree at Google's default of 1.
    """
    hard_labels = labels.astype("int64").unsqueeze(-1)
    if ratio == 0.0:
        with paddle.no_grad():          # logged only: no backward through it
            true_loss = F.cross_entropy(student_logits, hard_labels, reduction="none").squeeze(-1)
    else:
        true_loss = F.cross_entropy(student_logits, hard_labels, reduction="none").squeeze(-1)
        if ratio == 1.0:
            return true_loss, true_loss
    teacher_logits = teacher_logits.detach()
    teacher = F.softmax(teacher_logits / temperature if temperature != 1.0 else teacher_logits, axis=-1)
    soft_loss = F.cross_entropy(student_logits, teacher, soft_label=True, reduction="none").squeeze(-1)
    return ratio * true_loss + (1.0 - ratio) * soft_loss, true_loss


def pretraining_distillation_losses(student_logits, teacher_logits, labels, label_weights,
                                    nsp_logits, nsp_labels, ratio: float, temperature: float) -> dict:
    """MLM against the distillation targets plus NSP, per row (B,), as Google's stage 2.

    student_logits / teacher_logits: (B, P, V) at the masked positions; labels (B, P) the
    original tokens; label_weights (B, P): 1 for a real prediction, 0 for padding of the P
    slots. A row's MLM loss is the mean over its predictions of soft_target_cross_entropy
    (Google averages over the batch's predictions; per row, each row weighs the same, which is
    what lets 1 and N processes compute the same update), its NSP loss the cross-entropy of its
    label. Also returned: the MLM loss against the ground truth alone (Google's TF1 `true_loss`),
    logged so that the student's progress reads like pretraining's.
    """
    per_prediction, true_per_prediction = soft_target_cross_entropy(student_logits, labels, teacher_logits,
                                                                     ratio, temperature)        # (B, P) each
    weights = label_weights.astype(per_prediction.dtype)
    count = paddle.clip(weights.sum(axis=1), min=1.0)                                  # (B,)
    distill = (per_prediction * weights).sum(axis=1) / count
    masked_lm = (true_per_prediction * weights).sum(axis=1) / count
    next_sentence = F.cross_entropy(nsp_logits, nsp_labels.astype("int64").reshape([-1, 1]), reduction="none")
    next_sentence = next_sentence.reshape([-1])
    return {"distill_mlm_loss": distill, "next_sentence_loss": next_sentence, "masked_lm_loss": masked_lm,
            "loss": distill + next_sentence}
