"""The device a command runs on: `--device cpu|gpu|auto`, checked against the Paddle build."""


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
