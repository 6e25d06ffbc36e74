"""Scoring a task's dev sets with a predict function: the one code path of `mobilebert evaluate`
and of the trainer's evaluation as it goes.

A PredictFunction takes a batch of numpy arrays {"input_ids", "token_type_ids",
"attention_mask"} (B, T) int64 (plus, for pretraining, masked_positions) and returns the head's
outputs as numpy arrays (QA: start and end logits (B, T); classification: logits (B, C)).
`eager_predictor(model)` wraps a Paddle model in memory; every Predictor of predictors.py is one
too, so an exported model is scored by exactly the same windows, post-processing and metrics.
"""


from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.files import atomic_write_json
from ..core.progress import progress_bar
from ..model.config import MODEL_INPUT_NAMES
from ..tasks.base import EvalResult, EvalSet, Task
from ..tasks.settings import TaskSettings

PredictFunction = Callable[[dict], Any]


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------

def as_output_tuple(outputs: Any) -> tuple[np.ndarray, ...]:
    """A head's outputs (an array, a tensor, or a tuple / list of them) as a tuple of numpy arrays."""
    if isinstance(outputs, (tuple, list)):
        return tuple(np.asarray(output.numpy() if hasattr(output, "numpy") else output) for output in outputs)
    return (np.asarray(outputs.numpy() if hasattr(outputs, "numpy") else outputs),)


def eager_predictor(model) -> PredictFunction:
    """Run a Paddle model (no gradients, eval mode for the call, training mode restored after).
    The model gets the three inputs and any other array of the batch its forward takes by name
    (pretraining's masked_positions); labels in the batch stay for Task.batch_outputs."""
    import inspect

    import paddle

    accepted = set(inspect.signature(model.forward).parameters)

    def predict(batch: dict) -> tuple[np.ndarray, ...]:
        names = [name for name in batch if name in MODEL_INPUT_NAMES or name in accepted]
        was_training = model.training
        model.eval()
        try:
            with paddle.no_grad():
                outputs = model(**{name: paddle.to_tensor(batch[name]) for name in names})
        finally:
            if was_training:
                model.train()
        return as_output_tuple(outputs)

    return predict


def run_predictor(predictor: PredictFunction, inputs: dict[str, np.ndarray], batch_size: int,
                  description: str | None = None, progress: bool = True,
                  keep: Callable[[dict, tuple], tuple] | None = None) -> tuple[np.ndarray, ...]:
    """All rows through the predictor in batches; outputs concatenated along the batch axis.
    Integer arrays go in as int64, others as they are; `keep(batch, outputs)` reduces each
    batch's outputs to what is kept (e.g. pretraining's (B, P, V) logits to (B, P) scores)."""

    count = len(inputs["input_ids"])
    chunks: list[tuple[np.ndarray, ...]] = []
    for start in progress_bar(range(0, count, batch_size), desc=description, leave=False, disable=not progress,
                              unit="batch"):
        batch = {name: as_batch_array(array[start:start + batch_size]) for name, array in inputs.items()}
        outputs = as_output_tuple(predictor(batch))
        chunks.append(keep(batch, outputs) if keep else outputs)
    return tuple(np.concatenate([chunk[index] for chunk in chunks]) for index in range(len(chunks[0])))


def as_batch_array(array: np.ndarray) -> np.ndarray:
    return array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else np.asarray(array)


def evaluate_task(task: Task, predictor: PredictFunction, eval_sets: Sequence[EvalSet], settings: TaskSettings,
                  batch_size: int = 64, id2label: dict[int, str] | None = None,
                  progress: bool = True) -> EvalResult:
    """Run every eval set through the predictor and score it with the task's metric."""
    outputs = []
    for eval_set in eval_sets:
        set_outputs = run_predictor(predictor, eval_set.model_inputs(), batch_size, f"eval {eval_set.name}", progress,
                                    keep=task.batch_outputs)
        outputs.append(task.align_outputs(set_outputs, id2label) if id2label else set_outputs)
    return task.score(eval_sets, outputs, settings)


def write_evaluation(task: Task, result: EvalResult, directory: Path, extra: dict | None = None) -> list[Path]:
    """metrics.json (the flat metrics, plus `extra`) and the task's prediction files."""
    written = task.write_predictions(result, directory)
    atomic_write_json(directory / "metrics.json", {**(extra or {}), **result.metrics})
    return [directory / "metrics.json", *written]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
