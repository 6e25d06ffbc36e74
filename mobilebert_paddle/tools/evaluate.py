"""`mobilebert evaluate` (every task: SQuAD, GLUE, pretraining) and `mobilebert predict` (a
question and a context, or a text (pair) to classify), on any backend (inference/load.py).
Scoring goes through inference/evaluation.py, the path the trainer's evaluation takes too.
"""


from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..core import flags
from ..core.device import select_device
from ..core.errors import UserInputError
from ..core.files import atomic_directory, check_creatable_dir, check_separate_dirs
from ..core.logs import inputs_accepted
from ..inference.evaluation import (
    evaluate_task,
    run_predictor,
    softmax,
    write_evaluation,
)
from ..inference.load import load_inference_model
from ..inference.predictors import BACKENDS
from ..pretraining.task import PretrainingTask
from ..tasks.base import CLASSIFICATION_HEAD, QA_HEAD, EvalResult, Task, load_eval_sets
from ..tasks.glue import GlueExample, build_glue_features
from ..tasks.registry import FINETUNE_TASK_NAMES, get_task
from ..tasks.settings import (
    TaskSettings,
    add_task_settings_arguments,
    check_sequence_length,
)
from ..tasks.squad import SquadExample, postprocess_predictions

TASK_NAMES = FINETUNE_TASK_NAMES + ("pretraining",)     # `evaluate` takes every task

logger = logging.getLogger(__name__)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="eager",
                        help="eager: the Paddle model in memory; paddle / onnx / openvino / litert: an exported "
                             "model, or a model dir exported in memory (inference/load.load_predictor); "
                             "openvino runs float32 exactly (INFERENCE_PRECISION_HINT f32), on OMP_NUM_THREADS threads; "
                             "litert pads each row to the shortest signature length that holds it")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where eager Paddle runs")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASK_NAMES, help="task whose metric and data format to use")
    parser.add_argument("--model", required=True, help="fine-tuned model dir (e.g. runs/squad1/best), HF dir or hub id")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help="dev/test file(s): SQuAD JSON, or GLUE TSV (MNLI: dev_matched.tsv dev_mismatched.tsv); "
                             "'hub' loads the task's validation split(s) with `datasets`; "
                             "pretraining: a DATA_DIR written by `mobilebert pretrain-data`")
    parser.add_argument("--output", required=True, help="directory for metrics.json and the prediction files")
    parser.add_argument("--batch-size", type=flags.integer(minimum=1), default=64, help="rows per forward pass")
    add_inference_arguments(parser)
    add_task_settings_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> dict:
    task = PretrainingTask() if args.task == "pretraining" else get_task(args.task)
    local_inputs = [("--model", args.model), *(("--data", data) for data in args.data)]
    check_separate_dirs([(flag, path) for flag, path in local_inputs if Path(path).exists()], args.output,
                        "--output", output_may_be_inside=True)
    output = check_evaluation_output(Path(args.output))    # created only when there is something to write
    if task.eager_only and args.backend != "eager":
        raise UserInputError(f"--backend {args.backend}: {task.name} is evaluated on the Paddle model (--backend eager)")
    if args.backend == "eager":
        select_device(args.device)
    model = load_inference_model(args.model, task.head, args.backend)
    settings = task.settings_from_args(args, model.config)
    if getattr(settings, "max_seq_length", None) is not None:    # pretraining rows come from the data as cut
        check_sequence_length(settings.max_seq_length, model.config, args.model)
    sources = [f"hub:{split}" for split in task.hub_dev_splits] if args.data == ["hub"] else args.data
    eval_sets = load_eval_sets(task, sources, model.tokenizer, settings)
    task.check_model_fits(eval_sets, model.config, model.tokenizer, f"--model {args.model}")
    inputs_accepted()
    result = evaluate_task(task, model.predictor, eval_sets, settings, args.batch_size, model.config.id2label)
    files = write_evaluation_directory(task, result, output)
    return {"task": task.name, "model": str(args.model), "backend": args.backend,
            "data": {eval_set.name: eval_set.source for eval_set in eval_sets},
            "examples": {eval_set.name: len(eval_set.examples) for eval_set in eval_sets},
            "main_metric": result.main_metric, "metrics": result.metrics, "files": [str(path) for path in files]}


EVALUATION_FILES = ("metrics.json", "predictions.json", "nbest_predictions.json", "null_odds.json")


def is_evaluation_output(path: Path) -> bool:
    """A file (or a per-set directory of files) that write_evaluation writes, or a killed write's temp file."""
    if path.is_dir() and not path.is_symlink():
        return all(is_evaluation_output(item) for item in path.iterdir())
    name = path.name
    return name in EVALUATION_FILES or name.endswith("_predictions.tsv") or (name.startswith(".") and name.endswith(".tmp"))


def check_evaluation_output(output: Path) -> Path:
    """--output is replaced whole by the new set of files, so it may only hold an earlier evaluation."""
    check_creatable_dir(output)
    foreign = sorted(item.name for item in output.iterdir() if not is_evaluation_output(item)) if output.is_dir() else []
    if foreign:
        raise UserInputError(f"{output}: --output holds files no evaluation writes ({', '.join(foreign[:3])}); choose "
                             f"a new or empty directory (an earlier evaluation there is replaced whole)")
    return output


def write_evaluation_directory(task: Task, result: EvalResult, output: Path) -> list[Path]:
    """metrics.json and the predictions as one set: staged beside OUTPUT, then swapped in by a rename,
    so a full disk leaves the earlier set whole (never new predictions beside old metrics)."""
    existed = output.exists()
    try:
        with atomic_directory(output) as staging:
            written = write_evaluation(task, result, staging)
    except OSError as error:
        kept = "the earlier evaluation is kept" if existed else "nothing was written"
        raise UserInputError(f"{output}: cannot write the evaluation ({error.strerror or error}); {kept}") from None
    return [output / path.relative_to(staging) for path in written]


# --------------------------------------------------------------------------------------------
# `mobilebert predict`
# --------------------------------------------------------------------------------------------

def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="fine-tuned model dir (QA or classification head), HF dir or hub id")
    parser.add_argument("--question", help="question about --context (QA head)")
    parser.add_argument("--context", help="text holding the answer; long contexts are cut into overlapping windows")
    parser.add_argument("--text", help="text to classify (classification head)")
    parser.add_argument("--text-pair", help="second text of a pair (e.g. the hypothesis for MNLI)")
    parser.add_argument("--top-k", type=flags.integer(minimum=1), default=3, help="answers (QA) or labels (classification) to list")
    add_inference_arguments(parser)
    add_task_settings_arguments(parser)


def run_predict(args: argparse.Namespace) -> dict:
    question_answering = args.question is not None or args.context is not None
    if question_answering == (args.text is not None or args.text_pair is not None):
        raise UserInputError("give --question and --context (question answering) or --text [--text-pair] "
                             "(classification), not both")
    required = {"--question": args.question, "--context": args.context} if question_answering else {"--text": args.text}
    for flag, value in required.items():   # checked before Paddle loads (seconds)
        if not (value or "").strip():
            raise UserInputError(f"{flag} is missing or empty")
    if args.backend == "eager":
        select_device(args.device)
    if question_answering:
        return predict_answer(args)
    return predict_label(args)


def predict_answer(args: argparse.Namespace) -> dict:
    model = load_inference_model(args.model, QA_HEAD, args.backend)
    version_2 = model.config.extra.get("finetuning_task") == "squad2"
    task = get_task("squad2" if version_2 else "squad1")
    settings = TaskSettings.from_args(args, task, model.config)
    check_sequence_length(settings.max_seq_length, model.config, args.model)
    example = SquadExample("question", args.question, args.context)
    eval_set = task.eval_set("input", "command line", [example], model.tokenizer, settings)
    start_logits, end_logits = run_predictor(model.predictor, eval_set.model_inputs(), 64, progress=False)[:2]
    answers, nbest, null_odds = postprocess_predictions(
        [example], eval_set.rows, start_logits, end_logits, n_best_size=max(settings.n_best_size, args.top_k),
        max_answer_length=settings.max_answer_length, null_score_diff_threshold=settings.null_score_diff_threshold,
        version_2_with_negative=version_2)
    return {"answer": answers[example.id], "no_answer": answers[example.id] == "",
            "candidates": nbest[example.id][:args.top_k], "null_score_diff": null_odds[example.id],
            "windows": len(eval_set.rows), "model": str(args.model)}


def predict_label(args: argparse.Namespace) -> dict:
    model = load_inference_model(args.model, CLASSIFICATION_HEAD, args.backend)
    max_seq_length = TaskSettings.from_args(args, get_task("mnli"), model.config).max_seq_length  # GLUE: 128
    check_sequence_length(max_seq_length, model.config, args.model)
    rows = build_glue_features([GlueExample("input", args.text, args.text_pair, None)], model.tokenizer, max_seq_length)
    (logits,) = run_predictor(model.predictor, rows, 1, progress=False)[:1]
    if model.config.num_labels == 1:                 # STS-B style regression
        return {"score": float(logits[0, 0]), "model": str(args.model)}
    probabilities = softmax(logits[0].astype(np.float64))
    order = np.argsort(-probabilities, kind="stable")[:args.top_k]
    ranked = [{"label": model.config.id2label.get(int(index), str(int(index))),
               "probability": float(probabilities[index])} for index in order]
    return {"label": ranked[0]["label"], "labels": ranked, "model": str(args.model)}
