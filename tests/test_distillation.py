"""Distillation's pure pieces: each loss part against values worked out by hand (or in numpy,
formula by formula, where a hand sum would be long), the layer schedule, the teacher/student
check and the student's start."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from mobilebert_paddle.config import MobileBertConfig
from mobilebert_paddle.distillation import (LayerSchedule, TransferFactors, check_compatible, copy_from_teacher,
                                            copied_parameter_names, layer_transfer_losses, parameter_group,
                                            phase_warmup, pretraining_distillation_losses)
from mobilebert_paddle.errors import UserInputError

FACTORS = TransferFactors()          # Google's: hidden 100, attention 1, beta 5000, gamma 5


def tensor(values, dtype="float32"):
    return paddle.to_tensor(np.asarray(values, dtype=dtype))


def transfer_inputs():
    """One row of 3 tokens, H = 2, 1 head; the third token is padding (its values are junk that
    must not count). Token 0: teacher (1, 3), student (0, 4); token 1: teacher (2, 2), student (1, 1)."""
    teacher_hidden = tensor([[[1, 3], [2, 2], [50, -7]]])
    student_hidden = tensor([[[0, 4], [1, 1], [-9, 30]]])
    # Attention rows (queries) over 3 keys; key 2 is padding, so both models give it 0.
    teacher_attention = tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.8, 0.0]]]])
    student_attention = tensor([[[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.9, 0.1, 0.0]]]])
    mask = tensor([[1, 1, 0]], "int64")
    return teacher_hidden, student_hidden, teacher_attention, student_attention, mask


def test_transfer_losses_equal_hand_worked_values():
    parts = layer_transfer_losses(*transfer_inputs(), factors=FACTORS)
    # Feature maps: LN(1, 3) = (-1, 1), LN(0, 4) = (-1, 1): 0. LN(2, 2) = (0, 0) = LN(1, 1): 0.
    assert float(parts["feature_map_loss"].mean()) == pytest.approx(0.0, abs=1e-6)
    # Attention: row 0: -(0.5 ln 0.25 + 0.5 ln 0.75); row 1: -ln 0.5; row 2 is a padded query.
    row0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert float(parts["attention_loss"].mean()) == pytest.approx(1.0 * (row0 + math.log(2)) / 2, rel=1e-6)
    # Means: token 0: 2 vs 2 -> 0; token 1: 2 vs 1 -> 1. Mean 0.5, x beta 5000.
    assert float(parts["mean_loss"].mean()) == pytest.approx(5000 * 0.5, rel=1e-6)
    # Variances: token 0: 1 vs 4 -> 3; token 1: 0 vs 0 -> 0. Mean 1.5, x gamma 5.
    assert float(parts["variance_loss"].mean()) == pytest.approx(5 * 1.5, rel=1e-6)
    total = sum(float(parts[name].mean()) for name in ("feature_map_loss", "attention_loss", "mean_loss", "variance_loss"))
    assert float(parts["loss"].mean()) == pytest.approx(total, rel=1e-6)


def test_feature_map_loss_hand_worked():
    # Teacher (1, 3) -> (-1, 1); student (3, 1) -> (1, -1): squared differences (4, 4), mean 4, x 100.
    teacher, student = tensor([[[1, 3]]]), tensor([[[3, 1]]])
    attention = tensor([[[[1.0]]]])
    parts = layer_transfer_losses(teacher, student, attention, attention, factors=FACTORS)
    assert float(parts["feature_map_loss"].mean()) == pytest.approx(400.0, rel=1e-6)
    assert float(parts["mean_loss"].mean()) == 0.0 and float(parts["variance_loss"].mean()) == 0.0
    assert float(parts["attention_loss"].mean()) == 0.0            # -1 x ln 1


def test_transfer_losses_match_numpy_on_random_tensors():
    """The formulas in numpy, on a padded batch of 2 rows x 5 tokens, H 8, 2 heads."""
    rng = np.random.default_rng(0)
    teacher_hidden, student_hidden = rng.normal(size=(2, 5, 8)) * 3, rng.normal(size=(2, 5, 8))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    def attention_probabilities(scores):
        scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
        exp = np.exp(scores - scores.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    teacher_attention = attention_probabilities(rng.normal(size=(2, 2, 5, 5)))
    student_attention = attention_probabilities(rng.normal(size=(2, 2, 5, 5)))
    factors = TransferFactors(hidden=2.0, attention=3.0, beta=5.0, gamma=7.0)
    parts = layer_transfer_losses(tensor(teacher_hidden), tensor(student_hidden), tensor(teacher_attention),
                                  tensor(student_attention), tensor(mask, "int64"), factors)

    real = mask == 1                                                      # (B, T)

    def row_means(per_token):                  # (B, T) -> (B,): each row's mean over its real tokens
        return np.array([row[keep].mean() for row, keep in zip(per_token, real)])

    def normalised(x):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)

    feature = row_means(((normalised(teacher_hidden) - normalised(student_hidden)) ** 2).mean(-1))
    with np.errstate(divide="ignore"):
        log_student = np.where(student_attention > 0, np.log(np.maximum(student_attention, 1e-45)), 0.0)
    cross_entropy = -(teacher_attention * log_student).sum(-1)            # (B, N, T)
    attention = row_means(cross_entropy.mean(1))                          # every row has N heads
    beta = row_means((teacher_hidden.mean(-1) - student_hidden.mean(-1)) ** 2)
    gamma = row_means(np.abs(teacher_hidden.var(-1) - student_hidden.var(-1)))
    expected = {"feature_map_loss": 2 * feature, "attention_loss": 3 * attention, "mean_loss": 5 * beta,
                "variance_loss": 7 * gamma}
    for name, value in expected.items():
        np.testing.assert_allclose(parts[name].numpy(), value, rtol=1e-5, err_msg=name)


def test_transfer_gradients_are_finite_with_padding_and_reach_only_the_student():
    teacher_hidden, student_hidden, teacher_attention, student_attention, mask = transfer_inputs()
    student_hidden.stop_gradient = False
    student_attention.stop_gradient = False
    teacher_hidden.stop_gradient = False
    layer_transfer_losses(teacher_hidden, student_hidden, teacher_attention, student_attention, mask)["loss"].backward()
    assert np.isfinite(student_hidden.grad.numpy()).all() and np.isfinite(student_attention.grad.numpy()).all()
    assert teacher_hidden.grad is None                                    # the teacher is a fixed target
    assert not student_hidden.grad.numpy()[0, 2].any()                    # padding gets no gradient
    assert not student_attention.grad.numpy()[0, 0, :, 2].any()           # nor do padded keys


def test_pretraining_distillation_losses_hand_worked():
    # Student p = (0.25, 0.5, 0.25), teacher p = (0.5, 0.25, 0.25), label 1, ratio 0.5, T 1:
    # targets (0.25, 0.625, 0.125); loss = 0.375 ln 4 + 0.625 ln 2. The second slot is padding.
    student = tensor(np.log([[[0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]]))
    teacher = tensor(np.log([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    labels, weights = tensor([[1, 0]], "int64"), tensor([[1.0, 0.0]])
    nsp_logits, nsp_labels = tensor([[0.0, 0.0]]), tensor([0], "int64")
    parts = pretraining_distillation_losses(student, teacher, labels, weights, nsp_logits, nsp_labels, 0.5, 1.0)
    assert float(parts["distill_mlm_loss"].mean()) == pytest.approx(0.375 * math.log(4) + 0.625 * math.log(2), rel=1e-6)
    assert float(parts["masked_lm_loss"].mean()) == pytest.approx(math.log(2), rel=1e-6)        # -ln 0.5
    assert float(parts["next_sentence_loss"].mean()) == pytest.approx(math.log(2), rel=1e-6)
    assert float(parts["loss"].mean()) == pytest.approx(float(parts["distill_mlm_loss"].mean()) + math.log(2), rel=1e-6)
    # Ratio 1: the ground truth only.
    parts = pretraining_distillation_losses(student, teacher, labels, weights, nsp_logits, nsp_labels, 1.0, 1.0)
    assert float(parts["distill_mlm_loss"].mean()) == pytest.approx(math.log(2), rel=1e-6)


def test_distillation_temperature_divides_the_teacher_logits():
    # T = 2: the teacher's softmax of logits / 2 is sqrt(p), renormalised; ratio 0 -> teacher only.
    teacher_p = np.array([0.5, 0.25, 0.25])
    softened = np.sqrt(teacher_p) / np.sqrt(teacher_p).sum()
    student_p = np.array([0.25, 0.5, 0.25])
    parts = pretraining_distillation_losses(tensor(np.log([[student_p]])), tensor(np.log([[teacher_p]])),
                                            tensor([[0]], "int64"), tensor([[1.0]]), tensor([[2.0, 0.0]]),
                                            tensor([1], "int64"), 0.0, 2.0)
    assert float(parts["distill_mlm_loss"].mean()) == pytest.approx(-(softened * np.log(student_p)).sum(), rel=1e-6)
    assert float(parts["next_sentence_loss"].mean()) == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)


# ----- the layer schedule --------------------------------------------------------------------

def test_phase_warmup_is_googles_shape():
    assert phase_warmup(0, 10) == 0.0                                       # each phase starts at 0
    assert phase_warmup(1, 10) == pytest.approx(min(1.0, 0.9 + 0.1 * math.sqrt(0.9)))   # 0.99487
    assert phase_warmup(5, 10) == pytest.approx(0.9 + 0.1 * math.sqrt(0.5))             # 0.97071
    assert phase_warmup(9, 100) == pytest.approx(0.9)                                     # 10 x 0.09
    assert phase_warmup(99, 100) == pytest.approx(0.91)


def test_google_schedule_multipliers():
    schedule = LayerSchedule(num_layers=3, transfer_steps=30, kind="google")
    warm = 0.9 + 0.1 * math.sqrt(0.5)
    point = schedule.at(5)                                                  # phase 0, 5 steps in
    assert (point.stage, point.phase, point.layer) == ("transfer", 0, 0)
    assert point.multipliers == pytest.approx({"embeddings": 0.0, "layer.0": 3 * warm, "layer.1": 0.0,
                                               "layer.2": 0.0, "heads": 0.0})
    point = schedule.at(25)                                                 # phase 2
    assert point.layer == 2
    assert point.multipliers == pytest.approx({"embeddings": 0.0, "layer.0": 0.3 * warm, "layer.1": 0.3 * warm,
                                               "layer.2": 3 * warm, "heads": 0.0})
    assert all(value == 0.0 for value in schedule.at(10).multipliers.values())   # a phase's first step
    point = schedule.at(30)                                                 # stage 2: everything at x1
    assert (point.stage, point.phase, point.layer) == ("distill", 3, None)
    assert set(point.multipliers.values()) == {1.0}


def test_freeze_schedule_trains_one_layer_per_phase():
    schedule = LayerSchedule(num_layers=3, transfer_steps=30, kind="freeze")
    warm = 0.9 + 0.1 * math.sqrt(0.5)
    assert schedule.at(15).multipliers == pytest.approx({"embeddings": 0.0, "layer.0": 0.0, "layer.1": warm,
                                                         "layer.2": 0.0, "heads": 0.0})
    for step in range(30):
        point = schedule.at(step)
        moving = [group for group, value in point.multipliers.items() if value > 0]
        assert moving in ([], [f"layer.{point.phase}"])


def test_schedule_refuses_uneven_phases():
    with pytest.raises(UserInputError, match="--transfer-steps 31 is not a multiple of the 3 layers"):
        LayerSchedule(num_layers=3, transfer_steps=31)


@pytest.mark.parametrize("name, group", [
    ("mobilebert.embeddings.word_embeddings.weight", "embeddings"),
    ("mobilebert.encoder.layer.0.attention.self.query.weight", "layer.0"),
    ("mobilebert.encoder.layer.12.ffn.2.output.dense.bias", "layer.12"),
    ("mobilebert.pooler.dense.weight", "heads"),
    ("cls.predictions.transform.dense.weight", "heads"),
    ("cls.seq_relationship.bias", "heads")])
def test_parameter_groups(name, group):
    assert parameter_group(name) == group


# ----- teacher and student ----------------------------------------------------------------------

TINY = dict(vocab_size=30, hidden_size=16, embedding_size=8, intra_bottleneck_size=8, intermediate_size=16,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16, num_feedforward_networks=1)
TEACHER = dict(TINY, intra_bottleneck_size=32, intermediate_size=64, use_bottleneck_attention=False,
               key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu")


@pytest.mark.parametrize("key, value", [("num_hidden_layers", 3), ("hidden_size", 24), ("num_attention_heads", 4),
                                        ("embedding_size", 4), ("vocab_size", 31)])
def test_check_compatible_names_the_mismatch(key, value):
    teacher = MobileBertConfig(**TINY)
    student = MobileBertConfig(**{**TINY, key: value})
    with pytest.raises(UserInputError, match=f"--student: {key} is {value} but the teacher's"):
        check_compatible(teacher, student)


def test_check_compatible_compares_vocabularies():
    config = MobileBertConfig(**TINY)
    check_compatible(config, config, {"[PAD]": 0, "a": 1}, {"[PAD]": 0, "a": 1})
    with pytest.raises(UserInputError, match=r"vocabulary differs from the teacher's .* \(first difference: 'b'\)"):
        check_compatible(config, config, {"[PAD]": 0, "a": 1}, {"[PAD]": 0, "b": 1})


def test_student_starts_from_the_teachers_embeddings_and_heads():
    from mobilebert_paddle.model import MobileBertForPreTraining

    paddle.seed(1)
    teacher = MobileBertForPreTraining(MobileBertConfig(**TEACHER))
    paddle.seed(2)
    student = MobileBertForPreTraining(MobileBertConfig(**TINY))
    before = {name: param.numpy().copy() for name, param in student.named_parameters()}
    names = copy_from_teacher(teacher, student)
    assert names == copied_parameter_names(teacher, student)
    teacher_values = {name: param.numpy() for name, param in teacher.named_parameters()}
    for name, param in student.named_parameters():
        if name in names:
            np.testing.assert_array_equal(param.numpy(), teacher_values[name])
        else:
            np.testing.assert_array_equal(param.numpy(), before[name])
    assert "mobilebert.embeddings.word_embeddings.weight" in names and "cls.predictions.dense.weight" in names
    assert "cls.seq_relationship.weight" in names and "mobilebert.pooler.dense.weight" in names
    # LayerNorm (teacher) and NoNorm (student) share names but not meaning: not copied.
    assert not any(name.startswith("mobilebert.embeddings.LayerNorm") for name in names)
    assert not any(name.startswith("mobilebert.encoder.") for name in names)
