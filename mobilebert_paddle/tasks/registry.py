"""The registry of fine-tuning tasks: the only place where SQuAD v1.1/v2.0, MNLI and the other GLUE
tasks differ. SquadTask and GlueTask adapt squad.py and glue.py to the Task seam of base.py.

Recipe (the MobileBert_paddle runs that met the paper's numbers; README, Fine-tuning): shared
defaults live in training/finetune.py; per task: max_seq_length 384 (SQuAD) / 128 (GLUE), cosine
decay to min_lr 1e-6 at 70% of the steps for squad1 and 5e-7 at 90% for the others, evaluation
every 240 steps (120 for squad2, every epoch for the small GLUE tasks) and, for squad2, a
null-score threshold of -1.5 (the value behind the reproduction's 76.62 / 79.75).
"""


from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserInputError
from ..core.files import atomic_write_text
from .base import (
    CLASSIFICATION_HEAD,
    QA_HEAD,
    EvalResult,
    EvalSet,
    Task,
    compact_model_inputs,
    load_hub_split,
)
from .glue import GLUE_TASKS, GlueExample, build_glue_features, read_glue
from .metrics import glue_metrics, squad_evaluate
from .settings import Recipe, TaskSettings

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


class GlueTask(Task):
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
        examples = read_glue(self.glue, path)
        if training and examples[0].label is None:
            raise UserInputError(f"{path}: a test file (no labels) cannot be used for training")
        return examples

    def hub_examples(self, split: str):
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
    squad1 = Recipe(max_seq_length=384, min_lr=1e-6, decay_ratio=0.7, eval_steps=240)
    squad2 = Recipe(max_seq_length=384, min_lr=5e-7, decay_ratio=0.9, eval_steps=120, null_score_diff_threshold=-1.5)
    big_glue = Recipe(max_seq_length=128, min_lr=5e-7, decay_ratio=0.9, eval_steps=240)   # mnli, qqp, qnli, sst2
    small_glue = Recipe(max_seq_length=128, min_lr=5e-7, decay_ratio=0.9, eval_steps=0)   # evaluated every epoch
    tasks: dict[str, Task] = {"squad1": SquadTask("squad1", False, squad1), "squad2": SquadTask("squad2", True, squad2)}
    for name in ("mnli", "cola", "sst2", "mrpc", "stsb", "qqp", "qnli", "rte", "wnli"):
        recipe = big_glue if name in ("mnli", "qqp", "qnli", "sst2") else small_glue
        tasks[name] = GlueTask(GLUE_TASKS[name], recipe)
    return tasks


TASKS: dict[str, Task] = _build_registry()
FINETUNE_TASK_NAMES = tuple(TASKS)
def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserInputError(f"unknown task {name!r} (known: {', '.join(FINETUNE_TASK_NAMES)})")
    return TASKS[name]


def recipe_table() -> str:
    """One line per task, for --help."""
    return "; ".join(f"{name}: max_seq_length {task.recipe.max_seq_length}, min_lr {task.recipe.min_lr:g}, "
                     f"decay_ratio {task.recipe.decay_ratio:g}, eval_steps {task.recipe.eval_steps or 'per epoch'}"
                     + (f", null_score_diff_threshold {task.recipe.null_score_diff_threshold:g}"
                        if task.recipe.null_score_diff_threshold else "")
                     for name, task in TASKS.items() if name in FINETUNE_TASK_NAMES)
