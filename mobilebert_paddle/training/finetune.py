"""`mobilebert finetune`: the one training loop, for every task of tasks.py (fine-tuning,
pretraining.py's MLM + NSP, distillation).

The loop knows nothing about SQuAD, GLUE or masked LM: the task gives the row count, builds
each batch from (row indices, step) when it is drawn, computes a per-row loss (and parts to
log), may set per-parameter learning-rate multipliers per step, and scores dev data (the
hooks are listed in tasks.Task). What the loop adds is what a run needs to be trusted:

* the MobileBert_paddle recipe as defaults (AdamW 0.9/0.98/1e-6, decay 0.1 off biases and
  norms, lr 8e-5, batch 64, 6 epochs, 10% warmup then cosine to min_lr at decay_ratio, seed 42);
  LAMB (--optimizer lamb, Google's choice for pretraining) with the same decay exclusions;
* the attention mask passed at every step (the reproduction we replace trained without it);
* `--batch-size` is the *global* batch of one optimizer step. Each epoch's order depends on
  the seed and the epoch only, global batch k is the same rows for any number of processes,
  and each process takes an equal slice of it (then splits that for gradient accumulation);
  the loss is sum / rows-in-the-global-batch, so 1 process and N processes (DataParallel
  averages gradients) compute the same update;
* exact resume: last/ holds the model, the optimizer moments (by parameter name), the
  scheduler, the RNG states of every process and the step (which fixes the data position);
  checkpoints are written atomically (files.atomic_directory), so a kill at any moment
  leaves the previous one intact;
* a guard: a non-finite loss or gradient norm stops the run naming the step (or, with
  --skip-nonfinite, skips that update); a model with non-finite weights is never saved;
* evaluation through evaluation.evaluate_task (the code path of `mobilebert evaluate`),
  best-checkpoint selection on the task's main metric, metrics.jsonl + VisualDL scalars,
  a progress bar on stderr (progress.progress_bar: live on a terminal, a line now and then
  in a log), a JSON summary at the end.

Data parallel: `python -m paddle.distributed.launch --devices 0,1,2,3 $(which mobilebert) finetune ...`
(GPUs, NCCL) or `--nproc_per_node 2` on CPU (gloo). Only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.io import DistributedBatchSampler

from . import flags
from .cli import inputs_accepted
from .errors import Interrupted, UserInputError
from .evaluation import (add_task_settings_arguments, check_sequence_length, eager_predictor, evaluate_task,
                         select_device, write_evaluation)
from .files import (atomic_directory, atomic_write_json, atomic_write_safetensors, atomic_write_text,
                    check_creatable_dir, ensure_writable_dir, lock_directory, read_json, recover_directory,
                    release_directory)
from .tasks import (FINETUNE_TASK_NAMES, Task, TaskSettings, dev_sources, get_task, load_eval_sets,
                    read_train_examples, recipe_table)

logger = logging.getLogger(__name__)

FP16_REFUSAL = ("--amp fp16 is refused: MobileBERT's activations reach ~1e7, far beyond fp16's largest value "
                "(65504), so they overflow to inf; use --amp bf16 (fp32's range) on a GPU, or the fp32 default")
CHECKPOINT_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
# A resumed run must be the run it continues: every flag (the recipe, the windows, the seed...) and
# what follows from the data must be as before, except these, which change how it is watched, where
# it runs or where its inputs are read from (the data must still give the same rows).
RESUMABLE_FLAGS = ("eval_steps", "save_steps", "logging_steps", "eval_batch_size", "device", "skip_nonfinite",
                   "resume", "overwrite", "output", "model", "train", "dev", "data_dir", "data", "command", "task")
RESUMABLE_HELP = "--eval-steps, --save-steps, --logging-steps, --eval-batch-size, --device, --skip-nonfinite, the paths"
RESTART_ADVICE = "start afresh with --overwrite, or put back a good last/"


class NonFiniteLossError(UserInputError):
    """Training produced a non-finite loss or gradient: one line naming the step, exit 2."""


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------

def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Per-task recipe defaults: " + recipe_table() + "."
    parser.add_argument("task", choices=FINETUNE_TASK_NAMES, help="what to fine-tune for")
    parser.add_argument("--model", required=True,
                        help="starting point: Paddle model dir, HF dir or hub id (e.g. google/mobilebert-uncased)")
    parser.add_argument("--output", required=True,
                        help="run dir: best/, last/, train_config.json, metrics.jsonl, vdl/")
    data = parser.add_argument_group("data")
    # --train-file: under paddle.distributed.launch, whose parser takes --train for its --trainers.
    data.add_argument("--train", "--train-file", dest="train", help="training file: SQuAD JSON or GLUE train.tsv")
    data.add_argument("--dev", nargs="+", metavar="FILE",
                      help="dev file(s) evaluated during training (MNLI: dev_matched.tsv dev_mismatched.tsv)")
    data.add_argument("--data-dir", help="directory in the distributed layout (train-v1.1.json / dev-v1.1.json, "
                                         "GLUE's train.tsv / dev*.tsv, or glue_data/<TASK>/...)")
    data.add_argument("--data", choices=("files", "hub"), default="files",
                      help="hub: the task's HF hub dataset (needs the optional `datasets` package and a connection)")
    optim = parser.add_argument_group("optimisation")
    flags.add_optimizer_arguments(optim, optimizer="adamw", learning_rate=8e-5, batch_size=64, weight_decay=0.1,
                                  adam_beta2=0.98, seed_help="fixes head initialisation, data order and dropout",
                                  max_grad_norm_help=" (the recipe did not clip)")
    optim.add_argument("--epochs", type=flags.number(above=0), default=6.0, help="passes over the training rows")
    optim.add_argument("--max-steps", type=flags.integer(minimum=0), default=0,
                       help="optimizer steps to run instead of --epochs (0: from --epochs); the schedule spans them")
    optim.add_argument("--warmup-ratio", type=flags.number(minimum=0, maximum=1), default=0.1, help="fraction of the steps with linear warmup from 0")
    optim.add_argument("--warmup-steps", type=flags.integer(minimum=0), default=None, help="warmup steps, overriding --warmup-ratio%(default).0s")
    optim.add_argument("--schedule", choices=("cosine", "linear"), default="cosine",
                       help="shape of the decay from the peak to --min-lr after warmup "
                            "(linear with --min-lr 0 --decay-ratio 1 is HF's linear schedule)")
    optim.add_argument("--min-lr", type=flags.number(minimum=0), default=None,
                       help="learning rate reached at --decay-ratio and kept "
                            "[default: 1e-6 squad1, 5e-7 others]%(default).0s")
    optim.add_argument("--decay-ratio", type=flags.number(above=0, maximum=1), default=None,
                       help="fraction of the steps at which the decay reaches --min-lr "
                            "[default: 0.7 squad1, 0.9 others]%(default).0s")
    add_task_settings_arguments(parser)
    flags.add_run_arguments(parser, logging_steps=30, eval_steps=None,
                            eval_steps_help="evaluate on dev every N steps, 0 = after every epoch (always at the end) "
                                            "[default: 240 squad1/mnli/qqp/qnli/sst2, 120 squad2, 0 other GLUE "
                                            "tasks]%(default).0s",
                            resume_help=f"; every flag must be as before except {RESUMABLE_HELP}")


def resolve_config(args: argparse.Namespace, task: Task) -> argparse.Namespace:
    """The flags with the task's recipe filled in. Each flag's own range is checked as it is
    parsed (flags.py); what is left here are the checks across flags."""
    config = argparse.Namespace(**vars(args))
    recipe = task.recipe
    for name, default in (("min_lr", recipe.min_lr), ("decay_ratio", recipe.decay_ratio),
                          ("eval_steps", recipe.eval_steps), ("max_seq_length", recipe.max_seq_length),
                          ("null_score_diff_threshold", recipe.null_score_diff_threshold)):
        if getattr(config, name, None) is None:
            setattr(config, name, default)
    if config.amp == "fp16":
        raise UserInputError(FP16_REFUSAL)
    if config.min_lr > config.learning_rate:
        raise UserInputError(f"--min-lr {config.min_lr} is above the peak --learning-rate {config.learning_rate}")
    return config


# --------------------------------------------------------------------------------------------
# Data order, schedule, optimizer
# --------------------------------------------------------------------------------------------

class GlobalBatchSampler(DistributedBatchSampler):
    """Batches that do not depend on the number of processes.

    Epoch e visits the rows in the order RandomState((seed, e)).permutation(N) (held as int32
    below 2**31 rows: 4 bytes a row, ~100 MB for a 26M-instance corpus); global batch
    k is rows [k*B, (k+1)*B) of that order, and process r takes the r-th of `num_replicas`
    near-equal slices of it. A last global batch too small to give every process (and every
    accumulation step) a row is dropped. Paddle's own sampler pads with repeated rows and
    slices differently per world size, so 1 and N processes would not see the same batches.
    """

    def __init__(self, num_rows: int, global_batch_size: int, seed: int, num_replicas: int | None = None,
                 rank: int | None = None, min_batch_size: int = 1):
        super().__init__(range(num_rows), batch_size=global_batch_size, num_replicas=num_replicas, rank=rank)
        self.num_rows, self.global_batch_size, self.seed = num_rows, global_batch_size, seed
        self.min_batch_size = max(1, min_batch_size)
        self.start_batch = 0
        self.order = self.epoch_order(0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        # shuffle(arange) draws exactly what permutation(N) draws: the same order in half the memory.
        order = np.arange(self.num_rows, dtype=np.int32 if self.num_rows < 2**31 else np.int64)
        np.random.RandomState([self.seed, epoch]).shuffle(order)
        return order

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or self.order is None:
            self.epoch, self.order = epoch, self.epoch_order(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch(self.num_rows, self.global_batch_size, self.min_batch_size)

    @staticmethod
    def batches_per_epoch(num_rows: int, global_batch_size: int, min_batch_size: int = 1) -> int:
        full, rest = divmod(num_rows, global_batch_size)
        return full + int(rest >= max(1, min_batch_size))

    def global_batch(self, number: int) -> np.ndarray:
        return self.order[number * self.global_batch_size:(number + 1) * self.global_batch_size]

    def local_batch(self, number: int) -> np.ndarray:
        return np.array_split(self.global_batch(number), self.nranks)[self.local_rank]

    def __iter__(self):
        for number in range(self.start_batch, len(self)):
            yield self.local_batch(number).tolist()


class WarmupDecaySchedule(paddle.optimizer.lr.LRScheduler):
    """Linear warmup from 0 to the peak over `warmup_steps`, then a cosine (or linear) decay to
    `min_lr` reached at `decay_steps`, then `min_lr` to the end (the recipe's schedule)."""

    def __init__(self, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int, shape: str = "cosine"):
        self.peak_lr, self.min_lr, self.shape = peak_lr, min_lr, shape
        self.warmup_steps, self.decay_steps = warmup_steps, max(decay_steps, warmup_steps)
        super().__init__(learning_rate=peak_lr)

    def get_lr(self) -> float:
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if step >= self.decay_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress
        return self.min_lr + (self.peak_lr - self.min_lr) * factor


def no_decay_parameter_names(model) -> set[str]:
    """Paddle names of biases and of LayerNorm / NoNorm weights: AdamW does not decay them."""
    from .model import NoNorm

    names = {param.name for layer in model.sublayers(include_self=True)
             if isinstance(layer, (paddle.nn.LayerNorm, NoNorm)) for param in layer.parameters()}
    names.update(param.name for key, param in model.named_parameters() if key.endswith("bias"))
    return names


def build_optimizer(model, scheduler, config) -> paddle.optimizer.Optimizer:
    """AdamW or LAMB over every parameter; neither decays biases or norm weights (LAMB also
    skips its trust ratio for them, as Google's LAMB does). A parameter's learning rate is the
    schedule's times its multiplier (set_learning_rate_multipliers)."""
    no_decay = no_decay_parameter_names(model)
    if getattr(config, "optimizer", "adamw") == "lamb":
        return paddle.optimizer.Lamb(learning_rate=scheduler, lamb_weight_decay=config.weight_decay,
                                     beta1=config.adam_beta1, beta2=config.adam_beta2, epsilon=config.adam_epsilon,
                                     parameters=model.parameters(),
                                     exclude_from_weight_decay_fn=lambda param: param.name in no_decay)
    return paddle.optimizer.AdamW(learning_rate=scheduler, beta1=config.adam_beta1, beta2=config.adam_beta2,
                                  epsilon=config.adam_epsilon, parameters=model.parameters(),
                                  weight_decay=config.weight_decay,
                                  apply_decay_param_fun=lambda name: name not in no_decay)


def reset_optimizer_state(optimizer) -> None:
    """Put AdamW / LAMB back where a new optimizer starts: moments 0, the bias-correction powers
    at beta1 and beta2. In place, because Paddle names accumulators with a per-process counter
    (a second optimizer's are "..._moment1_1"), and checkpoints and resumed runs expect the first's."""
    initial = {optimizer._beta1_pow_acc_str: optimizer._beta1, optimizer._beta2_pow_acc_str: optimizer._beta2}
    for kind, per_parameter in optimizer._accumulators.items():
        for accumulator in per_parameter.values():
            accumulator.set_value(paddle.full_like(accumulator, initial.get(kind, 0.0)))


def set_learning_rate_multipliers(model, multipliers: dict[str, float]) -> None:
    """Scale each named parameter's learning rate (the others get 1). Paddle's optimizers read
    `optimize_attr["learning_rate"]` at every step and use schedule x multiplier for the update
    and the decoupled weight decay alike, so a multiplier of 0 leaves a parameter bit-identical
    (tests/test_pretraining.py checks AdamW and LAMB)."""
    unknown = set(multipliers) - {path for path, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"learning-rate multipliers for no parameter of the model: {sorted(unknown)[:4]}")
    for path, param in model.named_parameters():
        param.optimize_attr["learning_rate"] = float(multipliers.get(path, 1.0))


# --------------------------------------------------------------------------------------------
# Checkpoint pieces: optimizer state by parameter name, RNG states as JSON
# --------------------------------------------------------------------------------------------

def _split_accumulator_key(key: str, parameter_names: set[str]) -> tuple[str, str] | None:
    """"linear_3.w_0_moment1_0" -> ("linear_3.w_0", "_moment1_0"): the longest known name before an "_"."""
    cuts = [index for index, char in enumerate(key) if char == "_"]
    for cut in reversed(cuts):
        if key[:cut] in parameter_names:
            return key[:cut], key[cut:]
    return None


def optimizer_state_by_name(optimizer, model) -> dict[str, np.ndarray]:
    """AdamW accumulators keyed by the model's parameter paths instead of Paddle's per-process
    unique names (linear_57.w_0 depends on how many layers the process built before)."""
    path_of = {param.name: path for path, param in model.named_parameters()}
    state = {}
    for key, value in optimizer.state_dict().items():
        if not isinstance(value, paddle.Tensor):
            continue  # the LR_Scheduler dict is saved with the trainer state
        parts = _split_accumulator_key(key, set(path_of))
        if parts is None:
            raise RuntimeError(f"optimizer state {key!r} belongs to no model parameter")
        state[path_of[parts[0]] + parts[1]] = np.ascontiguousarray(value.numpy())
    return state


def load_optimizer_state(optimizer, model, state: dict[str, np.ndarray], scheduler_state: dict, source: Path) -> None:
    """Inverse of optimizer_state_by_name; the scheduler's state goes in with it (Paddle requires it)."""
    name_of = {path: param.name for path, param in model.named_parameters()}
    renamed: dict[str, Any] = {"LR_Scheduler": scheduler_state}
    for key, value in state.items():
        parts = _split_accumulator_key(key, set(name_of))
        if parts is None:
            raise UserInputError(f"{source}: optimizer state {key!r} matches no parameter of the model")
        renamed[name_of[parts[0]] + parts[1]] = value
    optimizer.set_state_dict(renamed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and Paddle generator states of this process, as JSON values."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return {"python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]),
                      float(numpy_state[4])],
            "paddle": [list(state.__getstate__()) for state in paddle.get_rng_state()]}


def restore_rng_state(saved: dict[str, Any]) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    state_type = type(paddle.get_rng_state()[0])
    states = []
    for values in saved["paddle"]:
        state = state_type.__new__(state_type)
        state.__setstate__(tuple(values))
        states.append(state)
    paddle.set_rng_state(states)


def damaged_checkpoint(path: Path, problem: str) -> UserInputError:
    return UserInputError(f"{path}: damaged checkpoint, {problem}; {RESTART_ADVICE}")


def read_checkpoint(last: Path) -> dict:
    """last/trainer_state.json, checked in shape: a damaged one is a line naming it, not a KeyError later."""
    path = last / CHECKPOINT_STATE
    if not path.is_file():
        raise damaged_checkpoint(path, "the file is missing")
    checkpoint = read_json(path, "trainer state")
    kinds = {"state": dict, "scheduler": dict, "rng": list, "run": dict}
    if not isinstance(checkpoint, dict):
        raise damaged_checkpoint(path, "not a JSON object")
    for key, kind in kinds.items():
        if not isinstance(checkpoint.get(key), kind) or not checkpoint[key]:
            raise damaged_checkpoint(path, f"{key!r} is missing or not a non-empty {kind.__name__}")
    fields = set(TrainState.__dataclass_fields__)
    unknown = sorted(set(checkpoint["state"]) - fields)
    if unknown or not isinstance(checkpoint["state"].get("step"), int) or checkpoint["state"]["step"] < 0:
        raise damaged_checkpoint(path, f"'state' has unknown keys {unknown}" if unknown else "'state' has no step")
    return checkpoint


def checkpoint_step(last: Path) -> int | None:
    """The step last/ holds, or None when there is no readable checkpoint (for messages only)."""
    try:
        step = json.loads((last / CHECKPOINT_STATE).read_text(encoding="utf-8"))["state"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def run_flags(config) -> dict[str, Any]:
    """The flags that make the run what it is (all but RESUMABLE_FLAGS), as JSON values."""
    values = {key: value for key, value in vars(config).items() if key not in RESUMABLE_FLAGS and not callable(value)}
    return json.loads(json.dumps(values))


def check_same_run(saved: dict, identity: dict, last: Path) -> None:
    """Refuse to continue last/ with other flags or data: one line naming every difference."""
    saved_flags = saved.get("flags") if isinstance(saved.get("flags"), dict) else {}   # none before this check
    changes = [f"--{key.replace('_', '-')} was {saved_flags[key]}, now {value}"
               for key, value in identity["flags"].items() if key in saved_flags and saved_flags[key] != value]
    changes += [f"{key} was {saved.get(key)}, now {identity[key]}" for key in ("task", "train_rows")
                if saved.get(key) != identity[key]]
    saved_invariants = saved.get("task_invariants") or {}          # what a task adds (distill: its stages)
    changes += [f"{key} was {saved_invariants[key]}, now {value}" for key, value in (identity.get("task_invariants") or {}).items()
                if key in saved_invariants and saved_invariants[key] != value]
    if not changes:    # the step counts follow from the flags and the data: named only if nothing else explains them
        changes = [f"{key} was {saved.get(key)}, now {identity[key]}" for key in ("total_steps", "steps_per_epoch")
                   if saved.get(key) != identity[key]]
    if changes:
        raise UserInputError(f"{last}: cannot resume with a changed run: {'; '.join(changes)} (on resume only "
                             f"{RESUMABLE_HELP} may change; or start afresh with --overwrite)")


def read_optimizer_state(last: Path, state: "TrainState") -> dict[str, np.ndarray]:
    """last/optimizer.safetensors; missing or unreadable is a line naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = last / OPTIMIZER_STATE
    if not path.is_file():
        raise damaged_checkpoint(path, "the file is missing")
    try:
        moments = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise damaged_checkpoint(path, f"unreadable ({error})") from None
    if not moments and state.step > state.skipped_steps:
        raise damaged_checkpoint(path, f"no optimizer moments after {state.step - state.skipped_steps} updates")
    return moments


def check_finite_weights(model, step: int) -> None:
    for path, param in model.named_parameters():
        if not np.isfinite(param.numpy()).all():
            raise NonFiniteLossError(f"step {step}: parameter {path} is not finite; refusing to save this model")


# --------------------------------------------------------------------------------------------
# metrics.jsonl and VisualDL
# --------------------------------------------------------------------------------------------

class RunLog:
    """One JSON line per log / eval event in metrics.jsonl, the same numbers as VisualDL scalars."""

    def __init__(self, output: Path, enabled: bool):
        self.output, self.path, self.enabled, self.writer = output, output / "metrics.jsonl", enabled, None

    def start(self, resume_step: int | None) -> None:
        """Fresh run: empty file. Resume: drop lines written after the checkpoint (they are redone).
        Nothing is written before this (a refused resume leaves the run dir as it was)."""
        if not self.enabled:
            return
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=str(self.output / "vdl"))
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, AttributeError):   # a line cut by the kill is dropped
                    if json.loads(line).get("step", math.inf) <= resume_step:
                        kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag=f"{kind}/{key}", value=float(value), step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything about progress that a resumed run must continue from (saved in last/)."""

    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    skipped_steps: int = 0
    loss_sum: float = 0.0          # since the last train log line
    loss_steps: int = 0
    part_sums: dict[str, float] = field(default_factory=dict)   # the task's loss parts, same span
    part_steps: dict[str, int] = field(default_factory=dict)    # steps each part was summed over
    last_loss: float | None = None
    last_eval_step: int | None = None


class Trainer:
    """`data` is whatever the task's hooks read (tasks.Task): an in-memory dict of arrays for
    SQuAD / GLUE, memory-mapped token shards for pretraining."""

    def __init__(self, task: Task, config, model, tokenizer, data, eval_sets, output: Path):
        self.task, self.config, self.raw_model, self.tokenizer = task, config, model, tokenizer
        self.data, self.eval_sets, self.output = data, eval_sets, output
        self.num_rows = task.num_rows(data)
        self.settings = task.settings_from_args(config)
        task.remember_settings(model, self.settings)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        module = task.training_module(model)           # what compute_loss gets (the model, or a view of it)
        self.model = (paddle.DataParallel(module, find_unused_parameters=task.find_unused_parameters)
                      if self.world_size > 1 else module)
        self.sampler = GlobalBatchSampler(self.num_rows, config.batch_size, config.seed,
                                          min_batch_size=self.world_size * config.gradient_accumulation_steps)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.warmup_steps = (config.warmup_steps if config.warmup_steps is not None
                             else int(config.warmup_ratio * self.total_steps))
        self.decay_steps = math.ceil(config.decay_ratio * self.total_steps)
        self.scheduler = (task.learning_rate_schedule(config, self.total_steps)
                          or WarmupDecaySchedule(config.learning_rate, config.min_lr, self.warmup_steps,
                                                 self.decay_steps, config.schedule))
        self.optimizer = build_optimizer(model, self.scheduler, config)
        self.state = TrainState()
        self.log = RunLog(output, self.is_main)
        self.last_grad_norm = math.nan
        self.last_lr = self.scheduler.last_lr

    # ----- the run -------------------------------------------------------------------------

    def train(self, resume: bool) -> dict | None:
        """Run to the end (or continue last/); an interrupt says where the run stopped. The run dir's
        lock (taken by prepare_output / start_output) is released however it ends."""
        try:
            return self.run(resume)
        except KeyboardInterrupt as interrupt:      # SIGINT, and SIGTERM as the CLI turns it into one
            raise Interrupted.during(interrupt, f"at step {self.state.step}; {self.checkpoint_note()}") from None
        finally:
            if self.is_main:
                release_directory(self.output)

    def run(self, resume: bool) -> dict | None:
        started = time.time()
        resumed_from = self.restore() if resume and (self.output / "last").is_dir() else None
        inputs_accepted()            # everything is checked: the log lines held so far are shown
        if resumed_from is None:
            self.write_train_config()
        self.log.start(resumed_from)
        progress = self.progress_bar()
        self.raw_model.train()
        try:
            while self.state.step < self.total_steps:
                self.run_step()
                progress.update(1)
                progress.set_postfix(loss=f"{math.nan if self.state.last_loss is None else self.state.last_loss:.4f}",
                                     lr=f"{self.last_lr:.2e}", refresh=False)
                self.after_step()
        finally:
            progress.close()
            self.log.close()
        if self.is_main and not (self.output / "best").is_dir():
            self.save_best(None)   # no dev data (or no finite dev score): the final model is best/
        return self.summary(resumed_from, time.time() - started) if self.is_main else None

    def run_step(self) -> None:
        step = self.state.step                      # the step being taken, from 0
        epoch, number = divmod(step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        global_count = len(self.sampler.global_batch(number))
        if self.task.restarts_optimizer(step):          # e.g. distillation's stage 2: a new run's moments
            reset_optimizer_state(self.optimizer)
        set_learning_rate_multipliers(self.raw_model, self.task.learning_rate_multipliers(self.raw_model, step))
        lr = self.optimizer.get_lr()
        result = self.train_step(self.sampler.local_batch(number), global_count, step)
        self.state.step += 1
        self.scheduler.step()
        if result is not None:
            loss, parts = result
            self.state.loss_sum += loss
            self.state.loss_steps += 1
            self.state.last_loss = loss
            for name, value in parts.items():        # a task's parts may change between steps
                self.state.part_sums[name] = self.state.part_sums.get(name, 0.0) + value
                self.state.part_steps[name] = self.state.part_steps.get(name, 0) + 1
        self.last_lr = lr

    def train_step(self, local_rows: np.ndarray, global_count: int, step: int) -> tuple[float, dict] | None:
        """One optimizer step on this process's rows of a global batch: the batch's mean loss and
        mean loss parts, or None when the update was skipped as non-finite."""
        pieces = np.array_split(local_rows, self.config.gradient_accumulation_steps)
        scale = self.world_size / global_count        # DataParallel averages over processes
        local_loss, local_parts = 0.0, {}
        for number, piece in enumerate(pieces):
            inputs, labels = self.task.make_batch(self.data, piece, step)
            with self.gradient_sync(number == len(pieces) - 1):
                with self.autocast():
                    losses, parts = self.task.compute_loss(self.model, inputs, labels, step)    # (b,), {name: (b,)}
                (losses.sum() * scale).backward()
            local_loss += float(losses.sum())
            for name, value in parts.items():
                local_parts[name] = local_parts.get(name, 0.0) + float(value.sum())
        self.last_grad_norm = self.gradient_norm()
        names = sorted(local_parts)                 # the same names on every process (one task)
        loss_sum, nonfinite, *part_sums = self.all_sum(
            [local_loss, float(not math.isfinite(local_loss))] + [local_parts[name] for name in names])
        if nonfinite or not math.isfinite(self.last_grad_norm):
            self.optimizer.clear_grad()
            return self.non_finite(loss_sum / global_count)
        self.optimizer.step()
        self.optimizer.clear_grad()
        return loss_sum / global_count, {name: value / global_count for name, value in zip(names, part_sums)}

    def gradient_sync(self, last_part: bool):
        """Accumulation passes skip DataParallel's all-reduce; the last one averages everything."""
        return self.model.no_sync() if self.world_size > 1 and not last_part else contextlib.nullcontext()

    def autocast(self):
        if self.config.amp == "bf16":
            return paddle.amp.auto_cast(enable=True, dtype="bfloat16")
        return contextlib.nullcontext()

    def gradient_norm(self) -> float:
        """Global L2 norm of the gradients (before clipping); clips them to --max-grad-norm when set."""
        parameters = [param for param in self.raw_model.parameters() if param.grad is not None]
        if self.config.max_grad_norm > 0:
            return float(paddle.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm))
        norms = paddle.stack([paddle.linalg.norm(param.grad.detach().astype("float32")) for param in parameters])
        return float(paddle.linalg.norm(norms))

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        tensor = paddle.to_tensor(values, dtype="float64")
        dist.all_reduce(tensor)
        return tensor.numpy().tolist()

    def non_finite(self, loss: float) -> None:
        step = self.state.step + 1
        if not self.config.skip_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss {loss} (gradient norm {self.last_grad_norm}) at step {step} of {self.total_steps}; "
                f"stopped ({self.checkpoint_note(resume_hint=False)}). Lower --learning-rate, set --max-grad-norm, "
                f"or pass --skip-nonfinite")
        self.state.skipped_steps += 1
        logger.warning("step %d: non-finite loss %s / gradient norm %s; update skipped", step, loss, self.last_grad_norm)
        self.log.record("skipped", step, {"loss": str(loss), "grad_norm": str(self.last_grad_norm)})
        return None

    def after_step(self) -> None:
        step = self.state.step
        if step % self.config.logging_steps == 0 and self.state.loss_steps:
            parts = {name: value / self.state.part_steps.get(name, self.state.loss_steps)
                     for name, value in sorted(self.state.part_sums.items())}
            self.log.record("train", step, {"epoch": round(step / self.steps_per_epoch, 4),
                                            "loss": self.state.loss_sum / self.state.loss_steps, **parts,
                                            "lr": self.last_lr, "grad_norm": self.last_grad_norm,
                                            **self.task.log_values(step - 1)})
            self.state.loss_sum, self.state.loss_steps, self.state.part_sums, self.state.part_steps = 0.0, 0, {}, {}
        every = self.config.eval_steps or self.steps_per_epoch
        evaluated = bool(self.eval_sets) and (step % every == 0 or step == self.total_steps)
        if evaluated:
            self.evaluate()
        saves = self.config.save_steps
        if step == self.total_steps or (saves and step % saves == 0) or (not saves and step % every == 0):
            self.save_last()

    # ----- evaluation and checkpoints ----------------------------------------------------------

    def evaluate(self) -> None:
        """Score dev on rank 0 (the others wait); a better main metric writes best/."""
        if self.is_main:
            result = evaluate_task(self.task, eager_predictor(self.raw_model), self.eval_sets, self.settings,
                                   self.config.eval_batch_size)
            value = result.main_value
            improved = math.isfinite(value) and (self.state.best_value is None or value > self.state.best_value)
            logger.info("step %d: %s = %.4f%s", self.state.step, result.main_metric, value, " (best)" if improved else "")
            self.log.record("eval", self.state.step, {**result.metrics, "best": improved})
            if improved:
                self.save_best(result)
                self.state.best_value, self.state.best_step = value, self.state.step
            self.state.last_eval_step = self.state.step
        self.barrier()

    def save_best(self, result) -> None:
        """best/: a model dir (tokenizer, id2label) plus metrics.json and the dev predictions, in one swap."""
        from .modeldir import save_paddle_model_dir

        check_finite_weights(self.raw_model, self.state.step)
        try:
            with atomic_directory(self.output / "best") as staging:
                save_paddle_model_dir(self.raw_model, staging, tokenizer=self.tokenizer)
                if result is not None:
                    write_evaluation(self.task, result, staging, extra={"step": self.state.step})
                else:
                    atomic_write_json(staging / "metrics.json",
                                      {"step": self.state.step, "note": "final model, not selected on dev"})
        except OSError as error:       # a full disk: the staging dir is gone, the old best/ untouched
            raise UserInputError(f"{self.output / 'best'}: cannot write the step {self.state.step} model "
                                 f"({error.strerror or error}); {self.checkpoint_note()}") from None
        if result is None:
            self.state.best_step = self.state.step

    def save_last(self) -> None:
        """last/: model dir + optimizer moments + trainer state (step, schedule, RNG of every process)."""
        from .modeldir import save_paddle_model_dir

        rng_states = self.gather(rng_state())
        if self.is_main:
            check_finite_weights(self.raw_model, self.state.step)
            checkpoint = {"state": asdict(self.state), "scheduler": self.scheduler.state_dict(), "rng": rng_states,
                          "run": self.run_identity()}
            try:
                with atomic_directory(self.output / "last") as staging:
                    save_paddle_model_dir(self.raw_model, staging, tokenizer=self.tokenizer)
                    atomic_write_safetensors(staging / OPTIMIZER_STATE,
                                             optimizer_state_by_name(self.optimizer, self.raw_model))
                    atomic_write_json(staging / CHECKPOINT_STATE, checkpoint)
            except OSError as error:       # a full disk: the staging dir is gone, the old last/ untouched
                raise UserInputError(f"{self.output / 'last'}: cannot write the step {self.state.step} checkpoint "
                                     f"({error.strerror or error}); {self.checkpoint_note()}") from None
        self.barrier()

    def restore(self) -> int:
        """Continue from last/: weights were loaded from it already; here the rest. Returns the step."""
        last = self.output / "last"
        checkpoint = read_checkpoint(last)
        check_same_run(checkpoint["run"], self.run_identity(), last)
        state = TrainState(**checkpoint["state"])
        try:
            load_optimizer_state(self.optimizer, self.raw_model, read_optimizer_state(last, state),
                                 checkpoint["scheduler"], last)
        except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as error:   # shapes, scheduler keys
            raise damaged_checkpoint(last / OPTIMIZER_STATE, f"does not fit the model "
                                                             f"({type(error).__name__}: {error})") from None
        self.state = state
        self.restore_rng(checkpoint["rng"], last / CHECKPOINT_STATE)
        logger.info("resumed from %s at step %d of %d", last, self.state.step, self.total_steps)
        return self.state.step

    def restore_rng(self, states: list[dict], source: Path) -> None:
        if len(states) != self.world_size:
            logger.warning("resuming %d processes from a checkpoint of %d: dropout streams differ from an "
                           "uninterrupted run", self.world_size, len(states))
        try:
            restore_rng_state(states[self.rank % len(states)])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            raise damaged_checkpoint(source, f"random generator states: {type(error).__name__}: {error}") from None

    def checkpoint_note(self, resume_hint: bool = True) -> str:
        """What last/ holds now: "last/ holds step 40: --resume continues" or "no checkpoint yet"."""
        step = checkpoint_step(self.output / "last")
        if step is None:
            return "no checkpoint yet"
        return f"last/ holds step {step}" + (": --resume continues" if resume_hint else "")

    def gather(self, value: Any) -> list:
        if self.world_size == 1:
            return [value]
        gathered: list = []
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # ----- bookkeeping -----------------------------------------------------------------------

    def run_identity(self) -> dict[str, Any]:
        """What makes this run this run (checked on --resume), plus the world size (which may change)."""
        return {"task": self.task.name, "batch_size": self.config.batch_size, "seed": self.config.seed,
                "train_rows": self.num_rows, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.world_size,
                "flags": run_flags(self.config), "task_invariants": self.task.resume_invariants()}

    def write_train_config(self) -> None:
        if not self.is_main:
            return
        values = {key: value for key, value in vars(self.config).items() if not callable(value)}
        identity = {key: value for key, value in self.run_identity().items() if key != "flags"}
        values.update(identity, warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
                      per_process_batch=self.config.batch_size // self.world_size, paddle_version=paddle.__version__,
                      dev_sets={eval_set.name: eval_set.source for eval_set in self.eval_sets})
        atomic_write_json(self.output / "train_config.json", values)

    def progress_bar(self):
        from .progress import progress_bar

        command = getattr(self.config, "command", "train")
        return progress_bar(total=self.total_steps, initial=self.state.step, desc=f"{command} {self.task.name}",
                            unit="step", disable=not self.is_main)

    def summary(self, resumed_from: int | None, seconds: float) -> dict:
        best_metrics = read_json(self.output / "best" / "metrics.json", "best metrics")
        return {"task": self.task.name, "output": str(self.output), "best": str(self.output / "best"),
                "last": str(self.output / "last"), "steps": self.state.step, "total_steps": self.total_steps,
                "epochs": round(self.state.step / self.steps_per_epoch, 4), "best_step": self.state.best_step,
                "main_metric": None if not self.eval_sets else best_main_metric(self.task, self.eval_sets),
                "best_value": self.state.best_value, "best_metrics": best_metrics,
                "last_loss": self.state.last_loss, "skipped_steps": self.state.skipped_steps,
                "resumed_from_step": resumed_from, "train_rows": self.num_rows,
                "world_size": self.world_size, "seconds": round(seconds, 2)}


def best_main_metric(task: Task, eval_sets) -> str:
    return f"{eval_sets[0].name}_{task.main_metric}" if task.metric_prefix(eval_sets) else task.main_metric


# --------------------------------------------------------------------------------------------
# Setting up a run
# --------------------------------------------------------------------------------------------

def prepare_output(config, is_main: bool) -> Path:
    """Check OUTPUT can be written and holds no other run (unless --resume / --overwrite), and
    tidy an existing one after a kill. Nothing is created or deleted for good here: that waits
    for `start_output`, once the inputs have been read, so a bad input leaves OUTPUT as it was.

    An existing OUTPUT is locked first (files.lock_directory, rank 0 only) and stays locked for
    the run's life: a second run on it is refused naming the first one's pid."""
    output = check_creatable_dir(config.output)
    if is_main and output.is_dir():
        lock_directory(output, "run directory")
    earlier = [name for name in ("last", "best", "metrics.jsonl") if (output / name).exists()]
    if earlier and not (config.resume or config.overwrite):
        raise UserInputError(f"{output}: already holds a run ({', '.join(earlier)}); pass --resume to continue it, "
                             f"--overwrite to replace it, or another --output")
    if is_main and output.is_dir():
        for stale in output.glob(".*.tmp"):        # staging dirs / temp files of a write that was killed
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        recover_directory(output / "last")
        recover_directory(output / "best")
    return output


def start_output(config, output: Path, is_main: bool) -> None:
    """The inputs are good: create OUTPUT and, with --overwrite, clear the earlier run."""
    if is_main:
        lock_directory(ensure_writable_dir(output), "run directory")   # a no-op if prepare_output took it
        if config.overwrite and not config.resume:
            for name in ("last", "best", "vdl"):
                shutil.rmtree(output / name, ignore_errors=True)
    if dist.get_world_size() > 1:
        dist.barrier()   # rank 0 has created / cleared the run dir


def init_distributed(device: str) -> str:
    """Select the device and, when started by paddle.distributed.launch, join the process group."""
    device = select_device(device)
    if dist.get_world_size() > 1:
        dist.init_parallel_env()
    return device


def begin_run(config) -> tuple[Path, bool]:
    """What every training command (finetune, pretrain, distill) does first: pick the device and
    join the process group, refuse bf16 off a GPU, and check (rank 0: tidy and lock) the run dir.
    Returns (run dir, is this the main process)."""
    device = init_distributed(config.device)
    if config.amp == "bf16" and device != "gpu":
        raise UserInputError("--amp bf16 needs a GPU (on CPU, train in fp32: the default)")
    is_main = dist.get_rank() == 0
    output = prepare_output(config, is_main)
    if dist.get_world_size() > 1:
        dist.barrier()   # rank 0 has recovered / cleaned the run dir
    return output, is_main


def start_source(config, output: Path) -> Path:
    """The model dir training starts from: last/ when resuming, else --model (a hub id resolved)."""
    from .modeldir import resolve_source

    last = output / "last"
    if config.resume and last.is_dir():
        read_checkpoint(last)    # a damaged last/ is refused here, before its weights are read
        return last
    return resolve_source(config.model)


def check_start(config, source: Path, task: Task):
    """Read and check the start's config.json, weights (their label count against the task's)
    and tokenizer, and return the tokenizer. The model is built later (load_start_model, which
    logs a new head): every input is checked first."""
    from .modeldir import check_label_count, load_pretrained, load_tokenizer

    model_config, state = load_pretrained(source)     # a bad dir fails here; the weights are read again later
    check_label_count(model_config, state, task.model_class().architecture, task.config_changes()["id2label"],
                      task.name, config.model)
    check_sequence_length(config.max_seq_length, model_config, config.model)
    return load_tokenizer(source, model_config)


def load_start_model(task: Task, source: Path):
    """The model with the task's head (a new head is initialised from Paddle's seed)."""
    model = task.model_class().from_pretrained(source, **task.config_changes())
    model.config.extra["finetuning_task"] = task.name
    return model


def load_data(task: Task, config, tokenizer) -> tuple[dict[str, np.ndarray], list, str]:
    settings = TaskSettings.from_args(config, task)
    examples, source = read_train_examples(task, config.train, config.data_dir, config.data == "hub")
    rows = task.train_rows(examples, tokenizer, settings)
    eval_sets = load_eval_sets(task, dev_sources(task, config.dev, config.data_dir, config.data == "hub"),
                               tokenizer, settings)
    if not eval_sets:
        logger.warning("%s: no dev data (--dev / --data-dir): best/ will be the final model", task.name)
    dev = ", ".join(f"{eval_set.name} ({len(eval_set.rows['input_ids'])} rows)" for eval_set in eval_sets)
    logger.info("%s: %d training examples -> %d rows from %s; dev: %s", task.name, len(examples),
                len(rows["input_ids"]), source, dev or "none")
    return rows, eval_sets, source


def run_finetune(args: argparse.Namespace) -> dict | None:
    task = get_task(args.task)
    config = resolve_config(args, task)
    output, is_main = begin_run(config)
    source = start_source(config, output)
    tokenizer = check_start(config, source, task)
    rows, eval_sets, train_source = load_data(task, config, tokenizer)
    minimum_rows = dist.get_world_size() * config.gradient_accumulation_steps
    if GlobalBatchSampler.batches_per_epoch(len(rows["input_ids"]), config.batch_size, minimum_rows) == 0:
        raise UserInputError(f"{train_source}: {len(rows['input_ids'])} training rows make no batch of "
                             f"{config.batch_size} (lower --batch-size)")
    paddle.seed(config.seed)          # head initialisation: the same on every process
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = load_start_model(task, source)
    start_output(config, output, is_main)
    trainer = Trainer(task, config, model, tokenizer, rows, eval_sets, output)
    if config.batch_size % (trainer.world_size * config.gradient_accumulation_steps):
        logger.warning("--batch-size %d is not a multiple of processes x accumulation steps (%d): slices differ by "
                       "a row", config.batch_size, trainer.world_size * config.gradient_accumulation_steps)
    paddle.seed(config.seed + dist.get_rank())   # dropout: a different stream per process
    return trainer.train(resume=config.resume)
