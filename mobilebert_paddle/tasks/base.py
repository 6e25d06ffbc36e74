"""The Task seam: what fine-tuning, pretraining and distillation tell the one training loop and the
one evaluation path (how to read data, build rows, compute a per-row loss, score dev sets, write
predictions), plus the dev-set containers and the readers of the data a command was given.

The tasks themselves: tasks/registry.py (SQuAD, GLUE), pretraining/task.py, pretraining/distillation.py.
"""


from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..model.config import MODEL_INPUT_NAMES
from .settings import Recipe, TaskSettings

logger = logging.getLogger(__name__)

QA_HEAD = "MobileBertForQuestionAnswering"
CLASSIFICATION_HEAD = "MobileBertForSequenceClassification"


@dataclass
class EvalSet:
    """One dev (or test) file turned into model rows. `rows` holds numpy arrays (N, T) for the
    model inputs plus labels; for SQuAD it is the squad.SquadFeatures of the windows."""

    name: str                     # "dev", or "matched" / "mismatched" for MNLI
    source: str                   # the file (or "hub:<split>") it came from
    examples: Sequence[Any]       # what was read (pretraining: the PretrainingData itself)
    rows: Any
    # Arrays run_predictor batches: the model inputs, plus what Task.batch_outputs reads
    # (pretraining: masked positions and labels). The predictor passes on what the model takes.
    input_names: tuple[str, ...] = MODEL_INPUT_NAMES

    def model_inputs(self) -> dict[str, np.ndarray]:
        return {name: self.rows[name] for name in self.input_names}


@dataclass
class EvalResult:
    """Metrics of all eval sets (flat; keys prefixed "<set>_" when sets need telling apart)
    and, per set, what `Task.write_predictions` writes."""

    metrics: dict[str, float]
    main_metric: str                                   # the key best-checkpoint selection reads
    predictions: dict[str, Any] = field(default_factory=dict)

    @property
    def main_value(self) -> float:
        return float(self.metrics.get(self.main_metric, math.nan))


# --------------------------------------------------------------------------------------------
# The task interface
# --------------------------------------------------------------------------------------------

class Task:
    """What the trainer and the evaluator ask of a task.

    Training hooks (train.Trainer calls only these; the defaults serve SQuAD and GLUE, whose
    rows are an in-memory dict of numpy arrays):
      num_rows(data)                              rows the sampler draws from
      make_batch(data, row_indices, step)         -> (inputs, labels): dicts of Paddle tensors for
                                                  those rows, built when the batch is drawn (`step`,
                                                  the optimizer step from 0, keys per-step randomness)
      compute_loss(model, inputs, labels, step)   -> (per-row loss (b,), parts {name: (b,) tensor});
                                                  may run more than the model (a frozen teacher)
      learning_rate_multipliers(model, step)      -> {parameter path: multiplier} (others: 1)
      learning_rate_schedule(config, total_steps) -> an LRScheduler, or None for the Trainer's own
      restarts_optimizer(step)                    -> True: fresh optimizer moments from this step on
      log_values(step)                            -> extra values for the train log line (of update `step`)
      resume_invariants()                         -> {name: value} a resumed run must have unchanged
      training_module(model)                      -> the layer the Trainer runs (and DataParallel wraps):
                                                  the model, or a view of it whose forward returns only
                                                  what the loss reads (DataParallel's unused-parameter
                                                  search starts from a forward's outputs)
    Loss and parts are summed over the global batch and divided by its row count; parts are
    logged beside the loss. A task whose data or settings belong to one run is built per run.
    """

    name: str
    head: str            # model class name in model.HEADS
    main_metric: str     # metric key (before any set prefix) that best-checkpoint selection maximises
    recipe: Recipe
    label_names: tuple[str, ...]   # row arrays the loss reads
    hub_dev_splits: tuple[str, ...] = ("validation",)
    eager_only: bool = False       # evaluation needs the Paddle model (no exported backend)
    # Data parallel: True when a step's loss may leave some parameters without a gradient
    # (distillation's per-layer phases); Paddle's DataParallel must then look for them.
    find_unused_parameters: bool = False

    # ----- training hooks (see the class docstring) ------------------------------------------

    def num_rows(self, data) -> int:
        return len(data["input_ids"])

    def make_batch(self, data, row_indices: np.ndarray, step: int) -> tuple[dict, dict]:
        import paddle

        inputs = {name: paddle.to_tensor(data[name][row_indices].astype(np.int64)) for name in MODEL_INPUT_NAMES}
        labels = {name: paddle.to_tensor(data[name][row_indices]) for name in self.label_names}
        return inputs, labels

    def compute_loss(self, model, inputs: dict, labels: dict, step: int) -> tuple[Any, dict]:
        return self.per_example_loss(model(**inputs), labels), {}

    def learning_rate_multipliers(self, model, step: int) -> dict[str, float]:
        return {}

    def learning_rate_schedule(self, config: Any, total_steps: int):
        return None

    def restarts_optimizer(self, step: int) -> bool:
        return False

    def log_values(self, step: int) -> dict[str, Any]:
        return {}

    def resume_invariants(self) -> dict[str, Any]:
        return {}

    def training_module(self, model):
        return model

    def settings_from_args(self, args: Any, model_config: Any = None) -> Any:
        """The task's settings from the flags (and the model's stored ones, for evaluate)."""
        return TaskSettings.from_args(args, self, model_config)

    def check_model_fits(self, eval_sets: Sequence["EvalSet"], config: Any, tokenizer: Any, model_name: str) -> None:
        """`evaluate`: refuse, before any work, data the model cannot score (a UserInputError).
        SQuAD and GLUE windows are made with the model's own tokenizer: nothing to check."""

    def remember_settings(self, model, settings: Any) -> None:
        """Store the training settings in the model's config.json, so that evaluate, predict and
        export use them by default."""
        from dataclasses import asdict

        model.config.extra["task_settings"] = asdict(settings)

    def batch_outputs(self, batch: dict[str, np.ndarray], outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """What evaluation keeps of one batch's outputs (all of them by default)."""
        return outputs

    # ----- data and scoring --------------------------------------------------------------------

    def model_class(self):
        from ..model.network import HEADS

        return HEADS[self.head]

    def config_changes(self) -> dict[str, Any]:
        """Config values the head needs (id2label), passed to from_pretrained."""
        raise NotImplementedError

    def default_files(self, data_dir: Path) -> tuple[Path | None, list[Path]]:
        """(train file, dev files) found in a data directory, in the layout the data is distributed."""
        raise NotImplementedError

    def read(self, path: Path, training: bool) -> Sequence[Any]:
        raise NotImplementedError

    def hub_examples(self, split: str) -> Sequence[Any]:
        raise NotImplementedError

    def train_rows(self, examples: Sequence[Any], tokenizer, settings: TaskSettings) -> dict[str, np.ndarray]:
        """Model inputs (compact dtypes, cast per batch) and labels, one row per model input."""
        raise NotImplementedError

    def eval_set(self, name: str, source: str, examples: Sequence[Any], tokenizer,
                 settings: TaskSettings) -> EvalSet:
        raise NotImplementedError

    def per_example_loss(self, outputs, labels: dict):
        """(B,) float32 loss of each row; `outputs` is the head's forward output."""
        raise NotImplementedError

    def score(self, eval_sets: Sequence[EvalSet], outputs: Sequence[tuple[np.ndarray, ...]],
              settings: TaskSettings) -> EvalResult:
        raise NotImplementedError

    def write_predictions(self, result: EvalResult, directory: Path) -> list[Path]:
        raise NotImplementedError

    def align_outputs(self, outputs: tuple[np.ndarray, ...], id2label: dict[int, str]) -> tuple[np.ndarray, ...]:
        """Outputs of a model whose labels may be in another order, in this task's order."""
        return outputs

    def set_name(self, path: str | os.PathLike, index: int) -> str:
        return "dev"

    def metric_prefix(self, eval_sets: Sequence[EvalSet]) -> bool:
        """Whether metric keys get a "<set>_" prefix (several sets, or MNLI's named ones)."""
        return len(eval_sets) > 1


def compact(array: np.ndarray, dtype) -> np.ndarray:
    """Store token ids / masks in small dtypes: full SQuAD train is ~88k windows x 384 tokens."""
    return np.ascontiguousarray(array, dtype=dtype)


def compact_model_inputs(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"input_ids": compact(rows["input_ids"], np.int32),
            "token_type_ids": compact(rows["token_type_ids"], np.int8),
            "attention_mask": compact(rows["attention_mask"], np.int8)}


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise UserInputError("--data hub needs the optional `datasets` package: pip install 'mobilebert-paddle[datasets]' "
                             "(or pass data files)") from None
    return datasets


def load_hub_split(path: str, name: str | None, split: str):
    datasets = import_datasets()
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as error:  # offline, renamed dataset, ...: one line for the user
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserInputError(f"hub dataset {path}{'/' + name if name else ''} split {split}: cannot load ({reason}); "
                             "offline? pass the data files instead") from None


# --------------------------------------------------------------------------------------------
# Reading the data a command was given
# --------------------------------------------------------------------------------------------

def read_train_examples(task: Task, train: str | None, data_dir: str | None, hub: bool):
    """Training examples from --train, --data-dir or --data hub (in that order)."""
    if hub:
        return task.hub_examples("train"), "hub:train"
    path = Path(train) if train else (task.default_files(Path(data_dir))[0] if data_dir else None)
    if path is None:
        where = f" (none found in {data_dir})" if data_dir else ""
        raise UserInputError(f"{task.name}: no training data{where}; pass --train FILE, --data-dir DIR or --data hub")
    return task.read(path, training=True), str(path)


def dev_sources(task: Task, dev: Sequence[str] | None, data_dir: str | None, hub: bool) -> list[str]:
    if hub:
        return [f"hub:{split}" for split in task.hub_dev_splits]
    if dev:
        return list(dev)
    return [str(path) for path in task.default_files(Path(data_dir))[1]] if data_dir else []


def load_eval_sets(task: Task, sources: Sequence[str], tokenizer, settings: TaskSettings) -> list[EvalSet]:
    """Read and featurise each dev source (a file, or "hub:<split>")."""
    eval_sets = []
    for index, source in enumerate(sources):
        if source.startswith("hub:"):
            split = source[len("hub:"):]
            examples = task.hub_examples(split)
            name = task.set_name(split.replace("validation_", ""), index)
        else:
            examples = task.read(Path(source), training=False)
            name = task.set_name(source, index)
        if any(existing.name == name for existing in eval_sets):
            name = f"{name}{index}"
        eval_sets.append(task.eval_set(name, source, examples, tokenizer, settings))
    return eval_sets
