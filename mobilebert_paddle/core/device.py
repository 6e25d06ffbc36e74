"""The device a command runs on: `--device cpu|gpu|auto`, checked against the Paddle build; and
the CPU math library's dispatch on AMD processors (`use_avx2_mkl_on_amd`)."""


from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

from .errors import UserInputError

MKL_DISPATCH_VARIABLE = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2 = "5"


def use_avx2_mkl_on_amd(environ: MutableMapping[str, str] = os.environ,
                        cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Have Paddle's MKL use its AVX2 kernels on an AMD processor; True when set here.

    Paddle's CPU wheels bundle MKL 2019 (libmklml_intel), which picks its kernels by CPU vendor:
    on any processor not made by Intel it runs a generic SSE path. Its matrix products, most of
    a training step, then run 2.5-3x slower than the AVX2 path the same processor supports
    (a 1024^3 product on one core of an AMD EPYC: 130-150 ms, 50 ms with AVX2; a full-size
    training step 35% faster; benchmarks/training_speed.py). MKL_DEBUG_CPU_TYPE=5 selects the
    AVX2 path; MKL reads it until 2020.0 and ignores it after, so it is harmless to newer builds
    and to PyTorch's MKL. Set only on a Linux AMD processor with AVX2 and when the user has not
    set it; it must be in the environment before Paddle's first matrix product (MKL reads it
    then; importing Paddle earlier is fine). The AVX2 kernels round differently from the SSE
    ones (float32 rounding, as any other BLAS would)."""
    if MKL_DISPATCH_VARIABLE in environ:
        return False
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    vendor = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if vendor != "AuthenticAMD" or "avx2" not in flags:
        return False
    environ[MKL_DISPATCH_VARIABLE] = MKL_AVX2
    return True


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
        copy_instead_of_strided_views()
    return name


def copy_instead_of_strided_views() -> None:
    """Paddle's CPU transpose, slice and reshape of a transposed tensor, with stride kernels on (the
    default), make strided views that later kernels turn back into dense tensors element by element
    (reshape's gradient of a transposed tensor: ~1.4 ms for 65k values). With the flag off they run
    Paddle's dense transpose kernels: an attention block's forward and backward at 4x128 takes 4.6 ms
    instead of 10.9 (PyTorch: 3.7), with bit-identical results (tests/test_train.py). Nothing here
    needs a strided view (no as_strided / view / in-place writes into slices)."""
    import paddle

    paddle.set_flags({"FLAGS_use_stride_kernel": False})
