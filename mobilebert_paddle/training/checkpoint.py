"""What a checkpoint (last/) holds beside the model, and its checks on resume: the optimizer moments
by parameter name, the scheduler, every process's RNG state, the step (which fixes the data
position) and the run's flags, which a resumed run must repeat (RESUMABLE_FLAGS may change).
"""


from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from ..core import dropout_masks
from ..core.errors import UserInputError
from ..core.files import read_json

CHECKPOINT_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
# A resumed run must be the run it continues: every flag (the recipe, the windows, the seed...) and
# what follows from the data must be as before, except these, which change how it is watched, where
# it runs or where its inputs are read from (the data must still give the same rows).
RESUMABLE_FLAGS = ("eval_steps", "save_steps", "logging_steps", "eval_batch_size", "device", "skip_nonfinite",
                   "resume", "overwrite", "output", "model", "train", "dev", "data_dir", "data", "command", "task")
RESUMABLE_HELP = "--eval-steps, --save-steps, --logging-steps, --eval-batch-size, --device, --skip-nonfinite, the paths"
RESTART_ADVICE = "start afresh with --overwrite, or put back a good last/"


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
        # "_moment1_1" of a process's second optimizer (distillation's restart) is what the one
        # optimizer of a resumed process calls "_moment1_0": saved under that name.
        state[path_of[parts[0]] + re.sub(r"_\d+$", "_0", parts[1])] = np.ascontiguousarray(value.numpy())
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
            "paddle": [list(state.__getstate__()) for state in paddle.get_rng_state()],
            "dropout_masks": dropout_masks.state()}


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
    if "dropout_masks" in saved:          # absent from checkpoints of versions that drew masks with Paddle
        dropout_masks.set_state(saved["dropout_masks"])


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
    for key, value in (identity.get("task_invariants") or {}).items():
        if key in saved_invariants and saved_invariants[key] != json.loads(json.dumps(value)):
            changes.append(changed_invariant(key, saved_invariants[key], value, identity["flags"]))
    if not changes:    # the step counts follow from the flags and the data: named only if nothing else explains them
        changes = [f"{key} was {saved.get(key)}, now {identity[key]}" for key in ("total_steps", "steps_per_epoch")
                   if saved.get(key) != identity[key]]
    if changes:
        raise UserInputError(f"{last}: cannot resume with a changed run: {'; '.join(changes)} (on resume only "
                             f"{RESUMABLE_HELP} may change; or start afresh with --overwrite)")


def changed_invariant(key: str, saved: Any, value: Any, flags: dict) -> str:
    """One change of what a flag points to, by field when it is a JSON object (a config file
    edited in place: "--config model.json changed since the run began: hidden_dropout_prob was 0.0, now 0.1")."""
    label = f"--{key.replace('_', '-')} {flags[key]}" if flags.get(key) is not None else key
    value = json.loads(json.dumps(value))
    if isinstance(saved, dict) and isinstance(value, dict):
        fields = [name for name in sorted(set(saved) | set(value)) if saved.get(name) != value.get(name)]
        return f"{label} changed since the run began: " + ", ".join(
            f"{name} was {json.dumps(saved.get(name))}, now {json.dumps(value.get(name))}"[:200] for name in fields[:3])
    return f"{key} was {saved}, now {value}"


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


class NonFiniteLossError(UserInputError):
    """Training produced a non-finite loss or gradient: one line naming the step, exit 2."""


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
