"""The one training loop, for every task (fine-tuning, pretraining's MLM + NSP, distillation).

The loop knows nothing about SQuAD, GLUE or masked LM: the task gives the row count, builds
each batch from (row indices, step) when it is drawn, computes a per-row loss (and parts to
log), may set per-parameter learning-rate multipliers per step, and scores dev data (the
hooks are listed in tasks/base.py's Task). What the loop adds is what a run needs to be trusted:

* the attention mask passed at every step (the reproduction we replace trained without it);
* `--batch-size` is the *global* batch of one optimizer step. Each epoch's order depends on
  the seed and the epoch only, global batch k is the same rows for any number of processes,
  and each process takes an equal slice of it (then splits that for gradient accumulation);
  the loss is sum / rows-in-the-global-batch, so 1 process and N processes (DataParallel
  averages gradients) compute the same update;
* exact resume (checkpoint.py); checkpoints are written atomically (core/files.atomic_directory),
  so a kill at any moment leaves the previous one intact;
* a guard: a non-finite loss or gradient norm stops the run naming the step (or, with
  --skip-nonfinite, skips that update); a model with non-finite weights is never saved;
* evaluation through inference/evaluation.evaluate_task (the code path of `mobilebert evaluate`),
  best-checkpoint selection on the task's main metric, metrics.jsonl + VisualDL scalars,
  a progress bar on stderr, a JSON summary at the end.

Data parallel: `python -m paddle.distributed.launch --devices 0,1,2,3 $(which mobilebert) finetune ...`
(GPUs, NCCL) or `--nproc_per_node 2` on CPU (gloo). Only rank 0 writes files.
"""


from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.io import DistributedBatchSampler

from ..core.errors import Interrupted, UserInputError
from ..core.files import (
    atomic_directory,
    atomic_write_json,
    atomic_write_safetensors,
    atomic_write_text,
    read_json,
    release_directory,
)
from ..core.logs import inputs_accepted
from ..core.progress import progress_bar
from ..inference.evaluation import eager_predictor, evaluate_task, write_evaluation
from ..model.modeldir import save_paddle_model_dir
from ..tasks.base import Task
from .checkpoint import (
    CHECKPOINT_STATE,
    OPTIMIZER_STATE,
    NonFiniteLossError,
    TrainState,
    check_finite_weights,
    check_same_run,
    checkpoint_step,
    damaged_checkpoint,
    load_optimizer_state,
    optimizer_state_by_name,
    read_checkpoint,
    read_optimizer_state,
    restore_rng_state,
    rng_state,
    run_flags,
)
from .optim import (
    WarmupDecaySchedule,
    build_optimizer,
    clip_gradients,
    set_learning_rate_multipliers,
)

logger = logging.getLogger(__name__)




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


# --------------------------------------------------------------------------------------------
# metrics.jsonl and VisualDL
# --------------------------------------------------------------------------------------------

def planned_steps(config, num_rows: int, world_size: int | None = None) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warmup steps) of a run on `num_rows` rows: what the Trainer
    uses, also computed before it exists so that the run start's checks come before any work."""
    world_size = dist.get_world_size() if world_size is None else world_size
    steps_per_epoch = GlobalBatchSampler.batches_per_epoch(num_rows, config.batch_size,
                                                           world_size * config.gradient_accumulation_steps)
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    warmup_steps = (config.warmup_steps if config.warmup_steps is not None
                    else int(config.warmup_ratio * total_steps))
    return steps_per_epoch, total_steps, warmup_steps


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
        self.steps_per_epoch, self.total_steps, self.warmup_steps = planned_steps(config, self.num_rows,
                                                                                  self.world_size)
        self.decay_steps = math.ceil(config.decay_ratio * self.total_steps)
        self.scheduler = (task.learning_rate_schedule(config, self.total_steps)
                          or WarmupDecaySchedule(config.learning_rate, config.min_lr, self.warmup_steps,
                                                 self.decay_steps, config.schedule))
        self.optimizer = build_optimizer(model, self.scheduler, config)
        self.state = TrainState()
        self.log = RunLog(output, self.is_main)
        self.last_grad_norm = math.nan
        self.last_lr = self.scheduler.last_lr
        self.applied_multipliers: dict | None = None        # the learning-rate multipliers in force
        self.named_parameters = list(model.named_parameters())

    # ----- the run -------------------------------------------------------------------------

    def train(self, resume: bool) -> dict | None:
        """Run to the end (or continue last/); an interrupt says where the run stopped. The run dir's
        lock (taken by prepare_output / start_output) is released however it ends."""
        try:
            return self.run(resume)
        except (KeyboardInterrupt, OSError) as error:   # SIGINT, SIGTERM as the CLI turns it into one, or
            interrupt = Interrupted.behind(error)        # either as Paddle's C++ re-raised it
            if interrupt is None:
                raise
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
            # A new optimizer, as a new run has: its moments are made when its first step needs them.
            # (Zeroing the old one's in place would miss the moments a resumed run's set_state_dict
            # still holds back until its first step, and bring stage 1's back.)
            self.optimizer = build_optimizer(self.raw_model, self.scheduler, self.config)
        multipliers = self.task.learning_rate_multipliers(self.raw_model, step)
        if multipliers != self.applied_multipliers:        # a loop over every parameter: only on a change
            set_learning_rate_multipliers(self.raw_model, multipliers, self.named_parameters)
            self.applied_multipliers = multipliers
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
        return clip_gradients(self.raw_model.parameters(), self.config.max_grad_norm)

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
        if state.step > self.total_steps:
            raise damaged_checkpoint(last / CHECKPOINT_STATE, f"step {state.step} is beyond the run's "
                                                              f"{self.total_steps} steps")
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
