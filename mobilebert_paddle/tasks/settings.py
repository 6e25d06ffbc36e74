"""Recipe (a task's defaults) and TaskSettings (how examples become rows and logits become answers:
the window flags of finetune, evaluate and predict), with the flags that set them.
"""


from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from ..core import flags
from ..core.errors import UserInputError

MIN_SEQ_LENGTH = 5   # [CLS] x [SEP] y [SEP]: the shortest row that holds a token of each text


def check_sequence_length(max_seq_length: int, config, source) -> None:
    """Rows longer than the position table would fail deep inside the model: say so up front."""
    if max_seq_length > config.max_position_embeddings:
        raise UserInputError(f"{source}: --max-seq-length {max_seq_length} exceeds the model's "
                             f"max_position_embeddings ({config.max_position_embeddings})")


# --------------------------------------------------------------------------------------------
# `mobilebert evaluate`
# --------------------------------------------------------------------------------------------

def add_task_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Window and post-processing flags shared by finetune, evaluate and predict.

    None means: for evaluate / predict, the value the model was fine-tuned with (the trainer
    stores them in config.json); otherwise the task's recipe value. `%(default).0s` prints
    nothing: the default depends on the task and is spelled out instead."""
    group = parser.add_argument_group("windows and answers (evaluate/predict default to the model's training values)")
    group.add_argument("--max-seq-length", type=flags.integer(minimum=MIN_SEQ_LENGTH), default=None,
                       help="tokens per model row [default: 384 for SQuAD, 128 for GLUE]%(default).0s")
    group.add_argument("--doc-stride", type=flags.integer(minimum=0), default=None,
                       help="SQuAD: tokens shared by consecutive windows [default: 128]%(default).0s")
    group.add_argument("--max-query-length", type=flags.integer(minimum=1), default=None,
                       help="SQuAD: question tokens kept [default: 64]%(default).0s")
    group.add_argument("--n-best-size", type=flags.integer(minimum=1), default=None,
                       help="SQuAD: start/end candidates per window [default: 20]%(default).0s")
    group.add_argument("--max-answer-length", type=flags.integer(minimum=1), default=None,
                       help="SQuAD: longest answer in tokens [default: 30]%(default).0s")
    group.add_argument("--null-score-diff-threshold", type=flags.number(), default=None,
                       help="SQuAD v2: predict no answer when null score - best span score exceeds this "
                            "[default: -1.5 for squad2, 0 otherwise]%(default).0s")







@dataclass(frozen=True)
class Recipe:
    """Defaults of one task that differ between tasks (the shared ones are flags of training/finetune.py)."""

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
    def from_args(cls, args: Any, task: Any, model_config: Any = None) -> "TaskSettings":
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
