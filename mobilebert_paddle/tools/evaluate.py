"""Scoring and inference: `mobilebert evaluate`, `mobilebert predict`, and the evaluation the
trainer runs on dev data as it goes -- one code path for all three.

The seam is a *predictor*: a callable taking a batch of numpy arrays
{"input_ids", "token_type_ids", "attention_mask"} (B, T) int64 and returning the head's
outputs as numpy arrays (QA: start and end logits (B, T); classification: logits (B, C)),
a single array or a tuple. `eager_predictor(model)` wraps a Paddle model in memory (what the
trainer uses); `--backend paddle|onnx|openvino` plugs in `mobilebert_paddle.export.load_predictor`,
so an exported model is scored by exactly the same windows, post-processing and metrics.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import flags
from .cli import inputs_accepted
from .errors import UserInputError
from .files import atomic_directory, atomic_write_json, check_creatable_dir
from .tasks import (CLASSIFICATION_HEAD, MODEL_INPUT_NAMES, QA_HEAD, TASK_NAMES, EvalResult, EvalSet, Task,
                    TaskSettings, get_task, load_eval_sets)

logger = logging.getLogger(__name__)

Predictor = Callable[[dict], Any]
BACKENDS = ("eager", "paddle", "onnx", "openvino")
MIN_SEQ_LENGTH = 5   # [CLS] x [SEP] y [SEP]: the shortest row that holds a token of each text


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------

def as_output_tuple(outputs: Any) -> tuple[np.ndarray, ...]:
    """A head's outputs (an array, a tensor, or a tuple / list of them) as a tuple of numpy arrays."""
    if isinstance(outputs, (tuple, list)):
        return tuple(np.asarray(output.numpy() if hasattr(output, "numpy") else output) for output in outputs)
    return (np.asarray(outputs.numpy() if hasattr(outputs, "numpy") else outputs),)


def eager_predictor(model) -> Predictor:
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


def run_predictor(predictor: Predictor, inputs: dict[str, np.ndarray], batch_size: int,
                  description: str | None = None, progress: bool = True,
                  keep: Callable[[dict, tuple], tuple] | None = None) -> tuple[np.ndarray, ...]:
    """All rows through the predictor in batches; outputs concatenated along the batch axis.
    Integer arrays go in as int64, others as they are; `keep(batch, outputs)` reduces each
    batch's outputs to what is kept (e.g. pretraining's (B, P, V) logits to (B, P) scores)."""
    from .progress import progress_bar

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


def evaluate_task(task: Task, predictor: Predictor, eval_sets: Sequence[EvalSet], settings: TaskSettings,
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


# --------------------------------------------------------------------------------------------
# Loading a model for inference
# --------------------------------------------------------------------------------------------

@dataclass
class InferenceModel:
    predictor: Predictor
    config: Any          # MobileBertConfig
    tokenizer: Any       # MobileBertTokenizer
    directory: Path
    architecture: str


def select_device(device: str) -> str:
    """auto -> gpu when Paddle has CUDA and sees a GPU, else cpu; sets it as Paddle's device."""
    import paddle

    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "gpu" and not has_gpu:
        raise UserInputError("--device gpu: this Paddle build has no CUDA or no GPU is visible")
    name = "gpu" if device == "gpu" or (device == "auto" and has_gpu) else "cpu"
    if name == "gpu":
        import paddle.distributed as dist

        paddle.set_device(f"gpu:{dist.ParallelEnv().device_id}")
    else:
        paddle.set_device("cpu")
    return name


def model_architecture(config, state: dict | None, source: Path) -> str:
    from .modeldir import infer_architecture
    from .model import HEADS

    named = [name for name in (config.architectures or []) if name in HEADS]
    if named:
        return named[0]
    if state is None:
        raise UserInputError(f"{source}: config.json names no architecture; cannot tell which head the model has")
    return infer_architecture(state)


def load_inference_model(source: str, head: str, backend: str = "eager") -> InferenceModel:
    """A fine-tuned model dir (Paddle or HF, or a hub id) with the head `head`, ready to predict."""
    from .config import MobileBertConfig
    from .model import HEADS
    from .modeldir import load_pretrained, load_tokenizer, resolve_source

    directory = resolve_source(source)
    if not (directory / "config.json").is_file():
        raise UserInputError(f"{directory}: no config.json; not a MobileBERT model directory")
    state = None
    if backend == "eager":
        config, state = load_pretrained(directory)
    else:
        config = MobileBertConfig.from_pretrained(directory)
    architecture = model_architecture(config, state, directory)
    if architecture != head:
        raise UserInputError(f"{directory}: the model is a {architecture}; this needs a fine-tuned {head}")
    tokenizer = load_tokenizer(directory, config)
    if backend == "eager":
        config.architectures = [architecture]
        model = HEADS[architecture](config)
        model.load_converted_state_dict(state, source=str(directory))
        model.eval()
        predictor = eager_predictor(model)
    else:
        predictor = exported_predictor(directory, backend)
    return InferenceModel(predictor, config, tokenizer, directory, architecture)


def check_sequence_length(max_seq_length: int, config, source) -> None:
    """Rows longer than the position table would fail deep inside the model: say so up front."""
    if max_seq_length > config.max_position_embeddings:
        raise UserInputError(f"{source}: --max-seq-length {max_seq_length} exceeds the model's "
                             f"max_position_embeddings ({config.max_position_embeddings})")


def exported_predictor(directory: Path, backend: str) -> Predictor:
    try:
        from .export import load_predictor
    except ImportError as error:
        raise UserInputError(f"--backend {backend} needs mobilebert_paddle.export.load_predictor, which is not "
                             f"available ({error}); use --backend eager") from None
    return load_predictor(directory, backend)


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


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="eager",
                        help="eager: the Paddle model in memory; paddle / onnx / openvino: an exported model, "
                             "or a model dir exported in memory (mobilebert_paddle.export.load_predictor); "
                             "openvino runs float32 exactly (INFERENCE_PRECISION_HINT f32), on OMP_NUM_THREADS threads")
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
    task = get_task(args.task)
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
    from .squad import SquadExample, postprocess_predictions

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
    from .glue import GlueExample, build_glue_features

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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
