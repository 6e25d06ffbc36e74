"""`mobilebert distill`: progressive knowledge transfer, then pretraining distillation (paper §3-4).

The student (MobileBERT) learns from a pretrained teacher (IB-BERT) of the same depth and the
same inter-block width H, in two stages, both run by the one Trainer (training/trainer.py):

1. Progressive knowledge transfer (`--transfer-steps`, split evenly into one phase per layer).
   The student starts with the teacher's embeddings and heads (`copy_from_teacher`). In phase l
   only layer l's transfer losses count (distillation_losses.layer_transfer_losses); which
   weights move is the layer schedule's business (`LayerSchedule`): Google's learning-rate
   multipliers, or the paper's "freeze".
2. Pretraining distillation (`--distill-steps`): every student weight trains on MLM against
   ratio x one-hot + (1 - ratio) x the teacher's softmax, plus NSP.

Facts from Google's TF1 code (google-research mobilebert/run_pretraining.py, distill_util.py,
lamb_optimizer.py) and TF2's official/projects/mobilebert/distillation.py; where they differ,
the comment at each piece says which one this follows and why. Knob names and defaults are
Google's (DISTILL_DEFAULTS). Shapes: B batch, T tokens, H hidden_size, N heads, P masked
positions per row, V vocabulary.
"""


from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import paddle

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import check_separate_dirs
from ..model.config import MODEL_INPUT_NAMES, load_config
from ..model.loading import load_pretrained
from ..model.modeldir import resolve_source
from ..model.network import MobileBertForPreTraining
from ..model.size import check_fits_in_memory
from ..model.tokenizer import MobileBertTokenizer
from ..training.checkpoint import CHECKPOINT_STATE
from ..training.optim import WarmupDecaySchedule
from ..training.rundir import (
    begin_run,
    check_batch_fits,
    check_optimisation_flags,
    seed_dropout,
    seed_initialisation,
    start_output,
)
from ..training.trainer import Trainer
from .distillation_losses import (
    DISTILL_DEFAULTS,
    TransferFactors,
    layer_transfer_losses,
    pretraining_distillation_losses,
)
from .pretrain import add_training_arguments, check_batch_size
from .shards import check_model_fits_data, model_vocabulary
from .task import (
    PRETRAINING_HEAD,
    MaskingSettings,
    PretrainingTask,
    open_data,
)

logger = logging.getLogger(__name__)

LAYER_SCHEDULES = ("google", "freeze")


# --------------------------------------------------------------------------------------------
# Layer schedule: which parameters learn, and how fast, at each step
# --------------------------------------------------------------------------------------------

EMBEDDINGS, HEADS = "embeddings", "heads"
LAYER_PARAMETER = re.compile(r"^mobilebert\.encoder\.layer\.(\d+)\.")


def parameter_group(name: str) -> str:
    """The schedule's group of a student parameter (its structured name, as named_parameters
    gives it): "embeddings", "layer.<l>", or "heads" (pooler, MLM and NSP heads)."""
    match = LAYER_PARAMETER.match(name)
    if match:
        return f"layer.{int(match.group(1))}"
    return EMBEDDINGS if name.startswith("mobilebert.embeddings.") else HEADS


def phase_warmup(step_in_phase: int, steps_per_phase: int) -> float:
    """Google's per-phase "background" learning-rate factor (distill_util.get_background_lr):
    min(linear from 0 to 10 over the phase, square-root decay from 1 to 0.9 over the phase).
    It starts at 0 (the first step of every phase updates nothing), meets the decay near 10% of
    the phase (~0.995) and ends near 0.9."""
    if steps_per_phase <= 1:
        return 1.0
    progress = step_in_phase / steps_per_phase
    return min(10.0 * progress, 0.9 + 0.1 * math.sqrt(1.0 - progress))


class SchedulePoint(NamedTuple):
    stage: str                    # "transfer" or "distill"
    phase: int                    # 0..L-1 in transfer; L in distillation
    layer: Optional[int]          # the layer whose losses count (None in distillation)
    multipliers: dict             # group -> learning-rate multiplier


@dataclass(frozen=True)
class LayerSchedule:
    """Step -> (stage, phase, layer, learning-rate multiplier of every parameter group).

    `step` is the 0-based number of the update being made. Steps [0, transfer_steps) are
    stage 1, one phase of transfer_steps / L steps per layer; later steps are stage 2, where
    every multiplier is 1 (the Trainer's own schedule applies).

    google (distill_util.layer_wise_learning_rate + get_background_lr, lamb_optimizer.py):
        layer l: x0 before its phase, x3 during it, x0.3 after it, each times the phase warmup;
        embeddings and heads: x0 (they keep the teacher's values through stage 1).
        (Google's piecewise_constant switches one step late, at its `<=` boundary; phases here
        start exactly at l x steps_per_phase. Its LAMB also zeroes every Adam moment where a
        multiplier is 0, i.e. at each phase start; that optimizer detail is not copied.)
    freeze (the paper's wording, TF2's if_freeze_previous_layers): in phase l only layer l
        trains (x1 times the same phase warmup); everything else x0.
    """

    num_layers: int
    transfer_steps: int
    kind: str = "google"

    def __post_init__(self):
        if self.kind not in LAYER_SCHEDULES:
            raise ValueError(f"layer schedule {self.kind!r} is not one of {', '.join(LAYER_SCHEDULES)}")
        if self.transfer_steps % self.num_layers:
            raise UserInputError(f"--transfer-steps {self.transfer_steps} is not a multiple of the "
                                 f"{self.num_layers} layers (each layer gets one equal phase)")

    @property
    def steps_per_phase(self) -> int:
        return self.transfer_steps // self.num_layers

    def groups(self) -> list[str]:
        return [EMBEDDINGS, *(f"layer.{layer}" for layer in range(self.num_layers)), HEADS]

    def at(self, step: int) -> SchedulePoint:
        if step >= self.transfer_steps:
            return SchedulePoint("distill", self.num_layers, None, {group: 1.0 for group in self.groups()})
        phase, step_in_phase = divmod(step, self.steps_per_phase)
        warmup = phase_warmup(step_in_phase, self.steps_per_phase)
        multipliers = {EMBEDDINGS: 0.0, HEADS: 0.0}
        for layer in range(self.num_layers):
            multipliers[f"layer.{layer}"] = warmup * self.layer_multiplier(layer, phase)
        return SchedulePoint("transfer", phase, phase, multipliers)

    def layer_multiplier(self, layer: int, phase: int) -> float:
        if layer > phase:
            return 0.0
        if self.kind == "freeze":
            return 1.0 if layer == phase else 0.0
        return 3.0 if layer == phase else 0.3


# --------------------------------------------------------------------------------------------
# Teacher and student: agreement, and the student's start
# --------------------------------------------------------------------------------------------

# Config values transfer needs equal: feature maps are compared at width H layer by layer,
# attention head by head, and the embeddings and MLM head are copied (their shapes).
MATCHING_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "embedding_size", "vocab_size",
                 "trigram_input", "max_position_embeddings", "type_vocab_size")


def check_compatible(teacher_config, student_config, teacher_vocab: Optional[dict] = None,
                     student_vocab: Optional[dict] = None, teacher_name: str = "--teacher",
                     student_name: str = "--student") -> None:
    """One UserInputError naming the first disagreement that would make transfer impossible."""
    for key in MATCHING_KEYS:
        teacher_value, student_value = getattr(teacher_config, key), getattr(student_config, key)
        if teacher_value != student_value:
            raise UserInputError(f"{student_name}: {key} is {student_value} but the teacher's ({teacher_name}) is "
                                 f"{teacher_value}; distillation needs them equal")
    if teacher_vocab is not None and student_vocab is not None and teacher_vocab != student_vocab:
        differing = next((token for token, index in student_vocab.items() if teacher_vocab.get(token) != index),
                         None)
        where = f" (first difference: {differing!r})" if differing is not None else ""
        raise UserInputError(f"{student_name}: its vocabulary differs from the teacher's ({teacher_name}){where}; "
                             "distillation needs the same vocabulary")


def copied_parameter_names(teacher, student) -> list[str]:
    """Student parameters that start as the teacher's: everything outside the encoder layers
    (embeddings, pooler, MLM and NSP heads), as Google's TF1 init_embedding copies all that is
    not under bert/encoder. The embeddings' normalisation is copied only when both models use
    the same kind: a LayerNorm's scale and shift mean something else in a NoNorm (Google's
    names differ there, LayerNorm vs FakeLayerNorm, so TF1 does not copy it either)."""
    same_norm = teacher.config.normalization_type == student.config.normalization_type
    teacher_names = {name for name, _ in teacher.named_parameters()}
    names = []
    for name, _ in student.named_parameters():
        if parameter_group(name).startswith("layer.") or name not in teacher_names:
            continue
        if name.startswith("mobilebert.embeddings.LayerNorm.") and not same_norm:
            continue
        names.append(name)
    return names


def copy_from_teacher(teacher, student) -> list[str]:
    """Set the student's embeddings and heads to the teacher's values. Returns the names copied.
    Raises a UserInputError naming a parameter whose shapes differ (check_compatible runs first
    and should have said why)."""
    teacher_parameters = dict(teacher.named_parameters())
    student_parameters = dict(student.named_parameters())
    names = copied_parameter_names(teacher, student)
    for name in names:
        source, target = teacher_parameters[name], student_parameters[name]
        if source.shape != target.shape:
            raise UserInputError(f"--student: {name} has shape {target.shape} but the teacher's is {source.shape}")
    required = ("mobilebert.embeddings.word_embeddings.weight", "cls.predictions.bias")
    missing = [name for name in required if name not in names]
    if missing:
        raise UserInputError(f"--teacher: has no {', '.join(missing)} to start the student from")
    with paddle.no_grad():
        for name in names:
            student_parameters[name].set_value(teacher_parameters[name].detach().clone())
    return names


# --------------------------------------------------------------------------------------------
# The task: both stages for the one Trainer
# --------------------------------------------------------------------------------------------

class StagedSchedule(paddle.optimizer.lr.LRScheduler):
    """Stage 1 at the constant peak (Google's transfer runs at 1.5e-3 throughout; the layer
    schedule's multipliers shape it); stage 2 is a new run as in Google's code: linear warmup
    from 0 over `warmup_steps`, then a linear (or cosine) decay to `min_lr` at the last step."""

    def __init__(self, peak_lr: float, min_lr: float, transfer_steps: int, warmup_steps: int, total_steps: int,
                 shape: str = "linear"):

        self.transfer_steps, self.peak_lr = transfer_steps, peak_lr
        self.distill = WarmupDecaySchedule(peak_lr, min_lr, warmup_steps, total_steps - transfer_steps, shape)
        super().__init__(learning_rate=peak_lr)

    def get_lr(self) -> float:
        if self.last_epoch < self.transfer_steps:
            return self.peak_lr
        self.distill.last_epoch = self.last_epoch - self.transfer_steps
        return self.distill.get_lr()


class StudentView(paddle.nn.Layer):
    """The student as the Trainer runs it: a forward that returns only what a step's loss reads.
    DataParallel's search for parameters without a gradient starts from a forward's outputs, so
    a transfer phase must not return the heads' logits (or they would be waited for)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, input_ids, token_type_ids, attention_mask, masked_positions, layer: Optional[int] = None):
        if layer is None:                      # stage 2: (B, P, V) MLM logits and (B, 2) NSP logits
            output = self.student(input_ids, token_type_ids, attention_mask, masked_positions=masked_positions)
            return output.prediction_logits, output.seq_relationship_logits
        encoder = self.student.mobilebert(input_ids, token_type_ids, attention_mask, output_hidden_states=True,
                                          output_attentions=True, num_layers=layer + 1)   # nothing above l runs
        return encoder.hidden_states[layer + 1], encoder.attentions[layer]          # (B, T, H), (B, N, T, T)


class DistillationTask(PretrainingTask):
    """`pretraining` with a teacher: the same data, masking, evaluation and output head, but
    the loss of stage 1 (layer transfer) or stage 2 (distilled MLM + NSP) by the step, and the
    layer schedule's learning-rate multipliers. Built per run: it holds the frozen teacher."""

    name = "distillation"
    find_unused_parameters = True     # stage 1: the layers above l (which do not run) and the heads get no gradient

    def __init__(self, teacher, schedule: LayerSchedule, factors: TransferFactors, ratio: float,
                 temperature: float, masking: MaskingSettings):
        super().__init__(masking)
        self.teacher, self.schedule, self.factors = teacher, schedule, factors
        self.ratio, self.temperature = ratio, temperature
        self.parameter_groups: list | None = None          # (student path, schedule group), read at first use
        teacher.eval()                                    # no dropout: a fixed target
        for parameter in teacher.parameters():
            parameter.stop_gradient = True

    def compute_loss(self, model, inputs: dict, labels: dict, step: int):
        point = self.schedule.at(step)
        parts = (self.transfer_losses(model, inputs, point.layer) if point.stage == "transfer"
                 else self.distillation_losses(model, inputs, labels))
        return parts.pop("loss"), parts

    def training_module(self, model):
        return StudentView(model)

    def transfer_losses(self, model, inputs: dict, layer: int) -> dict:
        """Layer `layer`'s transfer losses; hidden_states[0] is the embeddings, so layer l's output is l + 1."""
        encoder_inputs = {name: inputs[name] for name in MODEL_INPUT_NAMES}
        with paddle.no_grad():
            teacher = self.teacher.mobilebert(**encoder_inputs, output_hidden_states=True, output_attentions=True,
                                              num_layers=layer + 1)
        student_hidden, student_attention = model(**inputs, layer=layer)
        return layer_transfer_losses(teacher.hidden_states[layer + 1], student_hidden, teacher.attentions[layer],
                                     student_attention, inputs["attention_mask"], self.factors)

    def distillation_losses(self, model, inputs: dict, labels: dict) -> dict:
        with paddle.no_grad():
            teacher = self.teacher(**inputs)
        student_logits, student_nsp_logits = model(**inputs)
        return pretraining_distillation_losses(
            student_logits.astype("float32"), teacher.prediction_logits.astype("float32"), labels["masked_labels"],
            labels["masked_weights"], student_nsp_logits.astype("float32"), labels["next_sentence_label"],
            self.ratio, self.temperature)

    def learning_rate_multipliers(self, model, step: int) -> dict[str, float]:
        point = self.schedule.at(step)
        if point.stage != "transfer":
            return {}
        if self.parameter_groups is None:      # the model's structure is fixed: its groups are read once
            self.parameter_groups = [(path, parameter_group(path)) for path, _ in model.named_parameters()]
        return {path: point.multipliers[group] for path, group in self.parameter_groups}

    def learning_rate_schedule(self, config, total_steps: int):
        return StagedSchedule(config.learning_rate, config.min_lr, self.schedule.transfer_steps,
                              config.warmup_steps, total_steps, config.schedule)

    def restarts_optimizer(self, step: int) -> bool:
        """Stage 2 starts with fresh optimizer moments, as Google's (a new run from the transfer
        checkpoint, whose Adam/LAMB slots it does not load): moments gathered from the transfer
        losses' gradients would otherwise scale stage 2's first thousands of updates."""
        return 0 < step == self.schedule.transfer_steps

    def log_values(self, step: int) -> dict:
        """What metrics.jsonl's train line adds: the stage, phase and layer of update `step`."""
        point = self.schedule.at(step)
        return {"stage": point.stage, "phase": point.phase, "layer": point.layer}

    def resume_invariants(self) -> dict:
        return {**super().resume_invariants(), "transfer_steps": self.schedule.transfer_steps,
                "layer_schedule": self.schedule.kind}


# --------------------------------------------------------------------------------------------
# `mobilebert distill`
# --------------------------------------------------------------------------------------------

def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, metavar="DIR",
                        help="the pretrained teacher (IB-BERT): a model dir with the pretraining heads")
    parser.add_argument("--student", required=True, metavar="PRESET|CONFIG.json",
                        help="the student's architecture: a preset (mobilebert, mobilebert-tiny), a config.json "
                             "or a directory holding one; same layers, hidden_size, heads, embedding_size and "
                             "vocabulary as the teacher")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="training shards (mobilebert pretrain-data)")
    parser.add_argument("--dev", metavar="DATA_DIR", help="held-out shards evaluated during training")
    parser.add_argument("--output", required=True, help="run dir: best/, last/, train_config.json, metrics.jsonl, vdl/")
    stages = parser.add_argument_group("the two stages (Google's knobs and defaults)")
    stages.add_argument("--transfer-steps", type=flags.integer(minimum=0), default=240000,
                        help="stage 1, progressive knowledge transfer: one equal phase per layer "
                             "(a multiple of the layer count; 0 skips the stage)")
    stages.add_argument("--distill-steps", type=flags.integer(minimum=0), default=500000,
                        help="stage 2, pretraining distillation (MLM + NSP, every weight trains)")
    stages.add_argument("--layer-schedule", choices=LAYER_SCHEDULES, default="google",
                        help="google: lr x0 before a layer's phase, x3 in it, x0.3 after, embeddings and heads x0, "
                             "warmup at each phase start; freeze: only layer l trains in phase l")
    stages.add_argument("--hidden-distill-factor", type=flags.number(minimum=0),
                        default=DISTILL_DEFAULTS["hidden_distill_factor"], help="feature-map transfer weight")
    stages.add_argument("--attention-distill-factor", type=flags.number(minimum=0),
                        default=DISTILL_DEFAULTS["attention_distill_factor"], help="attention transfer weight")
    stages.add_argument("--beta-distill-factor", type=flags.number(minimum=0),
                        default=DISTILL_DEFAULTS["beta_distill_factor"], help="per-token mean transfer weight")
    stages.add_argument("--gamma-distill-factor", type=flags.number(minimum=0),
                        default=DISTILL_DEFAULTS["gamma_distill_factor"], help="per-token variance transfer weight")
    stages.add_argument("--distill-ground-truth-ratio", type=flags.number(minimum=0, maximum=1),
                        default=DISTILL_DEFAULTS["distill_ground_truth_ratio"],
                        help="stage 2 MLM target: ratio x one-hot + (1 - ratio) x the teacher's softmax")
    stages.add_argument("--distill-temperature", type=flags.number(above=0),
                        default=DISTILL_DEFAULTS["distill_temperature"],
                        help="the teacher's MLM logits are divided by this before its softmax")
    add_training_arguments(parser, warmup_help="stage 2's linear warmup steps from 0 to the peak "
                                               "(stage 1 runs at the peak, shaped by --layer-schedule)")


def resolve_distill_config(args: argparse.Namespace) -> argparse.Namespace:
    """The flags plus the trainer's fixed values (checked before any work)."""

    check_optimisation_flags(args)
    total = args.transfer_steps + args.distill_steps
    if total == 0:
        raise UserInputError("--transfer-steps and --distill-steps are both 0: nothing to do")
    # Stage 2 warms up (stage 1 runs at the peak): --warmup-steps, else --warmup-ratio of its steps.
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * args.distill_steps)
    if args.warmup_steps is not None and 0 < args.distill_steps <= warmup:
        raise UserInputError(f"--warmup-steps {warmup} is not fewer than stage 2's --distill-steps "
                             f"{args.distill_steps}: the learning rate would never reach its peak; lower it, or "
                             f"leave it out (default: a share of the steps, --warmup-ratio)")
    values = {**vars(args), "warmup_steps": warmup}
    return argparse.Namespace(**values, max_steps=total, epochs=1.0, decay_ratio=1.0)


def read_teacher(teacher: str):
    """(config, state dict, directory) of the teacher; it must hold the pretraining heads."""

    try:
        directory = resolve_source(teacher)
        config, state = load_pretrained(directory)
    except UserInputError as error:
        raise UserInputError(f"--teacher: {error}") from None
    lacking = [name for name in ("cls.predictions.bias", "cls.seq_relationship.weight") if name not in state]
    if lacking:
        raise UserInputError(f"--teacher {directory}: no pretraining heads ({', '.join(lacking)} missing); "
                             "distill from a model trained by `mobilebert pretrain`")
    return config, state, directory


def student_vocabulary(spec: str) -> dict | None:
    """The vocabulary beside the student's config, if it has one (a preset has none)."""
    path = Path(spec)
    directory = path if path.is_dir() else path.parent if path.is_file() else None
    return model_vocabulary(directory) if directory is not None else None


def teacher_fingerprint(config, state: dict) -> dict:
    """The teacher's config and a hash of its weights: what --resume compares, not its path."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(state[name]).tobytes())
    return {**config.to_dict(), "weights_sha256": digest.hexdigest()}


def build_teacher(config, state, directory: Path):
    teacher = MobileBertForPreTraining(config)
    teacher.load_converted_state_dict(state, source=str(directory))
    return teacher


def build_student(config, teacher, resume_dir: Path | None):
    """From last/ when resuming; else new (from --seed) with the teacher's embeddings and heads."""

    if resume_dir is not None:
        return MobileBertForPreTraining.from_pretrained(resume_dir)
    config.architectures = [PRETRAINING_HEAD]
    student = MobileBertForPreTraining(config)
    copied = copy_from_teacher(teacher, student)
    logger.info("student: %d parameter tensors copied from the teacher (embeddings and heads)", len(copied))
    return student


def run_distill(args: argparse.Namespace) -> dict | None:

    config = resolve_distill_config(args)
    student_file = config.student if Path(config.student).exists() else None
    check_separate_dirs({"--teacher": config.teacher, "--student": student_file, "--data": config.data,
                         "--dev": config.dev}, config.output, "--output", output_may_be_inside=True)
    output, is_main = begin_run(config)
    teacher_config, teacher_state, teacher_dir = read_teacher(config.teacher)
    student_config = load_config(config.student)
    student_identity = student_config.to_dict()          # as given (building the student names its head)
    teacher_vocabulary = model_vocabulary(teacher_dir)
    check_compatible(teacher_config, student_config, teacher_vocabulary, student_vocabulary(config.student),
                     teacher_name=f"--teacher {teacher_dir}", student_name=f"--student {config.student}")
    check_fits_in_memory(student_config, f"--student {config.student}")
    schedule = LayerSchedule(student_config.num_hidden_layers, config.transfer_steps, config.layer_schedule)
    teacher_name = f"the teacher ({teacher_dir})"
    data = open_data(config.data)
    check_model_fits_data(teacher_config, teacher_vocabulary, data, teacher_name, config.max_predictions_per_seq)
    masking = MaskingSettings.from_args(config)
    eval_sets = []
    if config.dev:
        dev = open_data(config.dev, "--dev")
        check_model_fits_data(teacher_config, teacher_vocabulary, dev, teacher_name, config.max_predictions_per_seq)
        eval_sets = [PretrainingTask().eval_set("dev", config.dev, dev, None, masking)]
    check_batch_size(config, data)
    check_batch_fits(data.num_rows, config, config.data)
    tokenizer = MobileBertTokenizer.from_pretrained(teacher_dir)
    last = output / "last"
    resume_dir = last if config.resume and (last / CHECKPOINT_STATE).is_file() else None
    seed_initialisation(config.seed)
    teacher = build_teacher(teacher_config, teacher_state, teacher_dir)
    student = build_student(student_config, teacher, resume_dir)
    factors = TransferFactors(config.hidden_distill_factor, config.attention_distill_factor,
                              config.beta_distill_factor, config.gamma_distill_factor)
    task = DistillationTask(teacher, schedule, factors, config.distill_ground_truth_ratio,
                            config.distill_temperature, masking)
    task.invariants = {"student": student_identity, "teacher": teacher_fingerprint(teacher_config, teacher_state),
                       "data": data.fingerprint()}
    logger.info("distilling %s (%d layers) into the student: %d transfer steps (%d a layer, %s schedule), "
                "%d distillation steps", teacher_dir, schedule.num_layers, schedule.transfer_steps,
                schedule.steps_per_phase, schedule.kind, config.distill_steps)
    start_output(config, output, is_main)
    trainer = Trainer(task, config, student, tokenizer, data, eval_sets, output)
    seed_dropout(config.seed)
    return trainer.train(resume=config.resume)
