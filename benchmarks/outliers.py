"""An outlier testbed: a trained model rescaled so a few channels of its residual stream reach
~1e6-1e7, as Google's MobileBERT checkpoint's do, computing the same function (issue 21).

Small models trained here have hidden states of order 1-500; the released checkpoint's reach
~1e7 in a few channels, which is what breaks per-tensor int8 activation scales (and float16).
With NoNorm every normalisation is element-wise, so channel c of the H-wide residual stream
(the embedding output and every layer's output) can be multiplied by s exactly:

  writers (x s in channel c):  the embedding NoNorm's beta, and either its gamma
                                (`placement="norm"`) or everything summed before it: the
                                embedding transformation's column c (and bias), the position and
                                token-type tables' column c (`placement="inputs"`, the default);
                                in every layer the output bottleneck's Linear, column c and bias,
                                and its NoNorm's beta (the residual it adds is already x s);
  readers  (/ s in row c):      every Linear that reads the stream: each layer's bottleneck
                                input, shared query/key bottleneck and value (or query/key/value
                                in the IB-BERT layout), and the head: the pooler's dense (or, with
                                no pooler activation, the classifier reading [CLS]), the QA /
                                token / sequence classifiers, the MLM transform.

Where the factor sits matters to `--fuse`: fuse.py carries the stream as z with
`actual = scale * z + shift`, scale the product of the NoNorm gammas, so the issue's placement
("norm": s in the embedding gamma) is divided out of z and the fused graph never sees the
outlier. Scaling what is summed before the embedding NoNorm gives the same actual stream and the
same outputs, but z carries the outlier too; nothing in a checkpoint says which of the two
Google's is, so "inputs" (the placement no rewrite undoes) is the default.

Each channel's factor is the power of two that brings its largest value on the probe batch to
between half of `--reach` (1e7) and `--reach`: the checkpoint's magnitude, and every rescaled
weight is exact, so the float outputs equal the original's to float32 rounding
(tests/test_outliers.py checks).

    python benchmarks/outliers.py --model runs/quickstart/squad1/best --output runs/outliers
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilebert_paddle.inference.outliers import PLACEMENTS

DEFAULT_REACH = 1e7
DEFAULT_COUNT = 2


def pick_channels(hidden_size: int, count: int = DEFAULT_COUNT, seed: int = 0) -> list[int]:
    return sorted(int(channel) for channel in np.random.default_rng(seed).choice(hidden_size, count, replace=False))


def power_of_two_factors(magnitudes: np.ndarray, channels: Sequence[int], reach: float = DEFAULT_REACH) -> list:
    """Per channel, the power of two that brings its magnitude into (reach / 2, reach]."""
    return [float(2.0 ** np.floor(np.log2(reach / max(float(magnitudes[channel]), 1e-30)))) for channel in channels]


def add_outliers(model, channels: Sequence[int], scale: float | Sequence[float],
                 placement: str = "inputs") -> list:
    """Multiply channels `channels` of `model`'s residual stream by `scale` (one factor, or one
    per channel), in place, keeping every output of the head unchanged (up to float rounding):
    mobilebert_paddle.outliers.rescale_stream, the transform `export --quantize` uses the other
    way round. Returns the names of the parameters changed."""
    from mobilebert_paddle.inference.outliers import rescale_stream

    return rescale_stream(model, channels, scale, placement)


def stream_magnitudes(model, batch: dict) -> np.ndarray:
    """max |h| per channel of the residual stream (embedding output and every layer's), (H,)."""
    from mobilebert_paddle.inference.outliers import stream_magnitudes as per_layer

    return per_layer(model, batch).max(axis=0)


def outputs(model, batch: dict) -> list:
    import paddle

    model.eval()
    with paddle.no_grad():
        result = model(**{name: paddle.to_tensor(value) for name, value in batch.items()})
    result = (result,) if isinstance(result, paddle.Tensor) else result
    return [item.numpy() for item in result]


def write_outlier_model(model_dir: Path, output: Path, channels: Sequence[int] | None = None,
                        count: int = DEFAULT_COUNT, reach: float = DEFAULT_REACH, scale: float | None = None,
                        placement: str = "inputs", batch: dict | None = None) -> dict:
    """Load the model dir, rescale `channels` (default: `count` seeded picks) by `scale`, or by
    the powers of two that make them reach `reach` on `batch` (default: the export probe
    batch), check the outputs are unchanged there, write the model to `output` with its
    tokenizer; returns a summary."""
    from mobilebert_paddle.core.numerics import relative_error
    from mobilebert_paddle.inference.predictors import load_eager_model, probe_batch
    from mobilebert_paddle.model.modeldir import save_paddle_model_dir

    model, config = load_eager_model(Path(model_dir))
    batch = batch if batch is not None else probe_batch(config, config.architectures[0])
    channels = list(channels) if channels is not None else pick_channels(config.hidden_size, count)
    before, magnitudes_before = outputs(model, batch), stream_magnitudes(model, batch)
    factors = [scale] * len(channels) if scale is not None else power_of_two_factors(magnitudes_before, channels, reach)
    add_outliers(model, channels, factors, placement)
    after, magnitudes_after = outputs(model, batch), stream_magnitudes(model, batch)
    errors = [relative_error(got, want) for got, want in zip(after, before)]
    others = np.delete(magnitudes_after, channels)
    save_paddle_model_dir(model, output, tokenizer_from=model_dir)
    return {"model": str(model_dir), "output": str(output), "channels": channels, "factors": factors,
            "placement": placement, "relative_error": max(errors),
            "stream_max_before": [float(magnitudes_before[channel]) for channel in channels],
            "stream_max_after": [float(magnitudes_after[channel]) for channel in channels],
            "other_channels_max": float(others.max()) if others.size else None}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model dir with a head (e.g. squad1/best)")
    parser.add_argument("--output", type=Path, required=True, help="outlier model dir to write")
    parser.add_argument("--channels", help="comma-separated channels to rescale (default: --count seeded picks)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="how many channels, when --channels is not given")
    parser.add_argument("--reach", type=float, default=DEFAULT_REACH,
                        help="bring each channel's largest value on the probe batch into (reach/2, reach] "
                             "with a power-of-two factor")
    parser.add_argument("--scale", type=float, help="instead of --reach: this factor on every channel")
    parser.add_argument("--placement", choices=PLACEMENTS, default="inputs",
                        help="inputs: the factor in what the embedding NoNorm sums; norm: in its gamma")
    args = parser.parse_args(argv)
    channels = [int(value) for value in args.channels.split(",")] if args.channels else None
    summary = write_outlier_model(args.model, args.output, channels, args.count, args.reach, args.scale,
                                  args.placement)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
