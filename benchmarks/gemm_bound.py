"""How near the FLOP floor float32 can get at one shape: every matmul of a forward pass timed on
its own, at its own shape, against the large matmul `mobilebert bench` takes for its floor.

`bench`'s floor is the model's FLOPs divided by the rate of a 2048^3 float32 matmul. This script
times each distinct matmul of the encoder (every Linear per token, and the two batched attention
products) with torch (MKL), alone, with hot caches, best of `--rounds` rounds interleaved with
the large matmul, and sums FLOPs / rate over the model's matmuls. That sum, as a multiple of the
floor, bounds what any float32 forward pass can reach here: a real one is slower still (weights
stream from memory layer after layer, and softmax and element-wise work are not counted).

    python benchmarks/gemm_bound.py --batch 1 --seq 128 --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

LARGE = (2048, 2048, 2048)


def model_matmuls(preset: str, batch: int, length: int) -> tuple:
    """({(batches, m, k, n): count} of the encoder's matmuls (task heads and pooler left out), config)."""
    import paddle.nn as nn

    from mobilebert_paddle.model.config import load_config
    from mobilebert_paddle.model.network import MobileBertModel

    config = load_config(preset)
    model = MobileBertModel(config)
    shapes = Counter()
    for name, layer in model.named_sublayers():
        if isinstance(layer, nn.Linear) and "pooler" not in name:
            in_features, out_features = layer.weight.shape
            shapes[(1, batch * length, in_features, out_features)] += 1
    heads, width = config.num_attention_heads, config.true_hidden_size
    head_size = width // heads
    shapes[(batch * heads, length, head_size, length)] += config.num_hidden_layers      # scores
    shapes[(batch * heads, length, length, head_size)] += config.num_hidden_layers      # weighted sum
    return shapes, config


def flops(shape) -> float:
    batches, m, k, n = shape
    return 2.0 * batches * m * k * n


def best_rates(shapes, rounds: int, seconds: float = 0.02) -> dict:
    """GFLOP/s of each shape: best over rounds of a timed loop of ~`seconds`."""
    import torch

    rng = np.random.default_rng(0)
    operands = {}
    for shape in shapes:
        batches, m, k, n = shape
        left = torch.from_numpy(rng.standard_normal((batches, m, k), dtype=np.float32))
        right = torch.from_numpy(rng.standard_normal((batches, k, n), dtype=np.float32))
        operands[shape] = (left, right)
    best = {shape: float("inf") for shape in shapes}
    for _ in range(rounds):
        for shape, (left, right) in operands.items():
            repeats = max(1, int(seconds * 3e11 / flops(shape)))
            torch.bmm(left, right)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.bmm(left, right)
            best[shape] = min(best[shape], (time.perf_counter() - start) / repeats)
        time.sleep(0.05)
    return {shape: flops(shape) / best[shape] / 1e9 for shape in shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mobilebert")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    import torch

    from mobilebert_paddle.tools.bench import model_flops

    torch.set_num_threads(args.threads)
    shapes, config = model_matmuls(args.preset, args.batch, args.seq)
    total = sum(flops(shape) * count for shape, count in shapes.items())
    expected = model_flops(config, args.batch, args.seq, "MobileBertModel")
    pooler = 2.0 * args.batch * config.hidden_size ** 2 if config.classifier_activation else 0.0
    assert abs(total - (expected - pooler)) <= 1e-9 * expected, (total, expected - pooler)   # the same count as bench
    large = (1, *LARGE)
    rates = best_rates([large, *shapes], args.rounds)
    floor_ms = total / (rates[large] * 1e9) * 1e3
    bound_ms = sum(flops(shape) * count / (rates[shape] * 1e9) for shape, count in shapes.items()) * 1e3
    print(f"{args.batch}x{args.seq}, {args.threads} threads: {total / 1e9:.2f} GFLOP; 2048^3 matmul "
          f"{rates[large]:.1f} GFLOP/s -> floor {floor_ms:.2f} ms")
    print(f"{'batches x (m, k) @ (k, n)':30s} {'count':>5s} {'GFLOP/s':>8s} {'share of FLOPs':>14s}")
    for shape, count in sorted(shapes.items(), key=lambda item: -flops(item[0]) * item[1]):
        batches, m, k, n = shape
        print(f"{f'{batches} x ({m}, {k}) @ ({k}, {n})':30s} {count:5d} {rates[shape]:8.1f} "
              f"{flops(shape) * count / total:14.1%}")
    print(f"matmuls alone at their shapes: {bound_ms:.2f} ms = {bound_ms / floor_ms:.2f}x the floor")


if __name__ == "__main__":
    main()
