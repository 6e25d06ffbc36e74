"""SQuAD scores of every export of a trained QA model, against the eager Paddle model.

Exports the model (ONNX plain and fused, each in float32 and int8; static Paddle fused) into a
temporary directory, runs the dev set through each with the evaluation code `mobilebert
evaluate` uses, and prints EM / F1 and how often the start and end argmax of each window
agree with eager (issue 6: float32 exports equal; int8 within 1 point, >= 99% agreement).

    python benchmarks/export_accuracy.py --model runs/quickstart/squad1/best \
        --data runs/quickstart/data/dev.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import types
from pathlib import Path

import numpy as np

from mobilebert_paddle.evaluation import run_predictor
from mobilebert_paddle.export import export_model, load_predictor
from mobilebert_paddle.tasks import TaskSettings, get_task, load_eval_sets
from mobilebert_paddle.tokenizer import MobileBertTokenizer

EXPORTS = {  # name -> (format, fuse, quantize)
    "onnx": ("onnx", False, None),
    "onnx-fused": ("onnx", True, None),
    "paddle-fused": ("paddle", True, None),
    "onnx-int8": ("onnx", False, "int8"),
    "onnx-fused-int8": ("onnx", True, "int8"),
}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned QA model dir")
    parser.add_argument("--data", type=Path, required=True, help="SQuAD v1.1 / v2.0 dev JSON")
    parser.add_argument("--task", default="squad1", choices=("squad1", "squad2"))
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    task = get_task(args.task)
    eager = load_predictor(args.model, "eager")
    no_flags = types.SimpleNamespace(max_seq_length=None, doc_stride=None, max_query_length=None, n_best_size=20,
                                     max_answer_length=30, null_score_diff_threshold=None)
    settings = TaskSettings.from_args(no_flags, task, eager.config)   # the model's own window settings
    eval_sets = load_eval_sets(task, [str(args.data)], MobileBertTokenizer.from_pretrained(args.model), settings)
    inputs = eval_sets[0].model_inputs()
    reference = run_predictor(eager, inputs, args.batch_size, progress=False)

    def score(predictor) -> dict:
        outputs = run_predictor(predictor, inputs, args.batch_size, progress=False)
        agreement = np.mean([(got.argmax(-1) == want.argmax(-1)).mean() for got, want in zip(outputs, reference)])
        metrics = task.score(eval_sets, [outputs], settings).metrics
        return {"exact": round(metrics["exact"], 2), "f1": round(metrics["f1"], 2),
                "argmax_agreement_pct": round(100 * float(agreement), 2)}

    results = {"eager": score(eager)}
    with tempfile.TemporaryDirectory() as staging:
        for name, (export_format, fuse, quantize) in EXPORTS.items():
            directory = Path(staging) / name
            export_model(args.model, directory, export_format, fuse=fuse, quantize=quantize)
            results[name] = score(load_predictor(directory, export_format))
            print(f"{name:16s} {results[name]}", flush=True)
    print(json.dumps({"model": str(args.model), "data": str(args.data), "windows": len(inputs["input_ids"]),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
