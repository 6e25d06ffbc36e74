"""What a full-size pretraining run costs: FLOP count of a preset, a measured step here, and an
estimate of GPU-hours (clearly an estimate: the assumptions are printed with it).

FLOPs per trained token = 6 x N (forward 2N, backward 4N; N = parameters used by matmuls
at every token, i.e. without the embedding tables and the MLM output layer) + 12 x L x T x d
(attention scores and the weighted sum: 4 L T d forward, times 3 with backward; d = the width
attention works at) + 6 x V x H x P / T (the MLM output layer runs on P masked positions of T).

    python benchmarks/pretraining_cost.py --preset ib-bert --steps 500000 --batch 4096 --seq 512

The measured step (forward, backward and a LAMB update of the real-size model on this machine's
CPU) gives the FLOP rate this code reaches here, as a check on the count and for scale.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

# bf16 dense tensor-core peaks (vendor data sheets), FLOP/s.
GPU_PEAKS = {"A100": 312e12, "H100-SXM": 989e12}


def flops_per_token(model, config, seq: int, predictions: int) -> dict[str, float]:
    excluded = ("word_embeddings", "position_embeddings", "token_type_embeddings", "cls.predictions.dense",
                "cls.predictions.bias")
    dense = sum(math.prod(param.shape) for path, param in model.named_parameters()
                if not any(name in path for name in excluded))
    total = sum(math.prod(param.shape) for param in model.parameters())
    attention = 12 * config.num_hidden_layers * seq * config.true_hidden_size
    mlm_output = 6 * config.vocab_size * config.hidden_size * predictions / seq
    return {"parameters": total, "matmul_parameters": dense, "flops_per_token": 6 * dense + attention + mlm_output,
            "attention_share": attention / (6 * dense + attention + mlm_output)}


def measure_step(model, config, batch: int, seq: int, predictions: int, repeats: int) -> float:
    """Median seconds of one forward + backward + LAMB step at (batch, seq) on this machine."""
    import paddle
    import paddle.nn.functional as F

    optimizer = paddle.optimizer.Lamb(learning_rate=1e-4, parameters=model.parameters())
    rng = np.random.RandomState(0)
    ids = paddle.to_tensor(rng.randint(5, config.vocab_size, (batch, seq)))
    positions = paddle.to_tensor(np.sort(rng.rand(batch, seq).argsort(axis=1)[:, :predictions], axis=1))
    labels = paddle.to_tensor(rng.randint(5, config.vocab_size, (batch * predictions,)))
    times = []
    for _ in range(repeats + 1):          # the first step builds the optimizer state: not timed
        began = time.perf_counter()
        logits, relationship = model(ids, masked_positions=positions)
        loss = F.cross_entropy(logits.reshape([-1, config.vocab_size]), labels) + relationship.mean()
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        times.append(time.perf_counter() - began)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ib-bert", help="config preset (or config.json) to cost")
    parser.add_argument("--steps", type=int, default=500_000, help="optimizer steps of the full run")
    parser.add_argument("--batch", type=int, default=4096, help="global batch of the full run")
    parser.add_argument("--seq", type=int, default=512, help="tokens a row in the full run")
    parser.add_argument("--predictions", type=int, default=20, help="masked positions a row")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed share of the GPU's bf16 peak reached")
    parser.add_argument("--measure-batch", type=int, default=2, help="rows of the step measured here")
    parser.add_argument("--measure-seq", type=int, default=128, help="tokens a row in the step measured here")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps (after one untimed)")
    args = parser.parse_args()

    import paddle

    from mobilebert_paddle.model.config import load_config
    from mobilebert_paddle.model.network import MobileBertForPreTraining

    paddle.set_device("cpu")
    config = load_config(args.preset)
    model = MobileBertForPreTraining(config)
    full = flops_per_token(model, config, args.seq, args.predictions)
    tokens = args.steps * args.batch * args.seq
    run_flops = full["flops_per_token"] * tokens
    measured = flops_per_token(model, config, args.measure_seq, args.predictions)
    seconds = measure_step(model, config, args.measure_batch, args.measure_seq, args.predictions, args.repeats)
    cpu_rate = measured["flops_per_token"] * args.measure_batch * args.measure_seq / seconds
    report = {
        "preset": args.preset, "parameters": full["parameters"], "matmul_parameters": full["matmul_parameters"],
        "flops_per_token": full["flops_per_token"], "attention_share": round(full["attention_share"], 3),
        "run": {"steps": args.steps, "batch": args.batch, "seq": args.seq, "tokens": tokens, "flops": run_flops},
        "measured_here": {"batch": args.measure_batch, "seq": args.measure_seq, "seconds_per_step": round(seconds, 2),
                          "flops_per_second": cpu_rate, "run_years_at_this_rate": run_flops / cpu_rate / 3.15e7},
        "estimate": {f"{gpu} x8": {"assumed_mfu": args.mfu,
                                   "node_hours": run_flops / (8 * peak * args.mfu) / 3600,
                                   "gpu_hours": run_flops / (peak * args.mfu) / 3600}
                     for gpu, peak in GPU_PEAKS.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
