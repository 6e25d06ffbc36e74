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

from .errors import UserInputError


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
