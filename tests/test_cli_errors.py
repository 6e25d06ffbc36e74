"""Every command's bad inputs, through the real CLI: one clear line, exit 2, nothing left behind.

Each row of CASES is (id, argv, fragment). The argv runs as `python -m mobilebert_paddle ...`
in a subprocess with the user's environment (no OMP_NUM_THREADS, warnings not filtered), so a
library's stray print or warning shows up here as a second stderr line. For every case:
exit code 2; stderr is exactly one line, `mobilebert COMMAND: error: ...` holding the
fragment; no traceback; stdout empty; and the case's output path either still does not
exist or is byte-for-byte unchanged (a directory that existed before is snapshotted).

Placeholders in argv ({qa}, {squad}, ...) name inputs built once, in-process, by
build_file_inputs / build_model_inputs; {out} is a fresh path per case. The `outcomes` fixture
runs every case at once, 4 at a time: most pay Paddle's ~2 s import, so one by one would take
minutes. A case marked known_bug is a strict xfail: it names a bug in a module another helper
owns, and turns into a failure (XPASS) once fixed, to be unmarked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from tiny_tasks import make_tiny_model_dir, make_tokenizer, write_colour_pairs, write_marker_squad, write_mnli_dev

# Every case through the real CLI in a subprocess: the slow tier.
pytestmark = pytest.mark.slow


class Case(NamedTuple):
    id: str
    argv: str              # split on spaces, then {name} placeholders filled in (see build_*_inputs)
    fragment: str          # must appear in the one stderr line
    output: str | None = "{out}"   # path that must not appear (or, if it existed, must not change)
    known_bug: str | None = None   # a bug in a module another helper is changing: strict xfail until fixed


CASES = [
    # quickstart ------------------------------------------------------------------------------------
    Case("quickstart-output-under-file", "quickstart --output {file}/qs", "not writable", "{file}"),
    Case("quickstart-zero-train-questions", "quickstart --output {out} --train-questions 0",
         "argument --train-questions: must be an integer >= 1"),
    Case("quickstart-zero-epochs", "quickstart --output {out} --epochs 0", "argument --epochs: must be a finite number > 0, got 0"),
    Case("quickstart-zero-batch", "quickstart --output {out} --batch-size 0", "argument --batch-size: must be an integer >= 1"),
    Case("quickstart-negative-learning-rate", "quickstart --output {out} --learning-rate -1",
         "argument --learning-rate: must be a finite number > 0, got -1"),
    Case("quickstart-not-an-int", "quickstart --output {out} --train-questions many", "argument --train-questions: must be an integer >= 1 and <= 1000000, got 'many'"),
    # convert ---------------------------------------------------------------------------------------
    Case("convert-missing-source", "convert {missing_dir} {out}", "no such directory"),
    Case("convert-source-is-file", "convert {file} {out}", "expected a model directory, found a file"),
    Case("convert-offline-hub-id", "convert nobody-here/no-such-model {out}", "nobody-here/no-such-model"),
    Case("convert-no-weights", "convert {no_weights} {out}", "no weights found"),
    Case("convert-no-config", "convert {empty_dir} {out}", "no config.json"),
    Case("convert-bert-config", "convert {bert} {out}", "model_type is 'bert', not 'mobilebert'"),
    Case("convert-config-not-object", "convert {config_list} {out}", "config.json must hold a JSON object"),
    Case("convert-config-bad-value", "convert {config_bad_value} {out}", "hidden_size must be int, got 'wide'"),
    Case("convert-config-malformed", "convert {config_malformed} {out}", "invalid JSON at line"),
    Case("convert-truncated-weights", "convert {truncated} {out}", "unreadable safetensors file"),
    Case("convert-config-disagrees", "convert {disagree} {out}", "config.json and the weights disagree"),
    Case("convert-destination-under-file", "convert {qa} {file}/converted", "is a file", "{file}"),
    Case("convert-destination-not-model-dir", "convert {qa} {full_dir}", "refusing to replace", "{full_dir}"),
    Case("convert-unknown-to", "convert {qa} {out} --to onnx", "invalid choice: 'onnx'"),
    # compare ---------------------------------------------------------------------------------------
    Case("compare-missing-hf", "compare {missing_dir} {qa}", "no such directory", None),
    Case("compare-paddle-no-weights", "compare {hf} {no_weights}", "no weights found", None),
    Case("compare-paddle-bert-config", "compare {hf} {bert}", "model_type is 'bert', not 'mobilebert'", None),
    Case("compare-hf-is-paddle-dir", "compare {qa} {qa}", "HF_SRC must be the HuggingFace checkpoint", None),
    Case("compare-negative-tolerance", "compare {hf} {hf_as_paddle} --tolerance -1", "argument --tolerance: must be a finite number >= 0, got -1", None),
    Case("compare-tolerance-not-number", "compare {hf} {qa} --tolerance tight", "argument --tolerance: must be a finite number >= 0, got 'tight'", None),
    Case("compare-empty-text", "compare {hf} {hf_as_paddle} --text {blank}", "--text: empty text", None),
    # distill ---------------------------------------------------------------------------------------
    Case("distill-student-wider-than-teacher",
         "distill --teacher {pretraining} --student {student_wider} --data {missing_dir} --output {out}",
         "hidden_size is 128 but the teacher's"),
    Case("distill-teacher-not-a-model", "distill --teacher {empty_dir} --student {student_wider} --data {missing_dir} "
         "--output {out}", "--teacher: "),
    Case("distill-teacher-without-pretraining-heads",
         "distill --teacher {base} --student mobilebert --data {missing_dir} --output {out}", "no pretraining heads"),
    Case("distill-student-other-vocabulary",
         "distill --teacher {pretraining} --student {student_other_vocab} --data {missing_dir} --output {out}",
         "vocab_size is"),
    Case("distill-transfer-steps-not-a-multiple-of-layers",
         "distill --teacher {pretraining} --student {pretraining} --data {missing_dir} --output {out} "
         "--transfer-steps 3", "--transfer-steps 3 is not a multiple of the 2 layers"),
    Case("distill-no-steps", "distill --teacher {pretraining} --student {pretraining} --data {missing_dir} "
         "--output {out} --transfer-steps 0 --distill-steps 0", "nothing to do"),
    Case("distill-ratio-above-one", "distill --teacher {pretraining} --student {pretraining} --data {missing_dir} "
         "--output {out} --distill-ground-truth-ratio 1.5", "must be a finite number >= 0 and <= 1, got 1.5"),
    # finetune --------------------------------------------------------------------------------------
    Case("finetune-missing-train", "finetune squad1 --model {base} --train {missing_file} --output {out}",
         "not found"),
    Case("finetune-malformed-train-json", "finetune squad1 --model {base} --train {squad_malformed} --output {out}",
         "invalid JSON at line"),
    Case("finetune-train-without-data-key", "finetune squad1 --model {base} --train {squad_no_data} --output {out}",
         "missing key 'data'"),
    Case("finetune-bad-question-record", "finetune squad1 --model {base} --train {squad_bad_record} --output {out}",
         "question q0-1: 'question' should be str"),
    Case("finetune-tsv-short-row", "finetune rte --model {base} --train {tsv_short_row} --output {out}", "line 3"),
    Case("finetune-tsv-unknown-label", "finetune rte --model {base} --train {tsv_bad_label} --output {out}",
         "'maybe'"),
    Case("finetune-missing-dev", "finetune rte --model {base} --train {tsv} --dev {missing_file} --output {out}",
         "not found"),
    Case("finetune-no-train-data", "finetune rte --model {base} --output {out}", "no training data; pass --train FILE"),
    Case("finetune-missing-data-dir", "finetune rte --model {base} --data-dir {missing_dir} --output {out}",
         "no training data (none found in"),
    Case("finetune-model-no-weights", "finetune rte --model {no_weights} --train {tsv} --output {out}",
         "no weights found"),
    Case("finetune-model-bert-config", "finetune rte --model {bert} --train {tsv} --output {out}",
         "model_type is 'bert', not 'mobilebert'"),
    Case("finetune-zero-batch", "finetune rte --model {base} --train {tsv} --output {out} --batch-size 0",
         "argument --batch-size: must be an integer >= 1, got 0"),
    Case("finetune-warmup-ratio", "finetune rte --model {base} --train {tsv} --output {out} --warmup-ratio 1.5",
         "argument --warmup-ratio: must be a finite number >= 0 and <= 1, got 1.5"),
    Case("finetune-nan-epochs", "finetune rte --model {base} --train {tsv} --output {out} --epochs nan",
         "argument --epochs: must be a finite number > 0, got nan"),
    Case("finetune-huge-seed", "finetune rte --model {base} --train {tsv} --output {out} --seed 1099511627776",
         "argument --seed: must be an integer >= 0 and <= 4294967295"),
    Case("finetune-glue-one-token-rows", "finetune rte --model {base} --train {tsv} --output {out} --max-seq-length 1",
         "argument --max-seq-length: must be an integer >= 5, got 1"),
    Case("finetune-nan-max-grad-norm", "finetune rte --model {base} --train {tsv} --output {out} --max-grad-norm nan",
         "argument --max-grad-norm: must be a finite number >= 0, got nan"),
    Case("quickstart-inf-epochs", "quickstart --output {out} --epochs inf", "argument --epochs: must be a finite number"),
    Case("finetune-fp16", "finetune rte --model {base} --train {tsv} --output {out} --amp fp16", "fp16"),
    Case("finetune-bf16-on-cpu", "finetune rte --model {base} --train {tsv} --output {out} --amp bf16 --device cpu",
         "--amp bf16 needs a GPU"),
    Case("finetune-too-long-rows", "finetune rte --model {base} --train {tsv} --output {out} --max-seq-length 1024",
         "exceeds the model's max_position_embeddings"),
    Case("finetune-nan-null-threshold", "finetune squad2 --model {base} --train {squad} --output {out} "
         "--null-score-diff-threshold nan", "argument --null-score-diff-threshold: must be a finite number, got nan"),
    Case("finetune-stride-too-long", "finetune squad1 --model {base} --train {squad} --output {out} "
         "--max-seq-length 48 --doc-stride 48", "window sizes"),
    Case("finetune-output-under-file", "finetune rte --model {base} --train {tsv} --output {file}/run",
         "not writable", "{file}"),
    Case("finetune-earlier-run", "finetune rte --model {base} --train {tsv} --output {earlier_run}",
         "already holds a run", "{earlier_run}"),
    Case("finetune-overwrite-bad-data", "finetune rte --model {base} --train {tsv_bad_label} --output {earlier_run_2} "
         "--overwrite", "'maybe'", "{earlier_run_2}"),
    # evaluate --------------------------------------------------------------------------------------
    Case("evaluate-missing-data", "evaluate squad1 --model {qa} --data {missing_file} --output {out}", "not found"),
    Case("evaluate-malformed-json", "evaluate squad1 --model {qa} --data {squad_malformed} --output {out}",
         "invalid JSON at line"),
    Case("evaluate-tsv-short-row", "evaluate rte --model {cls} --data {tsv_short_row} --output {out}", "line 3"),
    Case("evaluate-tsv-unknown-label", "evaluate rte --model {cls} --data {tsv_bad_label} --output {out}", "'maybe'"),
    Case("evaluate-model-no-weights", "evaluate squad1 --model {no_weights} --data {squad} --output {out}",
         "no weights found"),
    Case("evaluate-model-bert-config", "evaluate squad1 --model {bert} --data {squad} --output {out}",
         "model_type is 'bert', not 'mobilebert'"),
    Case("evaluate-base-model", "evaluate squad1 --model {base} --data {squad} --output {out}",
         "needs a fine-tuned MobileBertForQuestionAnswering"),
    Case("evaluate-wrong-head", "evaluate rte --model {qa} --data {tsv} --output {out}",
         "needs a fine-tuned MobileBertForSequenceClassification"),
    Case("evaluate-zero-batch", "evaluate squad1 --model {qa} --data {squad} --output {out} --batch-size 0",
         "argument --batch-size: must be an integer >= 1"),
    Case("evaluate-zero-n-best", "evaluate squad1 --model {qa} --data {squad} --output {out} --n-best-size 0",
         "argument --n-best-size: must be an integer >= 1, got 0"),
    Case("evaluate-output-under-file", "evaluate squad1 --model {qa} --data {squad} --output {file}/eval",
         "not writable", "{file}"),
    Case("evaluate-unknown-backend", "evaluate squad1 --model {qa} --data {squad} --output {out} --backend tvm",
         "invalid choice: 'tvm'"),
    # predict ---------------------------------------------------------------------------------------
    Case("predict-nothing-to-do", "predict --model {qa}", "give --question and --context", None),
    Case("predict-qa-and-text", "predict --model {qa} --question who --context x --text y",
         "give --question and --context", None),
    Case("predict-no-context", "predict --model {qa} --question who", "--context is missing or empty", None),
    Case("predict-zero-top-k", "predict --model {qa} --question who --context x --top-k 0",
         "argument --top-k: must be an integer >= 1, got 0", None),
    Case("predict-zero-max-answer-length", "predict --model {qa} --question who --context x --max-answer-length 0",
         "argument --max-answer-length: must be an integer >= 1, got 0", None),
    Case("predict-text-on-qa-model", "predict --model {qa} --text hello",
         "needs a fine-tuned MobileBertForSequenceClassification", None),
    Case("predict-model-no-weights", "predict --model {no_weights} --question who --context x",
         "no weights found", None),
    Case("predict-model-missing", "predict --model {missing_dir} --question who --context x",
         "no such directory", None),
    Case("predict-too-long-rows", "predict --model {qa} --question who --context x --max-seq-length 1024",
         "exceeds the model's max_position_embeddings", None),
    # export ----------------------------------------------------------------------------------------
    Case("export-model-missing", "export --model {missing_dir} --output {out}", "no such model directory"),
    Case("export-model-no-weights", "export --model {no_weights} --output {out}", "no weights found"),
    Case("export-model-bert-config", "export --model {bert} --output {out}", "model_type is 'bert', not 'mobilebert'"),
    Case("export-unknown-format", "export --model {qa} --output {out} --format tflite", "invalid choice: 'tflite'"),
    Case("export-int8-paddle", "export --model {qa} --output {out} --format paddle --quantize int8",
         "--quantize int8 needs --format onnx"),
    Case("export-output-under-file", "export --model {qa} --output {file}/onnx", "not a writable directory", "{file}"),
    Case("export-output-is-model", "export --model {qa} --output {qa}", "the model directory itself", "{qa}"),
    Case("export-output-not-export", "export --model {qa} --output {full_dir}", "not an export", "{full_dir}"),
    Case("export-opset-zero", "export --model {qa} --output {out} --opset 0", "argument --opset: must be an integer >= 10 and <= 21, got 0"),
    Case("export-opset-too-high", "export --model {qa} --output {out} --opset 22", "argument --opset: must be an integer >= 10 and <= 21, got 22"),
    Case("export-int8-static-onnx", "export --model {qa} --output {out} --quantize int8-static "
         "--calibration-data {squad}", "--quantize int8-static needs --format openvino"),
    Case("export-int8-static-no-data", "export --model {qa} --output {out} --format openvino --quantize int8-static",
         "--quantize int8-static needs --calibration-data FILE"),
    Case("export-calibration-data-missing", "export --model {qa} --output {out} --format openvino "
         "--quantize int8-static --calibration-data {missing_file}", "no such file"),
    Case("export-calibration-without-static", "export --model {qa} --output {out} --calibration-data {squad}",
         "--calibration-data is only read by --quantize int8-static"),
    Case("export-zero-calibration-windows", "export --model {qa} --output {out} --format openvino "
         "--quantize int8-static --calibration-data {squad} --calibration-windows 0", "--calibration-windows"),
    # squad-eval ------------------------------------------------------------------------------------
    Case("squad-eval-missing-data", "squad-eval {missing_file} {predictions}", "not found", None),
    Case("squad-eval-malformed-data", "squad-eval {squad_malformed} {predictions}", "invalid JSON at line", None),
    Case("squad-eval-data-without-data-key", "squad-eval {squad_no_data} {predictions}", "no 'data' key", None),
    Case("squad-eval-malformed-predictions", "squad-eval {squad} {squad_malformed}", "invalid JSON at line", None),
    Case("squad-eval-predictions-list", "squad-eval {squad} {predictions_list}",
         "predictions must be a JSON object", None),
    Case("squad-eval-prediction-not-text", "squad-eval {squad} {predictions_number}",
         "question q0-0 must be a string", None),
    Case("squad-eval-missing-na-probs", "squad-eval {squad} {predictions} --na-prob-file {missing_file}",
         "not found", None),
    Case("squad-eval-na-prob-not-number", "squad-eval {squad} {predictions} --na-prob-file {na_probs_text}",
         "question q0-0 must be a finite number", None),
    Case("squad-eval-out-file-under-file", "squad-eval {squad} {predictions} --out-file {file}/scores.json",
         "a file is in the way", "{file}"),
    Case("squad-eval-threshold-not-number", "squad-eval {squad} {predictions} --na-prob-thresh high",
         "argument --na-prob-thresh: must be a finite number, got 'high'", None),
    # pretrain --------------------------------------------------------------------------------------
    # pretrain-data ---------------------------------------------------------------------------------
    Case("pretrain-data-empty-corpus", "pretrain-data {empty_corpus} --tokenizer {qa} --output {out}",
         "no instance can be made"),
    Case("pretrain-data-binary-file", "pretrain-data {binary_corpus} --tokenizer {qa} --output {out}",
         "binary data, not text"),
    Case("pretrain-data-missing-file", "pretrain-data {missing_file} --tokenizer {qa} --output {out}", "no such file"),
    Case("pretrain-data-tokenizer-without-vocab", "pretrain-data {text_corpus} --tokenizer {empty_dir} --output {out}",
         "not a tokenizer directory"),
    Case("pretrain-data-short-rows", "pretrain-data {text_corpus} --tokenizer {qa} --output {out} --max-seq-length 5",
         "argument --max-seq-length: must be an integer >= 8"),
    Case("pretrain-data-output-not-empty", "pretrain-data {text_corpus} --tokenizer {qa} --output {full_dir}",
         "exists and is not empty", "{full_dir}"),
    Case("pretrain-no-config", "pretrain --data {pretrain_data} --output {out}", "give --config"),
    Case("pretrain-unknown-preset", "pretrain --config no-such-preset --data {pretrain_data} --output {out}",
         "neither a preset"),
    Case("pretrain-data-not-data-dir", "pretrain --config {pretrain_config} --data {empty_dir} --output {out}",
         "not a pretraining data directory"),
    Case("pretrain-data-missing", "pretrain --config {pretrain_config} --data {missing_dir} --output {out}",
         "no such pretraining data directory"),
    Case("pretrain-dev-not-data-dir", "pretrain --config {pretrain_config} --data {pretrain_data} --dev {full_dir} "
         "--output {out}", "not a pretraining data directory"),
    Case("pretrain-config-disagrees-with-init", "pretrain --config {pretrain_config_wide} --init-from {pretrain_model} "
         "--data {pretrain_data} --output {out}", "intermediate_size 128 vs 64"),
    Case("pretrain-init-from-not-model", "pretrain --init-from {empty_dir} --data {pretrain_data} --output {out}",
         "must be a model directory"),
    Case("pretrain-vocab-too-small", "pretrain --config {pretrain_config_small_vocab} --data {pretrain_data} "
         "--output {out}", "more ids than --config"),
    Case("pretrain-rows-too-long", "pretrain --config {pretrain_config_short} --data {pretrain_data} --output {out}",
         "'s max_position_embeddings 16"),
    Case("pretrain-zero-batch", "pretrain --config {pretrain_config} --data {pretrain_data} --output {out} "
         "--batch-size 0", "argument --batch-size: must be an integer >= 1, got 0"),
    Case("pretrain-nan-learning-rate", "pretrain --config {pretrain_config} --data {pretrain_data} --output {out} "
         "--learning-rate nan", "argument --learning-rate: must be a finite number > 0"),
    Case("pretrain-masked-lm-prob", "pretrain --config {pretrain_config} --data {pretrain_data} --output {out} "
         "--masked-lm-prob 1.5", "argument --masked-lm-prob: must be a finite number > 0 and < 1"),
    Case("pretrain-unknown-optimizer", "pretrain --config {pretrain_config} --data {pretrain_data} --output {out} "
         "--optimizer sgd", "invalid choice: 'sgd'"),
    Case("pretrain-earlier-run", "pretrain --config {pretrain_config} --data {pretrain_data} --output {earlier_run}",
         "already holds a run", "{earlier_run}"),
    Case("evaluate-pretraining-not-data-dir", "evaluate pretraining --model {pretrain_model} --data {empty_dir} "
         "--output {out}", "not a pretraining data directory"),
    Case("evaluate-pretraining-onnx", "evaluate pretraining --model {pretrain_model} --data {pretrain_data} "
         "--output {out} --backend onnx", "pretraining is evaluated on the Paddle model"),
    Case("evaluate-pretraining-qa-model", "evaluate pretraining --model {qa} --data {pretrain_data} --output {out}",
         "the model is a MobileBertForQuestionAnswering"),
    # bench -----------------------------------------------------------------------------------------
    Case("bench-model-missing", "bench --model {missing_dir} --output {out}", "no such model directory"),
    Case("bench-model-no-weights", "bench --model {no_weights} --output {out}", "no weights found"),
    Case("bench-model-bert-config", "bench --model {bert} --output {out}", "model_type is 'bert', not 'mobilebert'"),
    Case("bench-zero-batch", "bench --model {qa} --output {out} --batch 0",
         "argument --batch: must be comma-separated integers >= 1"),
    Case("bench-batch-not-int", "bench --model {qa} --output {out} --batch 1,many", "argument --batch: must be comma-separated integers >= 1 and <= 4096, got '1,many'"),
    Case("bench-zero-runs", "bench --model {qa} --output {out} --runs 0", "argument --runs: must be an integer >= 1, got 0"),
    Case("bench-unknown-backend", "bench --model {qa} --output {out} --backends tvm", "unknown tvm"),
    Case("bench-too-long-seq", "bench --model {qa} --output {out} --seq 1024",
         "exceeds the model's max_position_embeddings"),
    Case("bench-zero-threads", "bench --model {qa} --output {out} --threads 0", "argument --threads: must be an integer >= 1"),
    Case("bench-negative-pause", "bench --model {qa} --output {out} --pause -1",
         "argument --pause: must be a finite number >= 0 and <= 3600, got -1"),
    Case("bench-nan-pause", "bench --model {qa} --output {out} --pause nan",
         "argument --pause: must be a finite number >= 0 and <= 3600, got nan"),
    Case("bench-output-under-file", "bench --model {qa} --output {file}/bench", "not writable", "{file}"),
]

MAX_POSITIONS = 384   # the tiny models take the recipe's default --max-seq-length (SQuAD 384, GLUE 128)
PARALLEL = 4
TIMEOUT = 120   # a case that starts real work instead of failing would otherwise run for minutes


# --------------------------------------------------------------------------------------------
# Inputs, built once in-process
# --------------------------------------------------------------------------------------------

def save_head(directory: Path, head: str, **config_changes) -> Path:
    """A randomly initialised tiny model with a head, as `finetune` would save it."""
    import paddle
    from tiny_tasks import TINY_CONFIG, VOCAB

    from mobilebert_paddle.model import network as model_module
    from mobilebert_paddle.model.config import MobileBertConfig

    paddle.seed(0)
    config = MobileBertConfig(vocab_size=len(VOCAB), **{**TINY_CONFIG, **config_changes})
    getattr(model_module, head)(config).save_pretrained(directory, tokenizer=make_tokenizer())
    return directory


def copy_model_dir(source: Path, directory: Path, drop: tuple[str, ...] = ()) -> Path:
    directory.mkdir()
    for path in source.iterdir():
        if path.name not in drop:
            (directory / path.name).write_bytes(path.read_bytes())
    return directory


def with_config(source: Path, directory: Path, text: str) -> Path:
    copy_model_dir(source, directory)
    (directory / "config.json").write_text(text, encoding="utf-8")
    return directory


def build_model_inputs(root: Path, paths: dict) -> None:
    import transformers
    from reference import make_hf_model, save_hf

    from mobilebert_paddle.model.convert import convert

    paths["base"] = make_tiny_model_dir(root / "base", max_position_embeddings=MAX_POSITIONS)
    paths["qa"] = save_head(root / "qa", "MobileBertForQuestionAnswering", max_position_embeddings=MAX_POSITIONS)
    paths["cls"] = save_head(root / "cls", "MobileBertForSequenceClassification", max_position_embeddings=MAX_POSITIONS,
                             id2label={0: "entailment", 1: "not_entailment"})
    paths["hf"] = save_hf(make_hf_model("MobileBertForQuestionAnswering"), root / "hf")
    convert(paths["hf"], root / "hf_as_paddle")
    paths["hf_as_paddle"] = root / "hf_as_paddle"
    paths["pretraining"] = save_head(root / "pretraining", "MobileBertForPreTraining",
                                     max_position_embeddings=MAX_POSITIONS)
    student = {key: value for key, value in json.loads((paths["pretraining"] / "config.json").read_text()).items()
               if key not in ("architectures", "id2label", "label2id")}
    write_json(paths, root, "student_wider", {**student, "hidden_size": 2 * student["hidden_size"]})
    write_json(paths, root, "student_other_vocab", {**student, "vocab_size": student["vocab_size"] + 7})
    paths["no_weights"] = copy_model_dir(paths["qa"], root / "no_weights", drop=("model.safetensors",))
    paths["bert"] = root / "bert"
    paths["bert"].mkdir()
    transformers.BertConfig(vocab_size=30).to_json_file(paths["bert"] / "config.json")
    (paths["bert"] / "vocab.txt").write_text((paths["qa"] / "vocab.txt").read_text())
    paths["config_list"] = with_config(paths["qa"], root / "config_list", "[1, 2]")
    config = json.loads((paths["qa"] / "config.json").read_text())
    paths["config_bad_value"] = with_config(paths["qa"], root / "config_bad_value",
                                            json.dumps({**config, "hidden_size": "wide"}))
    paths["config_malformed"] = with_config(paths["qa"], root / "config_malformed", '{"hidden_size": 64,')
    paths["disagree"] = with_config(paths["qa"], root / "disagree", json.dumps({**config, "hidden_size": 32}))
    paths["truncated"] = copy_model_dir(paths["qa"], root / "truncated")
    weights = (paths["truncated"] / "model.safetensors").read_bytes()
    (paths["truncated"] / "model.safetensors").write_bytes(weights[:len(weights) // 2])


def build_pretraining_inputs(root: Path, paths: dict) -> None:
    """A DATA_DIR of `pretrain-data` (tiny vocabulary, 32-token rows), a ForPreTraining model dir
    with the same vocabulary, and config.json files that disagree with them in one way each."""
    from tiny_tasks import TINY_CONFIG, VOCAB

    from mobilebert_paddle.pretraining.corpus import CorpusSettings, write_pretraining_data

    documents = ["\n".join(f"the w{(document * 7 + line) % 40} is red ." for line in range(6)) for document in range(8)]
    (root / "corpus.txt").write_text("\n\n".join(documents) + "\n")
    paths["text_corpus"] = root / "corpus.txt"
    paths["empty_corpus"] = root / "empty_corpus.txt"
    paths["empty_corpus"].write_text("\n\n")
    paths["binary_corpus"] = root / "binary_corpus.txt"
    paths["binary_corpus"].write_bytes(b"a sentence.\n\x00\x01\x02 binary\n")
    paths["pretrain_data"] = root / "pretrain_data"
    write_pretraining_data([root / "corpus.txt"], make_tokenizer(), paths["pretrain_data"],
                           CorpusSettings(max_seq_length=32))
    paths["pretrain_model"] = save_head(root / "pretrain_model", "MobileBertForPreTraining",
                                        max_position_embeddings=MAX_POSITIONS)
    config = {**TINY_CONFIG, "vocab_size": len(VOCAB), "max_position_embeddings": MAX_POSITIONS}
    for name, changes in (("pretrain_config", {}), ("pretrain_config_wide", {"intermediate_size": 128}),
                          ("pretrain_config_small_vocab", {"vocab_size": 10}),
                          ("pretrain_config_short", {"max_position_embeddings": 16})):
        write_json(paths, root, name, {**config, **changes})


def build_file_inputs(root: Path, paths: dict) -> None:
    paths["file"] = root / "a_file.txt"
    paths["file"].write_text("not a directory\n")
    paths["missing_file"] = root / "missing_file.json"
    paths["missing_dir"] = root / "missing_dir"
    paths["empty_dir"] = root / "empty_dir"
    paths["empty_dir"].mkdir()
    paths["full_dir"] = root / "full_dir"                 # a directory of the user's, not a model / export
    paths["full_dir"].mkdir()
    (paths["full_dir"] / "notes.txt").write_text("mine\n")
    paths["squad"] = write_marker_squad(root / "squad.json", 4, seed=0)
    paths["squad_malformed"] = root / "squad_malformed.json"
    paths["squad_malformed"].write_text('{"data": [{"title": "x", "paragraphs": [')
    paths["squad_no_data"] = root / "squad_no_data.json"
    paths["squad_no_data"].write_text('{"version": "1.1"}')
    bad = json.loads(paths["squad"].read_text())
    bad["data"][0]["paragraphs"][1]["qas"][0]["question"] = 17
    paths["squad_bad_record"] = root / "squad_bad_record.json"
    paths["squad_bad_record"].write_text(json.dumps(bad))
    question_ids = [qa["id"] for paragraph in bad["data"][0]["paragraphs"] for qa in paragraph["qas"]]
    write_json(paths, root, "predictions", {qid: "w1" for qid in question_ids})
    write_json(paths, root, "predictions_list", ["w1"] * len(question_ids))
    write_json(paths, root, "predictions_number", {qid: 3 for qid in question_ids})
    write_json(paths, root, "na_probs_text", {qid: "high" for qid in question_ids})
    paths["tsv"] = write_colour_pairs(root / "train.tsv", 8, seed=0)
    lines = paths["tsv"].read_text().splitlines()
    write_text(paths, root, "tsv_short_row", lines[:2] + ["1\tthe w1 is red\tentailment"] + lines[3:])
    write_text(paths, root, "tsv_bad_label", lines[:2] + [lines[2].rsplit("\t", 1)[0] + "\tmaybe"] + lines[3:])
    paths["mnli_dev"] = write_mnli_dev(root / "dev_matched.tsv", 4, seed=0)
    for name in ("earlier_run", "earlier_run_2"):          # a finished run's files (enough to be recognised)
        paths[name] = root / name
        (paths[name] / "best").mkdir(parents=True)
        (paths[name] / "best" / "config.json").write_text("{}\n")
        (paths[name] / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    paths["blank"] = " "


def write_json(paths: dict, root: Path, name: str, value) -> None:
    paths[name] = root / f"{name}.json"
    paths[name].write_text(json.dumps(value))


def write_text(paths: dict, root: Path, name: str, lines: list[str]) -> None:
    paths[name] = root / f"{name}.tsv"
    paths[name].write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Running the cases
# --------------------------------------------------------------------------------------------

class Outcome(NamedTuple):
    completed: subprocess.CompletedProcess
    output: Path | None
    before: dict | None      # snapshot of the output path before the run (None: did not exist)
    after: dict | None


def snapshot(path: Path) -> dict | None:
    """{relative path: sha256 (files) or 'dir'} of everything at `path`; None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    entries = {".": "dir"}
    for item in sorted(path.rglob("*")):
        key = str(item.relative_to(path))
        entries[key] = "dir" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
    return entries


def user_environment() -> dict:
    """The environment a user would have: no OMP_NUM_THREADS, Python warnings shown."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_NUM_THREADS", "PYTHONWARNINGS", "HF_HUB_OFFLINE")}
    return env


def substitute(template: str, paths: dict) -> str:
    return template.format(**{key: str(value) for key, value in paths.items()})


def run_case(case: Case, paths: dict, outputs: Path) -> Outcome:
    case_paths = {**paths, "out": outputs / case.id}
    argv = [substitute(part, case_paths) for part in case.argv.split(" ")]
    output = Path(substitute(case.output, case_paths)) if case.output else None
    before = snapshot(output) if output else None
    completed = subprocess.run([sys.executable, "-m", "mobilebert_paddle", *argv], capture_output=True, text=True,
                               env=user_environment(), timeout=TIMEOUT, cwd=outputs)
    return Outcome(completed, output, before, snapshot(output) if output else None)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("inputs")
    outputs = tmp_path_factory.mktemp("outputs")
    paths: dict = {}
    build_file_inputs(root, paths)
    build_model_inputs(root, paths)
    build_pretraining_inputs(root, paths)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {case.id: pool.submit(run_case, case, paths, outputs) for case in CASES}
        return {case_id: future.result() for case_id, future in futures.items()}


def case_params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", case_params())
def test_bad_input_gives_one_line_and_exit_2(case: Case, outcomes):
    outcome = outcomes[case.id]
    completed = outcome.completed
    command = case.argv.split(" ")[0]
    lines = completed.stderr.splitlines()
    assert "Traceback" not in completed.stderr, completed.stderr
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(f"mobilebert {command}: error: "), lines[0]
    assert case.fragment in lines[0], lines[0]
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    if outcome.output is not None:
        assert outcome.after == outcome.before, f"{outcome.output} changed: {outcome.before} -> {outcome.after}"


def test_every_subcommand_has_bad_input_cases():
    from mobilebert_paddle.cli import COMMANDS

    covered = {case.argv.split(" ")[0] for case in CASES}
    assert covered == set(COMMANDS)
    assert len({case.id for case in CASES}) == len(CASES)
