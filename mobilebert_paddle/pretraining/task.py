"""The `pretraining` task: masked LM + next sentence prediction on DATA_DIR's rows (shards.py),
masked when the batch is drawn (masking.py), for the one training loop and `evaluate pretraining`.

* the MLM head runs on the masked positions only (B, P, V), not on every token (B, T, V);
* loss of a row = mean cross entropy over its masked tokens (weighted by masked_weights) + NSP
  cross entropy. Google's TF code averages MLM over all masked tokens of the (per-core) batch;
  a per-row mean keeps the loss a sum over rows, which is what makes 1 process equal N
  processes and accumulation steps exact (training/trainer.py). Dev metrics are token means;
* dev masks are fixed (those of step 0 with the run's seed), so every evaluation scores the
  same tokens; best/ is selected on masked_lm_accuracy.
"""


from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..tasks.base import EvalResult, EvalSet, Task
from ..tasks.settings import Recipe

PRETRAINING_HEAD = "MobileBertForPreTraining"
SETTINGS_KEY = "pretraining_settings"     # config.json key holding the masking a model was trained with
DEV_MASK_STEP = 0
# evaluate's SQuAD/GLUE window flags: refused for pretraining rather than ignored.
WINDOW_FLAGS = ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length",
                "null_score_diff_threshold")
EVAL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_labels",
               "masked_weights", "next_sentence_label")


@dataclass
class MaskingSettings:
    """How rows are masked (flags of pretrain; stored in the model's config.json for evaluate)."""

    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_masking: bool = False
    seed: int = 42

    @classmethod
    def from_args(cls, args: Any, model_config: Any = None) -> "MaskingSettings":
        """Flags when given, else the model's training values, else the defaults."""
        stored = (getattr(model_config, "extra", None) or {}).get(SETTINGS_KEY) or {}
        values = {}
        for item in fields(cls):
            given = getattr(args, item.name, None)
            values[item.name] = given if given is not None else stored.get(item.name, item.default)
        return cls(**values)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------

class PretrainingTask(Task):
    """MLM + NSP over a corpus.PretrainingData. Built per run with that run's masking (the
    registry's instance, with the defaults, serves `evaluate pretraining`)."""

    name = "pretraining"
    head = PRETRAINING_HEAD
    main_metric = "masked_lm_accuracy"
    recipe = Recipe(max_seq_length=128, min_lr=0.0, decay_ratio=1.0, eval_steps=1000)
    label_names = ("masked_labels", "masked_weights", "next_sentence_label")
    eager_only = True

    def __init__(self, masking: MaskingSettings | None = None):
        self.masking = masking or MaskingSettings()
        self.invariants: dict[str, Any] = {}     # what --resume compares beyond the flags (set per run)

    def resume_invariants(self) -> dict[str, Any]:
        """The model config and the data's meta.json as they were: a config file edited in place, or
        other data under the same path, is not the run being resumed."""
        return dict(self.invariants)

    # ----- training hooks ----------------------------------------------------------------------

    def num_rows(self, data) -> int:
        return data.num_rows

    def make_batch(self, data, row_indices: np.ndarray, step: int) -> tuple[dict, dict]:
        import paddle

        arrays = masked_rows(data, np.asarray(row_indices, dtype=np.int64), self.masking, step)
        inputs = {name: paddle.to_tensor(arrays[name].astype(np.int64))
                  for name in ("input_ids", "token_type_ids", "attention_mask", "masked_positions")}
        labels = {name: paddle.to_tensor(arrays[name]) for name in self.label_names}
        return inputs, labels

    def compute_loss(self, model, inputs: dict, labels: dict, step: int) -> tuple[Any, dict]:
        parts = self.loss_parts(model(**inputs), labels)
        return parts["masked_lm_loss"] + parts["next_sentence_loss"], parts

    def per_example_loss(self, outputs, labels: dict):
        parts = self.loss_parts(outputs, labels)
        return parts["masked_lm_loss"] + parts["next_sentence_loss"]

    @staticmethod
    def loss_parts(outputs, labels: dict) -> dict:
        """Per-row losses (B,): MLM = masked tokens' mean cross entropy (weights 0 for padding
        slots), NSP = cross entropy of the pair label."""
        import paddle
        import paddle.nn.functional as F

        prediction_logits, seq_relationship_logits = outputs[0], outputs[1]      # (B, P, V), (B, 2)
        batch, predictions, vocab = prediction_logits.shape
        token_loss = F.cross_entropy(prediction_logits.astype("float32").reshape([-1, vocab]),
                                     labels["masked_labels"].reshape([-1]), reduction="none").reshape([batch, predictions])
        weights = labels["masked_weights"].astype("float32")                      # (B, P)
        masked_lm = (token_loss * weights).sum(axis=1) / paddle.clip(weights.sum(axis=1), min=1.0)
        next_sentence = F.cross_entropy(seq_relationship_logits.astype("float32"), labels["next_sentence_label"],
                                        reduction="none").reshape([-1])
        return {"masked_lm_loss": masked_lm, "next_sentence_loss": next_sentence}

    def settings_from_args(self, args: Any, model_config: Any = None) -> MaskingSettings:
        ignored = [name for name in WINDOW_FLAGS if getattr(args, name, None) is not None]
        if ignored:
            flag = "--" + ignored[0].replace("_", "-")
            raise UserInputError(f"{flag}: does not apply to pretraining, whose rows are read as the DATA_DIR "
                                 "holds them (cut by `pretrain-data --max-seq-length`)")
        self.masking = MaskingSettings.from_args(args, model_config)
        return self.masking

    def remember_settings(self, model, settings: MaskingSettings) -> None:
        model.config.extra[SETTINGS_KEY] = asdict(settings)

    # ----- data and scoring --------------------------------------------------------------------

    def config_changes(self) -> dict[str, Any]:
        return {}

    def default_files(self, data_dir: Path):
        return None, []

    def read(self, path: Path, training: bool):
        return open_data(path)

    def check_model_fits(self, eval_sets: Sequence[EvalSet], config, tokenizer, model_name: str) -> None:
        """`evaluate pretraining`: the data's vocabulary is the model's, its rows fit the position
        table and the masking stored with the model fits a row."""
        from .shards import check_model_fits_data

        for eval_set in eval_sets:
            check_model_fits_data(config, tokenizer.get_vocab(), eval_set.examples, model_name,
                                  self.masking.max_predictions_per_seq)

    def hub_examples(self, split: str):
        raise UserInputError("pretraining reads a DATA_DIR written by `mobilebert pretrain-data`, not a hub dataset")

    def eval_set(self, name: str, source: str, examples, tokenizer, settings: MaskingSettings) -> EvalSet:
        """All rows of a dev DATA_DIR with the masks of step 0 (the same tokens at every evaluation)."""
        data = examples
        rows = masked_rows(data, np.arange(data.num_rows, dtype=np.int64), settings, DEV_MASK_STEP)
        return EvalSet(name, source, data, rows, input_names=EVAL_INPUTS)

    def batch_outputs(self, batch: dict[str, np.ndarray], outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """(B, P, V) logits -> per masked slot the predicted id and the label's cross entropy."""
        prediction_logits, seq_relationship_logits = outputs[0], outputs[1]
        logits = prediction_logits.astype(np.float64)
        log_partition = np.log(np.exp(logits - logits.max(axis=-1, keepdims=True)).sum(axis=-1)) + logits.max(axis=-1)
        label_logits = np.take_along_axis(logits, batch["masked_labels"][..., None], axis=-1)[..., 0]
        return logits.argmax(axis=-1), (log_partition - label_logits), seq_relationship_logits

    def score(self, eval_sets: Sequence[EvalSet], outputs, settings) -> EvalResult:
        metrics: dict[str, float] = {}
        prefix = self.metric_prefix(eval_sets)
        for eval_set, (predicted, token_loss, seq_relationship_logits) in zip(eval_sets, outputs):
            scores = pretraining_metrics(eval_set.rows, predicted, token_loss, seq_relationship_logits)
            metrics.update({(f"{eval_set.name}_{key}" if prefix else key): value for key, value in scores.items()})
        main = f"{eval_sets[0].name}_{self.main_metric}" if prefix else self.main_metric
        return EvalResult(metrics, main, {})

    def write_predictions(self, result: EvalResult, directory: Path) -> list[Path]:
        return []


def pretraining_metrics(rows: dict, predicted: np.ndarray, token_loss: np.ndarray,
                        seq_relationship_logits: np.ndarray) -> dict[str, float]:
    """Token means over the masked slots (weights 1) and the NSP accuracy over rows."""
    weights = rows["masked_weights"].astype(np.float64)                           # (N, P)
    correct = (predicted == rows["masked_labels"]) * weights
    return {"masked_lm_accuracy": float(correct.sum() / weights.sum()),
            "masked_lm_loss": float((token_loss * weights).sum() / weights.sum()),
            "next_sentence_accuracy": float((seq_relationship_logits.argmax(axis=-1)
                                             == rows["next_sentence_label"]).mean()),
            "masked_tokens": int(weights.sum()), "rows": int(len(weights))}


def masked_rows(data, row_indices: np.ndarray, masking: MaskingSettings, step: int) -> dict[str, np.ndarray]:
    """Rows of a corpus.PretrainingData with their MLM masks drawn from (seed, step, row id)."""
    return data.masked_rows(row_indices, masking.seed, step, max_predictions=masking.max_predictions_per_seq,
                            masked_lm_prob=masking.masked_lm_prob, whole_word=masking.whole_word_masking)


def open_data(path: str | Path, flag: str = "--data"):
    """A DATA_DIR written by `mobilebert pretrain-data`, validated before any work (shards.py: a bad
    one is a one-line UserInputError naming the file)."""
    from .shards import PretrainingData

    return PretrainingData(Path(path), flag)
