"""SQuAD scores of every export of a trained QA model, against the eager Paddle model.

Exports the model (ONNX plain and fused, each in float32 and dynamic int8; static Paddle fused;
OpenVINO plain and fused float32 and NNCF static int8 calibrated on windows of the dev set;
`--exports` picks some) into a
temporary directory, runs the dev set through each with the evaluation code `mobilebert
evaluate` uses, and prints EM / F1 and how often the start and end argmax of each window
agree with eager (issue 6 asks: float32 exports equal; int8 within 1 point, >= 99% agreement).

    python benchmarks/export_accuracy.py --model runs/quickstart/squad1/best \
        --data runs/quickstart/data/dev.json

or, to see the spread over training runs, train the quickstart's model once per seed (about
40 s each on 2 cores) and score a larger generated dev set:

    python benchmarks/export_accuracy.py --quickstart-seeds 1,2,3,4,5 --dev-questions 2000

Add `--outliers` to score each model's outlier twin too (benchmarks/outliers.py: two channels of
the residual stream brought to ~1e7 by a function-preserving rescale, as in Google's checkpoint);
its eager model answers as the original does, so every export is held to the same gate there.

Add `--activation-study` to also run the eager model with only the matmul inputs rounded to
8 bits (weights and everything else float32) per tensor, per row and per channel: how much of
the int8 model's disagreement comes from activation rounding alone, whatever the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import tempfile
import types
from pathlib import Path

import numpy as np

from mobilebert_paddle.inference.evaluation import run_predictor
from mobilebert_paddle.inference.export import export_model
from mobilebert_paddle.inference.load import load_predictor
from mobilebert_paddle.model.tokenizer import MobileBertTokenizer
from mobilebert_paddle.tasks.base import load_eval_sets
from mobilebert_paddle.tasks.registry import get_task
from mobilebert_paddle.tasks.settings import TaskSettings

EXPORTS = {  # name -> (format, fuse, quantize)
    "onnx": ("onnx", False, None),
    "onnx-fused": ("onnx", True, None),
    "paddle-fused": ("paddle", True, None),
    "onnx-int8": ("onnx", False, "int8"),
    "onnx-fused-int8": ("onnx", True, "int8"),
    "openvino": ("openvino", False, None),
    "openvino-fused": ("openvino", True, None),
    "openvino-int8-static": ("openvino", False, "int8-static"),
    "openvino-fused-int8-static": ("openvino", True, "int8-static"),
    "litert": ("litert", False, None),
    "litert-int8": ("litert", False, "int8"),
}
# The default: every export but LiteRT's, which needs the litert extra (--exports litert,litert-int8 adds them).
DEFAULT_EXPORTS = [name for name, (export_format, _, _) in EXPORTS.items() if export_format != "litert"]
ACTIVATION_GRANULARITIES = ("tensor", "row", "channel")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, help="fine-tuned QA model dir")
    parser.add_argument("--data", type=Path, help="SQuAD v1.1 / v2.0 dev JSON")
    parser.add_argument("--quickstart-seeds", help="instead of --model/--data: comma-separated seeds; trains "
                                                   "the quickstart's model once per seed and scores its dev set")
    parser.add_argument("--dev-questions", type=int, default=2000, help="dev questions per quickstart run")
    parser.add_argument("--task", default="squad1", choices=("squad1", "squad2"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--exports", default=",".join(DEFAULT_EXPORTS), help="comma-separated, from: " + ", ".join(EXPORTS))
    parser.add_argument("--activation-study", action="store_true",
                        help="also score eager with only the matmul inputs rounded to 8 bits")
    parser.add_argument("--outliers", action="store_true",
                        help="also score each model's outlier twin (benchmarks/outliers.py)")
    parser.add_argument("--outlier-placement", default="inputs", choices=("inputs", "norm"),
                        help="where the outlier factor goes in the embeddings (see benchmarks/outliers.py)")
    parser.add_argument("--outlier-scale", type=float, default=None,
                        help="one factor for the outlier channels (default: powers of two reaching ~1e7)")
    args = parser.parse_args()
    if args.quickstart_seeds is None and (args.model is None or args.data is None):
        parser.error("give --model and --data, or --quickstart-seeds")
    args.exports = [name.strip() for name in args.exports.split(",") if name.strip()]
    unknown = [name for name in args.exports if name not in EXPORTS]
    if unknown or not args.exports:
        parser.error(f"--exports: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(EXPORTS)}")
    return args


def argmax_agreement(outputs, reference) -> float:
    """Share of (window, output) pairs whose argmax over the last axis equals the reference's."""
    return float(np.mean([(got.argmax(-1) == want.argmax(-1)).mean() for got, want in zip(outputs, reference)]))


def score_model(model: Path, data: Path, task_name: str, batch_size: int, activation_study: bool,
                exports: list, original: Path | None = None) -> dict:
    """`original`: the model `model` was rescaled from; its eager outputs are compared too."""
    task = get_task(task_name)
    eager = load_predictor(model, "eager")
    no_flags = types.SimpleNamespace(max_seq_length=None, doc_stride=None, max_query_length=None, n_best_size=20,
                                     max_answer_length=30, null_score_diff_threshold=None)
    settings = TaskSettings.from_args(no_flags, task, eager.config)   # the model's own window settings
    eval_sets = load_eval_sets(task, [str(data)], MobileBertTokenizer.from_pretrained(model), settings)
    inputs = eval_sets[0].model_inputs()
    reference = run_predictor(eager, inputs, batch_size, progress=False)

    def score(predictor) -> dict:
        outputs = run_predictor(predictor, inputs, batch_size, progress=False)
        metrics = task.score(eval_sets, [outputs], settings).metrics
        return {"exact": round(metrics["exact"], 2), "f1": round(metrics["f1"], 2),
                "argmax_agreement_pct": round(100 * argmax_agreement(outputs, reference), 2)}

    results = {"eager": score(eager)}
    if original is not None:
        original_outputs = run_predictor(load_predictor(original, "eager"), inputs, batch_size, progress=False)
        results["eager"]["agreement_with_original_pct"] = round(100 * argmax_agreement(reference, original_outputs), 2)
        results["eager"]["relative_error_to_original"] = max(
            float(np.abs(got - want).max() / np.abs(want).max()) for got, want in zip(reference, original_outputs))
    with tempfile.TemporaryDirectory() as staging:
        for name in exports:
            export_format, fuse, quantize = EXPORTS[name]
            directory = Path(staging) / name
            calibration = data if quantize == "int8-static" else None    # the dev windows themselves
            export_model(model, directory, export_format, fuse=fuse, quantize=quantize, calibration_data=calibration)
            results[name] = score(load_predictor(directory, export_format))
            print(f"{name:24s} {results[name]}", flush=True)
    if activation_study:
        for granularity in ACTIVATION_GRANULARITIES:
            with activations_rounded(eager.model, granularity):
                results[f"eager-8bit-inputs-per-{granularity}"] = score(eager)
            print(f"8-bit inputs per {granularity:8s} {results[f'eager-8bit-inputs-per-{granularity}']}", flush=True)
    return {"model": str(model), "data": str(data), "windows": len(inputs["input_ids"]), "results": results}


def round_to_uint8(values: np.ndarray, axis) -> np.ndarray:
    """Asymmetric 8-bit rounding (as ONNX Runtime's dynamic quantization does per tensor), with
    the range taken over `axis` (None: the whole tensor; 1: per row; 0: per channel)."""
    low = np.minimum(values.min(axis=axis, keepdims=True), 0)
    high = np.maximum(values.max(axis=axis, keepdims=True), 0)
    step = np.where(high > low, (high - low) / 255, 1.0)
    zero = np.round(-low / step)
    return (np.clip(np.round(values / step) + zero, 0, 255) - zero) * step


@contextlib.contextmanager
def activations_rounded(model, granularity: str):
    """Every backbone Linear rounds its input to 8 bits first (the task head stays exact, as in
    the int8 export)."""
    import paddle

    axis = {"tensor": None, "row": 1, "channel": 0}[granularity]
    backbone_linears = [layer for layer in model.mobilebert.sublayers() if isinstance(layer, paddle.nn.Linear)]

    def round_input(layer, inputs):
        (values,) = inputs
        matrix = values.numpy().astype(np.float64).reshape(-1, values.shape[-1])
        return paddle.to_tensor(round_to_uint8(matrix, axis).reshape(values.shape).astype(np.float32))

    hooks = [layer.register_forward_pre_hook(round_input) for layer in backbone_linears]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def load_outliers_module():
    path = Path(__file__).resolve().parent / "outliers.py"
    spec = importlib.util.spec_from_file_location("outliers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score_with_outliers(model: Path, data: Path, args: argparse.Namespace) -> dict:
    """{"normal": report} and, with --outliers, {"outliers": report of the outlier twin}."""
    report = {"normal": score_model(model, data, args.task, args.batch_size, args.activation_study, args.exports)}
    if args.outliers:
        with tempfile.TemporaryDirectory() as directory:
            twin = Path(directory) / "outliers"
            made = load_outliers_module().write_outlier_model(model, twin, scale=args.outlier_scale,
                                                              placement=args.outlier_placement)
            print(f"-- outlier twin: channels {made['channels']} x {made['factors']}, stream max "
                  f"{made['stream_max_after']}", flush=True)
            report["outliers"] = score_model(twin, data, args.task, args.batch_size, args.activation_study,
                                             args.exports, original=model)
            report["outliers"]["rescale"] = made
    return report


def train_quickstart_model(seed: int, dev_questions: int, directory: Path) -> tuple[Path, Path]:
    from mobilebert_paddle.cli import parse_command_args
    from mobilebert_paddle.tools import quickstart

    args = parse_command_args("quickstart", ["--output", str(directory), "--seed", str(seed),
                                             "--dev-questions", str(dev_questions)])
    summary = quickstart.run(args)
    return Path(summary["artifacts"]["best_model"]), Path(summary["artifacts"]["dev_data"])


def main() -> None:
    args = parse_arguments()
    if args.quickstart_seeds is None:
        report = score_with_outliers(args.model, args.data, args)
    else:
        report = {"dev_questions": args.dev_questions, "seeds": {}}
        for seed in (int(value) for value in args.quickstart_seeds.split(",")):
            with tempfile.TemporaryDirectory() as directory:
                print(f"-- quickstart seed {seed}", flush=True)
                model, data = train_quickstart_model(seed, args.dev_questions, Path(directory))
                args.task = "squad1"
                report["seeds"][seed] = score_with_outliers(model, data, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
