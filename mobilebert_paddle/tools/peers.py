"""`bench --peers`: what a user would run instead of this project, built in the same process from
the same weights (HF's PyTorch model with the Paddle weights converted back) and timed
interleaved with our paths.

Every peer starts from the HuggingFace model exported by `torch.onnx.export` (the TorchScript
exporter, opset 17, dynamic batch and length), the route the ONNX Runtime and OpenVINO guides
give for BERT-like models:

- peer-hf-onnx-ort: ONNX Runtime on that export after ONNX Runtime's transformers optimizer
  (`onnxruntime.transformers.optimizer`, model_type "bert"); its fusions start from LayerNorm
  nodes, so on MobileBERT's NoNorm none fires and what remains is ONNX Runtime's own graph
  optimisation. One session with intra-op threads, as a user would make it.
- peer-hf-openvino: OpenVINO on the same export, float32 (INFERENCE_PRECISION_HINT f32), one
  latency-mode compilation with dynamic shapes (what `compile_model` gives; our own OpenVINO
  paths add per-shape compilations and one stream per thread for large batches, inference/predictors.py).
- peer-hf-openvino-bf16: the same, on OpenVINO's default precision for this CPU (bf16 where the
  CPU has it: not exact, compared with our bf16 path only).
- peer-hf-openvino-int8: NNCF post-training int8 on the export (transformer preset, the same
  calibration windows as ours, nothing left in float), run by OpenVINO.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..core.errors import UserInputError
from ..core.logs import quiet_root_logger, stdout_to_stderr
from ..inference.predictors import (
    MODEL_INPUT_NAMES,
    OnnxPredictor,
    OpenVinoPredictor,
    bench_inputs,
    openvino_core,
    output_names,
)
from ..inference.quantize import quantize_static_openvino
from ..model.config import MobileBertConfig

logger = logging.getLogger(__name__)

PEERS = ("peer-hf-onnx-ort", "peer-hf-openvino", "peer-hf-openvino-bf16", "peer-hf-openvino-int8")
HF_ONNX_NAME = "hf.onnx"


def available_peers() -> list:
    """The peers this installation can build (the OpenVINO ones need openvino, int8 needs nncf)."""
    import importlib.util

    has = {name: importlib.util.find_spec(name) is not None for name in ("openvino", "nncf")}
    return [name for name in PEERS if "openvino" not in name or has["openvino"] and ("int8" not in name or has["nncf"])]


def build_peer(name: str, hf_model, config: MobileBertConfig, staging: Path, threads: int,
               calibration: Optional[dict]):
    """A callable(input_ids, token_type_ids, attention_mask) -> tuple of arrays for peer `name`."""

    names = output_names(config.architectures[0])
    exported = staging / HF_ONNX_NAME
    if not exported.is_file():
        export_hf_onnx(hf_model, names, exported)
    if name == "peer-hf-onnx-ort":
        optimized = staging / "hf-ort-optimized.onnx"
        optimize_for_ort(exported, config, optimized)
        return OnnxPredictor(config, staging, str(optimized), names, threads, split_batches=False)
    if name == "peer-hf-openvino":
        return OpenVinoPredictor(config, staging, exported, names, threads, precision="f32", tuned=False)
    if name == "peer-hf-openvino-bf16":

        default = openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        return OpenVinoPredictor(config, staging, exported, names, threads, precision=default, tuned=False)
    if name == "peer-hf-openvino-int8":
        return OpenVinoPredictor(config, staging, quantize_hf_openvino(exported, staging, calibration), names, threads,
                                 tuned=False)
    raise UserInputError(f"unknown peer {name!r}")


def export_hf_onnx(hf_model, names, path: Path) -> None:
    """torch.onnx.export of the HF model over (B, T)-dynamic int64 inputs."""
    import torch

    class ByPosition(torch.nn.Module):
        """HF's forward takes (input_ids, attention_mask, token_type_ids); ours (ids, types, mask)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, token_type_ids, attention_mask):
            output = self.inner(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            return tuple(output[key] for key in output.keys())[:len(names)]

    example = tuple(torch.ones((2, 16), dtype=torch.int64) for _ in MODEL_INPUT_NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in MODEL_INPUT_NAMES}
    axes.update({name: {0: "batch"} for name in names})
    with torch.inference_mode(False), torch.no_grad(), stdout_to_stderr():
        torch.onnx.export(ByPosition(hf_model).eval(), example, str(path), input_names=list(MODEL_INPUT_NAMES),
                          output_names=list(names), dynamic_axes=axes, opset_version=17, dynamo=False)


def optimize_for_ort(path: Path, config: MobileBertConfig, output: Path) -> None:
    from onnxruntime.transformers import optimizer

    with quiet_root_logger():
        model = optimizer.optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.true_hidden_size)
    fused = {op: count for op, count in model.get_fused_operator_statistics().items() if count}
    logger.info("ONNX Runtime transformers optimizer on the HF export fused: %s", fused or "nothing")
    model.save_model_to_file(str(output))


def quantize_hf_openvino(path: Path, staging: Path, calibration: dict) -> Path:
    import openvino

    ov_model = quantize_static_openvino(openvino.convert_model(str(path)), calibration, float_nodes=())
    output = staging / "hf-nncf-int8.xml"
    openvino.save_model(ov_model, str(output), compress_to_fp16=False)
    return output


def random_calibration(config: MobileBertConfig, rows: int = 64, length: int = 128, seed: int = 1) -> dict:
    """Calibration windows of random ids, for timing only (the ranges, not the answers, matter
    for speed); `bench --calibration-data FILE` uses the task's data instead."""

    length = min(length, config.max_position_embeddings)
    input_ids, token_type_ids, attention_mask = bench_inputs(config, rows, length, seed)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

