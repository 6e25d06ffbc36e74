"""The start of every training run (finetune, pretrain, distill), written once: the device and the
process group, the bf16/fp16 checks, the run directory made or resumed and locked, the seed.
"""


from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist

from ..core import dropout_masks
from ..core.device import select_device
from ..core.errors import UserInputError
from ..core.files import (
    check_creatable_dir,
    ensure_writable_dir,
    lock_directory,
    recover_directory,
)
from .trainer import GlobalBatchSampler, planned_steps

FP16_REFUSAL = ("--amp fp16 is refused: MobileBERT's activations reach ~1e7, far beyond fp16's largest value "
                "(65504), so they overflow to inf; use --amp bf16 (fp32's range) on a GPU, or the fp32 default")


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


def check_optimisation_flags(config) -> None:
    """The checks across flags every training command makes before any work."""
    if config.amp == "fp16":
        raise UserInputError(FP16_REFUSAL)
    if config.min_lr > config.learning_rate:
        raise UserInputError(f"--min-lr {config.min_lr} is above the peak --learning-rate {config.learning_rate}")


def check_batch_fits(num_rows: int, config, source) -> None:
    """At least one global batch of --batch-size rows, each process's share split --gradient-accumulation-steps ways."""
    minimum_rows = dist.get_world_size() * config.gradient_accumulation_steps
    if GlobalBatchSampler.batches_per_epoch(num_rows, config.batch_size, minimum_rows) == 0:
        raise UserInputError(f"{source}: {num_rows} training rows make no batch of {config.batch_size} "
                             f"(lower --batch-size)")


def check_schedule(config, num_rows: int) -> None:
    """A warmup as long as the run never reaches the peak learning rate: refused. A warmup ratio is
    a fraction of the steps; only an explicit --warmup-steps can be too long."""
    _, total_steps, warmup_steps = planned_steps(config, num_rows)
    if config.warmup_steps is not None and 0 < total_steps <= warmup_steps:
        raise UserInputError(f"--warmup-steps {warmup_steps} is not fewer than the run's {total_steps} steps: the "
                             f"learning rate would never reach its peak; lower it, or leave it out (default: a "
                             f"fraction of the steps, --warmup-ratio)")


def seed_initialisation(seed: int) -> None:
    """Before a model is built: the same initial weights on every process."""
    paddle.seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_dropout(seed: int) -> None:
    """Before training: a different dropout stream per process (Paddle's generator, and the
    NumPy one that draws dropout masks on CPU)."""
    paddle.seed(seed + dist.get_rank())
    dropout_masks.seed(seed + dist.get_rank())
