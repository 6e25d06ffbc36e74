"""int8: ONNX Runtime's dynamic quantization of the matmul weights (`--quantize int8`) and NNCF's
static quantization of an OpenVINO model calibrated on the task's own data (`--quantize
int8-static`). The task heads' matmuls stay float (they read the residual stream directly).
Before either, export.py has outliers.py move the residual stream's outlier channels into the
weights (a function-preserving rescale), so one ~1e7 channel cannot set every range.
"""


from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import UserInputError
from ..core.logs import quiet_root_logger, stdout_to_stderr
from ..model.config import MODEL_INPUT_NAMES, MobileBertConfig
from ..tasks.base import load_eval_sets
from ..tasks.registry import get_task
from ..tasks.settings import TaskSettings, check_sequence_length
from .predictors import OPENVINO_EXTRA

CALIBRATION_WINDOWS = 300               # static int8: windows sampled from --calibration-data


def quantize_int8(fp32_path: Path, int8_path: Path, float_weights: frozenset = frozenset()) -> None:
    """Dynamic quantization: int8 weights (per output channel), uint8 activations quantized per
    batch at run time, for every MatMul / Gemm except those whose weight is in `float_weights`.

    Measured on the quickstart's trained model (SQuAD dev, start/end argmax agreement with
    fp32): all matmuls quantized as ONNX Runtime's defaults do, 84%, EM -13. Two causes:
      * the task head reads the last hidden state, whose range (~+-500 there) is far wider
        than the logit differences that decide an answer; quantizing its input alone costs
        11 EM. The head is a single (H x labels) matmul, so it stays in float32;
      * on AVX2 without VNNI the uint8 x int8 kernel sums pairs of products in int16 and
        saturates when both factors are large; with full-range per-channel weights that
        happens (a weights-only fake quantization loses nothing). `reduce_range` keeps the
        weights to 7 bits, which cannot saturate, at the same speed.
    What remains (about 94% agreement there) is per-tensor activation quantization itself."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    keep = matmuls_reading(graph, float_weights)
    with quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep)


def head_weight_names(layer) -> frozenset:
    """Paddle names of the task head's parameters (everything outside embeddings and encoder);
    paddle2onnx keeps them as the ONNX initializer names."""
    backbone = ("embeddings.", "encoder.", "layer.")
    names = set()
    for path, parameter in layer.named_parameters():
        inner = path[len("mobilebert."):] if path.startswith("mobilebert.") else path
        if not inner.startswith(backbone):
            names.add(parameter.name)
    return frozenset(names)


def matmuls_reading(graph, weights: frozenset) -> list[str]:
    """Names of the MatMul / Gemm nodes whose right operand is one of `weights`, directly or through
    Casts (the task heads compute in float64: model.HeadLinear casts their weights first)."""
    producers = {output: node for node in graph.node for output in node.output}

    def source(name: str) -> str:
        while name in producers and producers[name].op_type == "Cast":
            name = producers[name].input[0]
        return name

    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and source(node.input[1]) in weights]


def quantize_static_openvino(ov_model, calibration: dict, float_nodes: Sequence[str]):
    """NNCF post-training quantization (transformer preset: int8 weights per channel, int8
    activations with ranges from the calibration windows, SmoothQuant); `float_nodes` stay float."""
    nncf = import_nncf()
    rows = len(calibration["input_ids"])
    items = [{name: np.ascontiguousarray(calibration[name][row:row + 1], dtype=np.int64) for name in MODEL_INPUT_NAMES}
             for row in range(rows)]
    with stdout_to_stderr(), quiet_root_logger():
        return nncf.quantize(ov_model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=rows, ignored_scope=nncf.IgnoredScope(names=list(float_nodes)))


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise UserInputError(f"--quantize int8-static needs NNCF, which is not installed: {OPENVINO_EXTRA}") from None
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def calibration_windows(model_dir: Path, config: MobileBertConfig, path: Path, count: int = CALIBRATION_WINDOWS,
                        seed: int = 0) -> dict:
    """Up to `count` model rows {name: (N, T) int64}, sampled (seeded) from a task data file cut
    into windows as `evaluate` cuts it, with the model's own window settings."""
    from ..model.tokenizer import MobileBertTokenizer

    task_name = config.extra.get("finetuning_task")
    if task_name is None and config.architectures[0] == "MobileBertForQuestionAnswering":
        task_name = "squad1"
    if task_name is None:
        raise UserInputError(f"{model_dir}: config.json names no finetuning_task, so --calibration-data "
                             "cannot be read as a task's data")
    task = get_task(task_name)
    settings = TaskSettings.from_args(argparse.Namespace(), task, config)
    check_sequence_length(settings.max_seq_length, config, model_dir)
    eval_set = load_eval_sets(task, [str(path)], MobileBertTokenizer.from_pretrained(model_dir), settings)[0]
    inputs = eval_set.model_inputs()
    rows = len(inputs["input_ids"])
    if rows == 0:
        raise UserInputError(f"--calibration-data {path}: no examples")
    chosen = np.sort(np.random.default_rng(seed).choice(rows, min(count, rows), replace=False))
    return {name: np.asarray(inputs[name][chosen], dtype=np.int64) for name in MODEL_INPUT_NAMES}
