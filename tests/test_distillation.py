"""Distillation: each loss part against values worked out by hand (or in numpy, formula by
formula, where a hand sum would be long), the layer schedule, the teacher/student check and the
student's start; then `mobilebert distill` end to end on real text: the schedule's gates,
the distilled student against a scratch one, and kill -9 + --resume in each stage."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest
from test_pretraining import cli_subprocess, corpus, launch, metric_lines, pretrain_argv  # noqa: F401 (corpus: a fixture)
from tiny_tasks import model_weights, run_cli, subprocess_env

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.model.config import MobileBertConfig
from mobilebert_paddle.pretraining.distillation import (
    LayerSchedule,
    check_compatible,
    copied_parameter_names,
    copy_from_teacher,
    parameter_group,
    phase_warmup,
)
from mobilebert_paddle.pretraining.distillation_losses import (
    TransferFactors,
    layer_transfer_losses,
    pretraining_distillation_losses,
    soft_target_cross_entropy,
)

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


def log_softmax_distillation_loss(student_logits, labels, teacher_logits, ratio, temperature):
    """The stage 2 formula as first written (and as Google's TF1 writes it): targets built as a
    tensor, times F.log_softmax, summed over the vocabulary. (B, P) per prediction."""
    vocab = teacher_logits.shape[-1]
    one_hot = paddle.nn.functional.one_hot(labels.astype("int64"), vocab).astype("float32")
    teacher = paddle.nn.functional.softmax(teacher_logits / temperature, axis=-1)
    targets = ratio * one_hot + (1.0 - ratio) * teacher
    return -(targets * paddle.nn.functional.log_softmax(student_logits, axis=-1)).sum(axis=-1)


def google_distillation_loss(student_logits, labels, teacher_logits, ratio, temperature):
    """Google's definition in float64 numpy: -sum(targets * log_softmax(student)) per prediction."""
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    teacher = np.exp(log_softmax(teacher_logits / temperature))
    one_hot = np.eye(teacher_logits.shape[-1])[labels]
    return -((ratio * one_hot + (1 - ratio) * teacher) * log_softmax(student_logits)).sum(axis=-1)


@pytest.mark.parametrize("ratio,temperature", [(0.5, 1.0), (0.0, 1.0), (1.0, 1.0), (0.3, 2.0)])
def test_soft_target_cross_entropy_equals_the_log_softmax_formula_and_googles(ratio, temperature):
    rng = np.random.default_rng(7)
    student, teacher = 3 * rng.standard_normal((2, 2, 3, 11))            # (B, P, V) each
    labels = rng.integers(0, 11, (2, 3))
    reference = google_distillation_loss(student, labels, teacher, ratio, temperature)
    values = {}
    for name, loss_fn in (("ours", lambda *a: soft_target_cross_entropy(*a)[0]),
                          ("log_softmax", log_softmax_distillation_loss)):
        logits = tensor(student)
        logits.stop_gradient = False
        loss = loss_fn(logits, tensor(labels, "int64"), tensor(teacher), ratio, temperature)
        (loss * tensor(np.arange(6).reshape(2, 3) + 1.0)).sum().backward()   # a weighted sum: per-slot gradients
        values[name] = (loss.numpy(), logits.grad.numpy())
    np.testing.assert_allclose(values["ours"][0], reference, rtol=1e-6)
    np.testing.assert_allclose(values["ours"][0], values["log_softmax"][0], rtol=1e-6)
    np.testing.assert_allclose(values["ours"][1], values["log_softmax"][1], rtol=1e-5, atol=1e-7)
    true_loss = soft_target_cross_entropy(tensor(student), tensor(labels, "int64"), tensor(teacher), ratio,
                                          temperature)[1]
    np.testing.assert_allclose(true_loss.numpy(), google_distillation_loss(student, labels, teacher, 1.0, 1.0),
                               rtol=1e-6)


def test_no_log_softmax_on_the_vocabulary_axis(monkeypatch):
    """Paddle's CPU log_softmax backward is quadratic in its axis (minutes a step at 30,522
    pieces): the pretraining and distillation losses must not call it."""
    from mobilebert_paddle.pretraining.task import PretrainingTask

    def refuse(*args, **kwargs):
        raise AssertionError("F.log_softmax called on a loss path")

    monkeypatch.setattr(paddle.nn.functional, "log_softmax", refuse)
    monkeypatch.setattr(paddle.nn.functional.activation, "log_softmax", refuse)
    logits = tensor(np.random.default_rng(0).standard_normal((2, 3, 7)))
    logits.stop_gradient = False
    labels = {"masked_labels": tensor([[1, 2, 0], [3, 4, 5]], "int64"), "masked_weights": tensor([[1, 1, 0], [1, 1, 1]]),
              "next_sentence_label": tensor([[0], [1]], "int64")}
    parts = PretrainingTask.loss_parts((logits, tensor([[0.0, 1.0], [1.0, 0.0]])), labels)
    distill = pretraining_distillation_losses(logits, logits * 2, labels["masked_labels"], labels["masked_weights"],
                                              tensor([[0.0, 1.0], [1.0, 0.0]]), tensor([0, 1], "int64"), 0.5, 1.0)
    (parts["masked_lm_loss"].sum() + distill["loss"].sum()).backward()
    assert np.isfinite(logits.grad.numpy()).all()


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
    from mobilebert_paddle.model.network import MobileBertForPreTraining

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


def test_a_transfer_step_runs_no_layer_above_its_own():
    """Stage 1 at layer l reads layer l's output and attention only, so neither model runs the
    layers above l (up to half of stage 1's compute); what it reads equals a full forward's."""
    from mobilebert_paddle.model.network import MobileBertForPreTraining
    from mobilebert_paddle.pretraining.distillation import DistillationTask, StudentView
    from mobilebert_paddle.pretraining.task import MaskingSettings

    paddle.seed(1)
    teacher = MobileBertForPreTraining(MobileBertConfig(**TEACHER))
    paddle.seed(2)
    student = MobileBertForPreTraining(MobileBertConfig(**TINY))
    student.eval()                                           # no dropout: compare with a full forward
    layers = len(student.mobilebert.encoder.layer)
    assert layers == len(teacher.mobilebert.encoder.layer) >= 2
    calls = []
    for name, model in (("teacher", teacher), ("student", student)):
        for index, layer in enumerate(model.mobilebert.encoder.layer):
            layer.register_forward_pre_hook(lambda layer, inputs, key=(name, index): calls.append(key))
    task = DistillationTask(teacher, LayerSchedule(layers, 2 * layers, "google"), FACTORS, 0.5, 1.0,
                            MaskingSettings(max_predictions_per_seq=2))
    rng = np.random.default_rng(0)
    inputs = {"input_ids": paddle.to_tensor(rng.integers(5, TINY["vocab_size"], (2, 6))),
              "token_type_ids": paddle.zeros([2, 6], "int64"),
              "attention_mask": paddle.to_tensor(np.array([[1] * 6, [1] * 4 + [0] * 2])),
              "masked_positions": paddle.zeros([2, 2], "int64")}
    view = StudentView(student)
    full = student.mobilebert(inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"],
                              output_hidden_states=True, output_attentions=True)
    for layer in range(layers):
        calls.clear()
        losses = task.transfer_losses(view, inputs, layer)
        assert sorted(calls) == sorted((name, index) for name in ("teacher", "student") for index in range(layer + 1))
        assert np.all(np.isfinite(losses["loss"].numpy()))
        hidden, attention = view(**inputs, layer=layer)
        np.testing.assert_array_equal(hidden.numpy(), full.hidden_states[layer + 1].numpy())
        np.testing.assert_array_equal(attention.numpy(), full.attentions[layer].numpy())


# ----- end to end on real text: a tiny teacher, the gates, learning, exact resume -----------------
# The corpus (SQuAD v1.1 dev contexts as Wikipedia documents, a vocabulary built from them, train and
# held-out DATA_DIRs) is test_pretraining's session fixture.

# The teacher in IB-BERT's layout (queries, keys, values read the 64-wide block input; 128 inside;
# LayerNorm, gelu, one wide FFN); the student is test_pretraining's tiny MobileBERT (NoNorm, relu,
# 32-wide bottleneck, 2 stacked FFNs): same layers, width between blocks, heads and vocabulary.
TEACHER_CHANGES = dict(intra_bottleneck_size=128, intermediate_size=256, num_feedforward_networks=1,
                       use_bottleneck_attention=False, key_query_shared_bottleneck=False,
                       normalization_type="layer_norm", hidden_act="gelu")
TEACHER_STEPS = 300


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> dict:
    """A teacher pretrained for TEACHER_STEPS on the training articles; student configs beside it."""
    from mobilebert_paddle.cli import main

    root = tmp_path_factory.mktemp("teacher")
    student = json.loads(corpus["config"].read_text())
    (root / "teacher.json").write_text(json.dumps({**student, **TEACHER_CHANGES}))
    (root / "student_dropout.json").write_text(json.dumps({**student, "attention_probs_dropout_prob": 0.1}))
    argv = pretrain_argv(corpus, root / "run", "--max-steps", TEACHER_STEPS, "--dev", corpus["dev"],
                         "--eval-steps", TEACHER_STEPS)
    argv[argv.index("--config") + 1] = root / "teacher.json"
    assert main([str(arg) for arg in argv]) == 0
    return {"dir": root / "run" / "best", "student": corpus["config"], "student_dropout": root / "student_dropout.json",
            "root": root}


def distill_argv(corpus: dict, teacher: dict, output, transfer: int, distill: int, *extra) -> list:
    return ["distill", "--teacher", teacher["dir"], "--student", teacher["student"], "--data", corpus["train"],
            "--output", output, "--transfer-steps", transfer, "--distill-steps", distill, "--batch-size", 16,
            "--learning-rate", 1e-2, "--warmup-steps", 10, "--max-predictions-per-seq", 10, "--device", "cpu", *extra]


def run_recording_weights(argv: list, monkeypatch, every: int) -> dict[int, dict[str, np.ndarray]]:
    """Run `mobilebert ARGV` in-process and keep the student's weights at step 0 and every `every` steps."""
    from mobilebert_paddle.cli import main
    from mobilebert_paddle.training import trainer as train

    snapshots: dict[int, dict[str, np.ndarray]] = {}

    def weights(trainer):
        return {name: param.numpy().copy() for name, param in trainer.raw_model.named_parameters()}

    original_train, original_after_step = train.Trainer.train, train.Trainer.after_step

    def recording_train(self, resume):
        snapshots[0] = weights(self)
        return original_train(self, resume)

    def recording_after_step(self):
        if self.state.step % every == 0:
            snapshots[self.state.step] = weights(self)
        original_after_step(self)

    monkeypatch.setattr(train.Trainer, "train", recording_train)
    monkeypatch.setattr(train.Trainer, "after_step", recording_after_step)
    assert main([str(arg) for arg in argv]) == 0
    return snapshots


def group_of(snapshot: dict, group: str) -> dict:
    return {name: value for name, value in snapshot.items() if parameter_group(name) == group}


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(np.array_equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_google_schedule_gates(corpus, teacher, tmp_path, monkeypatch):
    """2 layers x 4 transfer steps, then 4 distillation steps, weights kept after each phase."""
    snapshots = run_recording_weights(distill_argv(corpus, teacher, tmp_path / "run", 8, 4, "--logging-steps", 4,
                                                   "--warmup-steps", 1),
                                      monkeypatch, every=4)
    start, phase0, phase1, distilled = snapshots[0], snapshots[4], snapshots[8], snapshots[12]
    teacher_weights = model_weights(teacher["dir"])
    for snapshot in (start, phase0, phase1):          # through stage 1: embeddings and heads are the teacher's
        for group in ("embeddings", "heads"):
            assert same(group_of(snapshot, group), group_of(start, group)), group
        for name, value in snapshot.items():
            if name in teacher_weights and not name.startswith(("mobilebert.encoder.", "mobilebert.embeddings.LayerNorm")):
                np.testing.assert_array_equal(value, teacher_weights[name], err_msg=name)
    assert same(group_of(phase0, "layer.1"), group_of(start, "layer.1"))      # before its phase: untouched
    assert not same(group_of(phase0, "layer.0"), group_of(start, "layer.0"))  # its phase: trained (x3)
    assert not same(group_of(phase1, "layer.0"), group_of(phase0, "layer.0")) # after it: still trains (x0.3)
    assert not same(group_of(phase1, "layer.1"), group_of(phase0, "layer.1"))
    for group in ("embeddings", "heads", "layer.0", "layer.1"):               # stage 2: everything trains
        assert not same(group_of(distilled, group), group_of(phase1, group)), group
    lines = [line for line in metric_lines(tmp_path / "run") if line["kind"] == "train"]
    assert [(line["step"], line["stage"], line["phase"], line["layer"]) for line in lines] == \
        [(4, "transfer", 0, 0), (8, "transfer", 1, 1), (12, "distill", 2, None)]
    transfer_parts = ("feature_map_loss", "attention_loss", "mean_loss", "variance_loss")
    for line in lines[:2]:
        assert line["loss"] == pytest.approx(sum(line[part] for part in transfer_parts), rel=1e-5)
    assert lines[2]["loss"] == pytest.approx(lines[2]["distill_mlm_loss"] + lines[2]["next_sentence_loss"], rel=1e-5)
    assert not set(transfer_parts) & set(lines[2]) and "masked_lm_loss" in lines[2]


@pytest.mark.slow
def test_freeze_schedule_keeps_earlier_layers(corpus, teacher, tmp_path, monkeypatch):
    argv = distill_argv(corpus, teacher, tmp_path / "run", 8, 0, "--layer-schedule", "freeze", "--logging-steps", 4)
    snapshots = run_recording_weights(argv, monkeypatch, every=4)
    start, phase0, phase1 = snapshots[0], snapshots[4], snapshots[8]
    assert same(group_of(phase0, "layer.1"), group_of(start, "layer.1"))
    assert not same(group_of(phase0, "layer.0"), group_of(start, "layer.0"))
    assert same(group_of(phase1, "layer.0"), group_of(phase0, "layer.0"))     # below the phase's layer: frozen
    assert not same(group_of(phase1, "layer.1"), group_of(phase0, "layer.1"))
    for group in ("embeddings", "heads"):
        assert same(group_of(phase1, group), group_of(start, group)), group


@pytest.mark.slow
def test_distilled_student_beats_scratch_student_at_equal_steps(corpus, teacher, tmp_path, capsys):
    """Held-out masked-LM accuracy after 200 student steps: distilled (2 x 50 transfer + 100
    distillation) against the same student pretrained from scratch for 200 steps."""
    code, distilled, err = run_cli(capsys, distill_argv(corpus, teacher, tmp_path / "distilled", 100, 100,
                                                        "--dev", corpus["dev"], "--eval-steps", 200))
    assert code == 0, err
    scratch_argv = pretrain_argv(corpus, tmp_path / "scratch", "--max-steps", 200, "--dev", corpus["dev"],
                                 "--eval-steps", 200, "--batch-size", 16, "--warmup-steps", 10)
    code, scratch, err = run_cli(capsys, scratch_argv)
    assert code == 0, err
    distilled_accuracy = distilled["best_metrics"]["masked_lm_accuracy"]
    scratch_accuracy = scratch["best_metrics"]["masked_lm_accuracy"]
    assert distilled_accuracy >= scratch_accuracy + 0.03, (distilled_accuracy, scratch_accuracy)
    config = json.loads((tmp_path / "distilled" / "best" / "config.json").read_text())
    assert config["architectures"] == ["MobileBertForPreTraining"] and config["normalization_type"] == "no_norm"
    # The output is an ordinary model dir: `evaluate pretraining` reproduces its numbers.
    code, evaluated, err = run_cli(capsys, ["evaluate", "pretraining", "--model", tmp_path / "distilled" / "best",
                                            "--data", corpus["dev"], "--output", tmp_path / "eval", "--device", "cpu"])
    assert code == 0, err
    assert evaluated["metrics"]["masked_lm_accuracy"] == distilled_accuracy


def cli_process(argv: list, output) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilebert_paddle", *map(str, argv), "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())


def kill_once_saved(process: subprocess.Popen, checkpoint, minimum_step: int) -> int:
    """SIGKILL the run as soon as last/ holds step >= minimum_step; returns the step it holds."""
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(checkpoint.read_text())["state"]["step"] >= minimum_step:
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL            # killed, not finished
    return json.loads(checkpoint.read_text())["state"]["step"]


@pytest.mark.slow
def test_sigkill_in_each_stage_then_resume_equals_uninterrupted_run(corpus, teacher, tmp_path):
    """12 transfer + 12 distillation steps with attention dropout, last/ every 2 steps: killed in
    stage 1, resumed, killed in stage 2, resumed: the same weights and log as one run."""
    argv = [arg for arg in distill_argv(corpus, teacher, None, 12, 12, "--save-steps", 2, "--logging-steps", 2,
                                        "--dev", corpus["dev"], "--eval-steps", 12)
            if arg is not None and arg != "--output"]
    argv[argv.index("--student") + 1] = teacher["student_dropout"]
    reference, run = tmp_path / "uninterrupted", tmp_path / "killed"
    assert cli_process(argv, reference).wait() == 0
    checkpoint = run / "last" / "trainer_state.json"
    assert 2 <= kill_once_saved(cli_process(argv, run), checkpoint, 2) < 12                   # stage 1
    assert 14 <= kill_once_saved(cli_process(argv + ["--resume"], run), checkpoint, 14) < 24  # stage 2
    assert cli_process(argv + ["--resume"], run).wait() == 0
    resumed, uninterrupted = model_weights(run / "last"), model_weights(reference / "last")
    assert resumed.keys() == uninterrupted.keys()
    assert all(np.array_equal(resumed[key], uninterrupted[key]) for key in uninterrupted)     # bit-identical
    assert metric_lines(run) == metric_lines(reference)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_in_both_stages(corpus, teacher, tmp_path):
    """2 processes (DataParallel looking for the parameters a transfer phase leaves without a
    gradient) equal, bit for bit, 1 process splitting each global batch the same way."""
    argv = [arg for arg in distill_argv(corpus, teacher, "OUT", 4, 2, "--logging-steps", 1, "--warmup-steps", 1)]

    def with_output(output):
        return [output if arg == "OUT" else arg for arg in argv]

    split = cli_subprocess(with_output(tmp_path / "split") + ["--gradient-accumulation-steps", 2])
    two = launch(with_output(tmp_path / "two"), 2, tmp_path / "logs")
    for completed in (split, two):
        assert completed.returncode == 0, completed.stderr[-3000:]
    two_weights, split_weights = model_weights(tmp_path / "two" / "last"), model_weights(tmp_path / "split" / "last")
    assert all(np.array_equal(two_weights[key], split_weights[key]) for key in two_weights)
    assert [(line["step"], line["stage"]) for line in metric_lines(tmp_path / "two")] == \
        [(1, "transfer"), (2, "transfer"), (3, "transfer"), (4, "transfer"), (5, "distill"), (6, "distill")]
