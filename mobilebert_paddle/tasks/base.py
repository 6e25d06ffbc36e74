"""The task registry: the only place where SQuAD v1.1/v2.0, MNLI and the other GLUE tasks differ.

Each task says how to read its data (files, a GLUE/SQuAD data directory or the HF hub), how to
turn examples into model rows, which head it trains, its loss, its metrics and main metric
(what best-checkpoint selection maximises), how to write dev predictions, and the recipe
defaults that are not shared by every task. Everything else -- the training loop
(train.py) and the evaluation code path (evaluation.py) -- is the same for all tasks.

Recipe (DESIGN.md §Training, the MobileBert_paddle runs that met the paper's numbers): shared
defaults live in train.py; per task: max_seq_length 384 (SQuAD) / 128 (GLUE), cosine decay
to min_lr 1e-6 at 70% of the steps for squad1 and 5e-7 at 90% for the others, evaluation
every 240 steps (120 for squad2, every epoch for the small GLUE tasks) and, for squad2, a
null-score threshold of -1.5 (the value behind the reproduction's 76.62 / 79.75).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UserInputError
from .files import atomic_write_text

logger = logging.getLogger(__name__)

MODEL_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
QA_HEAD = "MobileBertForQuestionAnswering"
CLASSIFICATION_HEAD = "MobileBertForSequenceClassification"


@dataclass(frozen=True)
class Recipe:
    """Defaults of one task that differ between tasks (the shared ones are flags in train.py)."""

    max_seq_length: int
    min_lr: float
    decay_ratio: float
    eval_steps: int                          # 0 = at the end of every epoch
    null_score_diff_threshold: float = 0.0   # SQuAD v2 only


@dataclass
class TaskSettings:
    """How examples become model rows and logits become answers (flags of finetune/evaluate/predict)."""

    max_seq_length: int
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    @classmethod
    def from_args(cls, args: Any, task: "Task", model_config: Any = None) -> "TaskSettings":
        """Flags; a flag left at None means the value the model was fine-tuned with (stored in its
        config.json as `task_settings` by the trainer), else the task's recipe value."""
        recipe = task.recipe
        stored = (getattr(model_config, "extra", None) or {}).get("task_settings") or {}

        def pick(name, default):
            value = getattr(args, name, None)
            return value if value is not None else stored.get(name, default)

        settings = cls(max_seq_length=pick("max_seq_length", recipe.max_seq_length),
                       doc_stride=pick("doc_stride", 128), max_query_length=pick("max_query_length", 64),
                       n_best_size=pick("n_best_size", 20), max_answer_length=pick("max_answer_length", 30),
                       null_score_diff_threshold=pick("null_score_diff_threshold",
                                                      recipe.null_score_diff_threshold))
        settings.check()
        return settings

    def check(self) -> None:
        """Post-processing values that would silently give empty answers (window sizes are
        checked where the windows are cut, squad._check_window_sizes)."""
        for flag, value in (("--n-best-size", self.n_best_size), ("--max-answer-length", self.max_answer_length)):
            if value < 1:
                raise UserInputError(f"{flag} must be positive, got {value}")
        if not math.isfinite(self.null_score_diff_threshold):
            raise UserInputError(f"--null-score-diff-threshold must be a finite number, "
                                 f"got {self.null_score_diff_threshold}")


@dataclass
class EvalSet:
    """One dev (or test) file turned into model rows. `rows` holds numpy arrays (N, T) for the
    model inputs plus labels; for SQuAD it is the squad.SquadFeatures of the windows."""

    name: str                     # "dev", or "matched" / "mismatched" for MNLI
    source: str                   # the file (or "hub:<split>") it came from
    examples: Sequence[Any]
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
        from .model import HEADS

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
# SQuAD v1.1 / v2.0
# --------------------------------------------------------------------------------------------

class SquadTask(Task):
    head = QA_HEAD
    main_metric = "f1"
    label_names = ("start_positions", "end_positions")

    def __init__(self, name: str, version_2: bool, recipe: Recipe):
        self.name, self.version_2, self.recipe = name, version_2, recipe
        suffix = "v2.0" if version_2 else "v1.1"
        self.train_file, self.dev_file = f"train-{suffix}.json", f"dev-{suffix}.json"
        self.hub_path = "rajpurkar/squad_v2" if version_2 else "rajpurkar/squad"

    def config_changes(self) -> dict[str, Any]:
        return {"id2label": {0: "LABEL_0", 1: "LABEL_1"}}  # qa_outputs: start and end

    def default_files(self, data_dir: Path) -> tuple[Path | None, list[Path]]:
        train, dev = data_dir / self.train_file, data_dir / self.dev_file
        return (train if train.is_file() else None), ([dev] if dev.is_file() else [])

    def read(self, path: Path, training: bool):
        from .squad import read_squad

        return read_squad(path, training=training)

    def hub_examples(self, split: str):
        from .squad import SquadExample

        rows = load_hub_split(self.hub_path, None, split)
        return [SquadExample(str(row["id"]), row["question"], row["context"],
                             [{"text": text, "answer_start": int(start)}
                              for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"])],
                             is_impossible=not row["answers"]["text"]) for row in rows]

    def features(self, examples, tokenizer, settings: TaskSettings, training: bool):
        from .squad import build_features

        return build_features(examples, tokenizer, max_seq_length=settings.max_seq_length,
                              doc_stride=settings.doc_stride, max_query_length=settings.max_query_length,
                              training=training)

    def train_rows(self, examples, tokenizer, settings: TaskSettings) -> dict[str, np.ndarray]:
        if not self.version_2:
            unanswerable = sum(example.is_impossible or not example.answers for example in examples)
            if unanswerable == len(examples):
                raise UserInputError(f"{getattr(examples, 'path', 'training data')}: no question has an answer; "
                                     f"{self.name} trains on answerable questions (use squad2 for SQuAD v2.0 data)")
        windows = self.features(examples, tokenizer, settings, training=True)
        return {**compact_model_inputs(windows.model_inputs()),
                "start_positions": windows["start_positions"], "end_positions": windows["end_positions"]}

    def eval_set(self, name, source, examples, tokenizer, settings) -> EvalSet:
        return EvalSet(name, source, examples, self.features(examples, tokenizer, settings, training=False))

    def per_example_loss(self, outputs, labels: dict):
        import paddle.nn.functional as F

        start_logits, end_logits = outputs
        start = F.cross_entropy(start_logits.astype("float32"), labels["start_positions"], reduction="none")
        end = F.cross_entropy(end_logits.astype("float32"), labels["end_positions"], reduction="none")
        return ((start + end) / 2).reshape([-1])

    def score(self, eval_sets, outputs, settings) -> EvalResult:
        from .metrics import squad_evaluate
        from .squad import postprocess_predictions

        metrics: dict[str, float] = {}
        predictions: dict[str, Any] = {}
        prefix = self.metric_prefix(eval_sets)
        threshold = settings.null_score_diff_threshold
        for eval_set, (start_logits, end_logits) in zip(eval_sets, outputs):
            answers, nbest, null_odds = postprocess_predictions(
                eval_set.examples, eval_set.rows, start_logits, end_logits, n_best_size=settings.n_best_size,
                max_answer_length=settings.max_answer_length, null_score_diff_threshold=threshold,
                version_2_with_negative=self.version_2)
            predictions[eval_set.name] = (answers, nbest, null_odds)
            if not any(example.answers or example.is_impossible for example in eval_set.examples):
                continue  # unlabelled (test) data: predictions only
            # The null-odds threshold that made the predictions is also the one scored, so the
            # official script's na-prob rule and our "" predictions agree; best_* sweep it.
            scores = squad_evaluate(gold_dataset(eval_set.examples), answers,
                                    na_probs=null_odds if self.version_2 else None,
                                    na_prob_thresh=threshold if self.version_2 else 1.0)
            metrics.update({(f"{eval_set.name}_{key}" if prefix else key): value for key, value in scores.items()})
        if self.version_2:
            metrics["null_score_diff_threshold"] = threshold   # the threshold exact / f1 are at
        main = f"{eval_sets[0].name}_{self.main_metric}" if prefix else self.main_metric
        return EvalResult(metrics, main, predictions)

    def write_predictions(self, result: EvalResult, directory: Path) -> list[Path]:
        from .squad import write_prediction_files

        written = []
        for set_name, (answers, nbest, null_odds) in result.predictions.items():
            target = directory if len(result.predictions) == 1 else directory / set_name
            written.extend(write_prediction_files(target, answers, nbest, null_odds).values())
        return written


def gold_dataset(examples) -> dict:
    """The official JSON layout rebuilt from examples (one paragraph each): what the metric reads."""
    paragraphs = [{"context": example.context,
                   "qas": [{"id": example.id, "question": example.question, "answers": example.answers,
                            "is_impossible": example.is_impossible}]} for example in examples]
    return {"data": [{"title": "eval", "paragraphs": paragraphs}]}


# --------------------------------------------------------------------------------------------
# GLUE (MNLI and the rest): sentence (pair) classification, STS-B regression
# --------------------------------------------------------------------------------------------

# HF hub (nyu-mll/glue) column names of the two texts.
HUB_TEXT_COLUMNS = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
                    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
                    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
                    "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2")}


class GlueTaskAdapter(Task):
    """A GLUE task of glue.GLUE_TASKS with its recipe: a classifier (or regressor) over [CLS]."""

    head = CLASSIFICATION_HEAD
    label_names = ("labels",)

    def __init__(self, glue_task, recipe: Recipe):
        self.glue, self.name, self.recipe = glue_task, glue_task.name, recipe
        self.main_metric = glue_task.main_metric
        if self.name == "mnli":
            self.hub_dev_splits = ("validation_matched", "validation_mismatched")

    def config_changes(self) -> dict[str, Any]:
        return {"id2label": self.glue.id2label}

    def default_files(self, data_dir: Path) -> tuple[Path | None, list[Path]]:
        for folder in (data_dir, data_dir / self.glue.directory):   # GLUE download: glue_data/MNLI/...
            train = folder / self.glue.train_file
            dev = [folder / name for name in self.glue.dev_files if (folder / name).is_file()]
            if train.is_file() or dev:
                return (train if train.is_file() else None), dev
        return None, []

    def read(self, path: Path, training: bool):
        from .glue import read_glue

        examples = read_glue(self.glue, path)
        if training and examples[0].label is None:
            raise UserInputError(f"{path}: a test file (no labels) cannot be used for training")
        return examples

    def hub_examples(self, split: str):
        from .glue import GlueExample

        rows = load_hub_split("nyu-mll/glue", self.name, split)
        first, second = HUB_TEXT_COLUMNS[self.name]
        names = getattr(rows.features["label"], "names", None)
        return [GlueExample(f"{split}-{index}", row[first], row[second] if second else None,
                            self.hub_label(row["label"], names)) for index, row in enumerate(rows)]

    def hub_label(self, value, names):
        """Hub labels are ids (-1 in test splits); ours are the TSV strings of HF's processors."""
        if self.glue.is_regression:
            return float(value)
        if value < 0:
            return None
        name = names[value] if names else str(value)
        return name if name in self.glue.labels else str(value)

    def set_name(self, path, index: int) -> str:
        if self.name != "mnli":
            return "dev"
        stem = Path(str(path)).name.lower()
        if "mismatched" in stem:
            return "mismatched"
        if "matched" in stem:
            return "matched"
        return ("matched", "mismatched")[index] if index < 2 else f"dev{index}"

    def metric_prefix(self, eval_sets) -> bool:
        return len(eval_sets) > 1 or self.name == "mnli"

    def train_rows(self, examples, tokenizer, settings) -> dict[str, np.ndarray]:
        rows = self.features(examples, tokenizer, settings)
        return {**compact_model_inputs(rows), "labels": rows["labels"]}

    def features(self, examples, tokenizer, settings) -> dict[str, np.ndarray]:
        from .glue import build_glue_features

        return build_glue_features(examples, tokenizer, max_seq_length=settings.max_seq_length,
                                   label_list=self.glue.labels)

    def eval_set(self, name, source, examples, tokenizer, settings) -> EvalSet:
        return EvalSet(name, source, examples, self.features(examples, tokenizer, settings))

    def per_example_loss(self, outputs, labels: dict):
        import paddle.nn.functional as F

        logits = outputs.astype("float32")                                  # (B, C)
        if self.glue.is_regression:
            return F.mse_loss(logits.reshape([-1]), labels["labels"].astype("float32"), reduction="none")
        return F.cross_entropy(logits, labels["labels"], reduction="none").reshape([-1])

    def predictions_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> (N,) label ids, or scores for STS-B."""
        return logits[:, 0] if self.glue.is_regression else logits.argmax(axis=-1)

    def score(self, eval_sets, outputs, settings) -> EvalResult:
        from .metrics import glue_metrics

        metrics: dict[str, float] = {}
        predictions: dict[str, Any] = {}
        prefix = self.metric_prefix(eval_sets)
        for eval_set, (logits,) in zip(eval_sets, outputs):
            predicted = self.predictions_from_logits(logits)
            predictions[eval_set.name] = predicted
            if "labels" in eval_set.rows:
                scores = glue_metrics(self.name, predicted, eval_set.rows["labels"])
                metrics.update({(f"{eval_set.name}_{key}" if prefix else key): value for key, value in scores.items()})
        main = f"{eval_sets[0].name}_{self.main_metric}" if prefix else self.main_metric
        return EvalResult(metrics, main, predictions)

    def write_predictions(self, result: EvalResult, directory: Path) -> list[Path]:
        """`<set>_predictions.tsv` in the GLUE submission layout: index, prediction (label name or score)."""
        written = []
        for set_name, predicted in result.predictions.items():
            values = ([f"{score:.6f}" for score in predicted] if self.glue.is_regression
                      else [self.glue.labels[int(index)] for index in predicted])
            lines = ["index\tprediction"] + [f"{index}\t{value}" for index, value in enumerate(values)]
            path = Path(directory) / f"{set_name}_predictions.tsv"
            atomic_write_text(path, "\n".join(lines) + "\n")
            written.append(path)
        return written

    def align_outputs(self, outputs, id2label):
        """Reorder a model's output columns into the task's label order when its id2label names
        them (case-insensitively, e.g. an HF checkpoint's ENTAILMENT/NEUTRAL/CONTRADICTION)."""
        (logits,) = outputs
        if self.glue.is_regression or len(id2label) != len(self.glue.labels):
            return outputs
        column_of = {str(label).lower(): index for index, label in id2label.items()}
        wanted = [column_of.get(label.lower()) for label in self.glue.labels]
        return outputs if None in wanted else (logits[:, wanted],)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

def _build_registry() -> dict[str, Task]:
    from .glue import GLUE_TASKS

    squad1 = Recipe(max_seq_length=384, min_lr=1e-6, decay_ratio=0.7, eval_steps=240)
    squad2 = Recipe(max_seq_length=384, min_lr=5e-7, decay_ratio=0.9, eval_steps=120, null_score_diff_threshold=-1.5)
    big_glue = Recipe(max_seq_length=128, min_lr=5e-7, decay_ratio=0.9, eval_steps=240)   # mnli, qqp, qnli, sst2
    small_glue = Recipe(max_seq_length=128, min_lr=5e-7, decay_ratio=0.9, eval_steps=0)   # evaluated every epoch
    tasks: dict[str, Task] = {"squad1": SquadTask("squad1", False, squad1), "squad2": SquadTask("squad2", True, squad2)}
    for name in ("mnli", "cola", "sst2", "mrpc", "stsb", "qqp", "qnli", "rte", "wnli"):
        recipe = big_glue if name in ("mnli", "qqp", "qnli", "sst2") else small_glue
        tasks[name] = GlueTaskAdapter(GLUE_TASKS[name], recipe)
    return tasks


TASKS: dict[str, Task] = _build_registry()
FINETUNE_TASK_NAMES = tuple(TASKS)
# Tasks in their own modules, which subclass Task (so they import this one): built on first use.
MODULE_TASKS = {"pretraining": ("mobilebert_paddle.pretraining", "PretrainingTask")}
TASK_NAMES = FINETUNE_TASK_NAMES + tuple(MODULE_TASKS)     # `evaluate` takes every task


def get_task(name: str) -> Task:
    if name in MODULE_TASKS and name not in TASKS:
        import importlib

        module, class_name = MODULE_TASKS[name]
        TASKS[name] = getattr(importlib.import_module(module), class_name)()
    if name not in TASKS:
        raise UserInputError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")
    return TASKS[name]


def recipe_table() -> str:
    """One line per task, for --help."""
    return "; ".join(f"{name}: max_seq_length {task.recipe.max_seq_length}, min_lr {task.recipe.min_lr:g}, "
                     f"decay_ratio {task.recipe.decay_ratio:g}, eval_steps {task.recipe.eval_steps or 'per epoch'}"
                     + (f", null_score_diff_threshold {task.recipe.null_score_diff_threshold:g}"
                        if task.recipe.null_score_diff_threshold else "")
                     for name, task in TASKS.items() if name in FINETUNE_TASK_NAMES)


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
