"""`mobilebert bench`: latency and throughput of every inference path, side by side, in one process.

For a model dir it builds every backend from the same weights -- Paddle eager, Paddle Inference
(with oneDNN, plain and fused, and without oneDNN), ONNX Runtime (plain, fused, int8), OpenVINO
(when named in --backends: float32 plain and fused, NNCF static int8, bf16), LiteRT (when named:
the .tflite in float32 and dynamic int8, one signature per timed length, one row per call as on a
phone, in ai-edge-litert's interpreter with XNNPACK), HuggingFace's PyTorch
model (the Paddle weights converted back in memory, model/convert.hf_twin) and, with --peers, what a
user would run instead (peers.py: the HF model through ONNX Runtime and OpenVINO) -- checks each one's
outputs against PyTorch, then times them interleaved (one call of each backend per round,
the order rotated every round so no backend always runs right after another) and reports the
median of `--runs` rounds after `--warmup` calls.

Each shape gets: ms per batch, sequences/s, the ratio to PyTorch, and the ratio to the FLOP
floor -- the model's FLOPs at that shape (counted analytically from the config: 2 x in x out
per Linear per token plus the two attention matmuls) divided by the rate a large float32
matmul reaches on this machine, measured in the same run (before each shape; the best rate
seen is used, since other processes can only lower it). Peak memory is the growth of the
resident set size (psutil, sampled every 2 ms) during a backend's warm-up calls at that
shape -- what a call needs beyond what the backend already holds; `built_mb` is what
building each backend added; `file_mb` is each export's model file(s) on disk.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_creatable_dir,
    ensure_writable_dir,
)
from ..core.logs import inputs_accepted
from ..core.numerics import relative_error
from ..inference.export import write_export
from ..inference.litert import ends_in_softmax, require_converter
from ..inference.predictors import (
    PADDLE_PREFIX,
    EagerPredictor,
    OnnxPredictor,
    OpenVinoPredictor,
    PaddleInferencePredictor,
    bench_inputs,
    default_threads,
    load_eager_model,
    load_litert,
    openvino_core,
    openvino_cpu,
    softmax_rows,
)
from ..inference.quantize import calibration_windows, import_nncf
from ..model.config import MobileBertConfig
from ..model.convert import hf_twin
from . import peers
from .peers import PEERS

logger = logging.getLogger(__name__)

class ExportSpec(NamedTuple):
    format: str
    fuse: bool = False
    quantize: Optional[str] = None
    onednn: bool = True           # Paddle Inference only
    precision: str = "f32"        # OpenVINO only: its INFERENCE_PRECISION_HINT


# name -> how it is exported; None = not an export. The peers (`--peers`) are in peers.py.
BENCH_BACKENDS = {
    "torch": None,
    "paddle-eager": None,
    "paddle-inference": ExportSpec("paddle"),
    "paddle-inference-fused": ExportSpec("paddle", fuse=True),
    "paddle-inference-no-onednn": ExportSpec("paddle", onednn=False),
    "onnx": ExportSpec("onnx"),
    "onnx-fused": ExportSpec("onnx", fuse=True),
    "onnx-int8": ExportSpec("onnx", quantize="int8"),
    "onnx-fused-int8": ExportSpec("onnx", fuse=True, quantize="int8"),
    "openvino": ExportSpec("openvino"),
    "openvino-fused": ExportSpec("openvino", fuse=True),
    "openvino-int8": ExportSpec("openvino", quantize="int8-static"),
    "openvino-fused-int8": ExportSpec("openvino", fuse=True, quantize="int8-static"),
    "openvino-bf16": ExportSpec("openvino", precision="bf16"),
    "openvino-fused-bf16": ExportSpec("openvino", fuse=True, precision="bf16"),
    "litert": ExportSpec("litert"),
    "litert-int8": ExportSpec("litert", quantize="int8"),
}
# Timed unless --backends says otherwise: the OpenVINO and LiteRT ones need optional extras.
DEFAULT_BACKENDS = [name for name in BENCH_BACKENDS if not name.startswith(("openvino", "litert"))]
REFERENCE = "torch"
# Bounds that keep a typo from allocating terabytes or sleeping for ever (one row of 512 int64 is 4 KB)
MAX_BATCH, MAX_THREADS, MAX_PAUSE = 4096, 1024, 3600.0


def precision_kind(name: str) -> str:
    """float32, bf16 or int8: which peers a path is compared with."""
    return "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"


# ----------------------------------------------------------------------------------------
# FLOPs and the machine's matmul rate
# ----------------------------------------------------------------------------------------

def model_flops(config: MobileBertConfig, batch: int, length: int, architecture: str) -> float:
    """Floating-point operations of one forward pass: 2 per multiply-add of every Linear
    (per token) and of the two attention matmuls (QK^T and PV); element-wise work is left out."""
    from ..model.network import attention_input_widths

    hidden, inner, embedding = config.hidden_size, config.true_hidden_size, config.embedding_size
    per_token = 0
    if config.trigram_input:
        per_token += 3 * embedding * hidden
    elif embedding != hidden:
        per_token += embedding * hidden
    layer = 0
    if config.use_bottleneck:
        layer += hidden * config.intra_bottleneck_size                      # bottleneck input
        if config.key_query_shared_bottleneck and not config.use_bottleneck_attention:
            layer += hidden * config.intra_bottleneck_size                  # shared query/key bottleneck
        layer += inner * hidden                                             # bottleneck output
    query_key_width, value_width = attention_input_widths(config)           # IB-BERT: all read the H-wide input
    layer += 2 * query_key_width * inner + value_width * inner + inner * inner   # query, key, value, attention output
    layer += config.num_feedforward_networks * 2 * inner * config.intermediate_size
    per_token += config.num_hidden_layers * layer
    attention = config.num_hidden_layers * 2 * length * length * inner     # per sequence
    head = head_multiply_adds(config, length, architecture)
    return 2.0 * (batch * length * per_token + batch * attention + batch * head)


def head_multiply_adds(config: MobileBertConfig, length: int, architecture: str) -> int:
    hidden, labels = config.hidden_size, config.num_labels
    pooler = hidden * hidden if config.classifier_activation else 0
    if architecture == "MobileBertForQuestionAnswering":
        return length * hidden * labels
    if architecture in ("MobileBertForSequenceClassification", "MobileBertForMultipleChoice"):
        return pooler + hidden * labels
    if architecture == "MobileBertForTokenClassification":
        return length * hidden * labels
    if architecture in ("MobileBertForMaskedLM", "MobileBertForPreTraining"):
        return length * (hidden * hidden + hidden * config.vocab_size) + pooler
    return pooler


def matmul_rate(size: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GFLOP/s of a size x size matmul, with numpy and with torch (if present)."""
    rng = np.random.default_rng(0)
    left, right = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    rates = {"numpy": _best_rate(lambda: left @ right, size, repeats)}
    try:
        import torch

        left_t, right_t = torch.from_numpy(left), torch.from_numpy(right)
        rates["torch"] = _best_rate(lambda: torch.matmul(left_t, right_t), size, repeats)
    except ImportError:
        pass
    return rates


def _best_rate(function: Callable, size: int, repeats: int) -> float:
    function()
    best = min(_seconds(function) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def _seconds(function: Callable) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------
# Building the backends
# ----------------------------------------------------------------------------------------

def torch_runner(hf_model):
    import torch

    def run(input_ids, token_type_ids, attention_mask):
        with torch.inference_mode():
            output = hf_model(input_ids=torch.from_numpy(input_ids), token_type_ids=torch.from_numpy(token_type_ids),
                              attention_mask=torch.from_numpy(attention_mask))
        return tuple(value.numpy() for value in output.values() if isinstance(value, torch.Tensor))

    return run


def build_backends(names: list, model, config: MobileBertConfig, model_dir: Path, staging: Path,
                   threads: int, calibration: Optional[dict] = None, seq_lengths: Optional[list] = None) -> tuple:
    """{name: callable(input_ids, token_type_ids, attention_mask) -> tuple of arrays}, the RSS
    each one added when built, and each export's model file size in MB. `calibration`: model
    inputs for the static int8 paths; `seq_lengths`: the LiteRT signatures (the timed lengths)."""

    backends, memory, sizes = {}, {}, {}
    hf_model = None
    for name in names:
        before = resident_mb()
        started = time.perf_counter()
        if name == "torch" or name in peers.PEERS:
            hf_model = hf_model if hf_model is not None else hf_twin(model, config, threads)
        if name == "torch":
            backends[name] = torch_runner(hf_model)
        elif name in peers.PEERS:
            backends[name] = peers.build_peer(name, hf_model, config, staging, threads, calibration)
        else:
            backends[name] = build_ours(name, model, config, model_dir, staging, threads, calibration, seq_lengths)
            if BENCH_BACKENDS[name] is not None:
                sizes[name] = model_files_mb(staging / name)
        memory[name] = resident_mb() - before
        logger.info("built %s in %.1f s", name, time.perf_counter() - started)
    return backends, memory, sizes


def model_files_mb(directory: Path) -> float:
    """Size of an export's model files (model.*: the graph and its weights, not config or tokenizer)."""
    return sum(path.stat().st_size for path in directory.glob("model.*") if path.is_file()) / 2 ** 20


def build_ours(name: str, model, config: MobileBertConfig, model_dir: Path, staging: Path, threads: int,
               calibration: Optional[dict], seq_lengths: Optional[list] = None):

    spec = BENCH_BACKENDS[name]
    if spec is None:
        return EagerPredictor(model, config, model_dir)
    directory = staging / name
    directory.mkdir()
    manifest = write_export(model, config, model_dir, directory, spec.format, fuse=spec.fuse, quantize=spec.quantize,
                            calibration=calibration, seq_lengths=seq_lengths if spec.format == "litert" else None)
    model_file = directory / manifest["model_file"]
    if spec.format == "litert":       # one row per call: batch B is B calls, as on a phone
        return load_litert(config, model_dir, directory, manifest, threads)
    if spec.format == "paddle":
        return PaddleInferencePredictor(config, model_dir, directory / PADDLE_PREFIX, manifest["outputs"], threads,
                                        mkldnn=spec.onednn)
    if spec.format == "openvino":
        return OpenVinoPredictor(config, model_dir, model_file, manifest["outputs"], threads, spec.precision)
    return OnnxPredictor(config, model_dir, str(model_file), manifest["outputs"], threads)


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

def resident_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


class PeakMemory:
    """Samples this process's RSS every few milliseconds while active (a background thread)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2 ** 20




def time_shape(backends: dict, inputs: tuple, runs: int, warmup: int, pause: float) -> dict:
    """{name: {"times": [...], "peak_mb": ...}} with the backends interleaved round by round.

    `pause` seconds of idle time separate consecutive calls: each runtime's worker threads
    spin for a while after a call (Intel OpenMP's KMP_BLOCKTIME is 200 ms, ONNX Runtime and
    GNU OpenMP spin too), and on a machine with few cores a backend timed while another's
    threads still spin runs several times slower than it would alone."""
    names = list(backends)
    peaks = {}
    for name in names:                       # warm-up, and the memory a call needs
        time.sleep(pause)
        with PeakMemory() as peak:
            for _ in range(max(warmup, 1)):
                backends[name](*inputs)
        peaks[name] = peak.added_mb
    times = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            times[name].append(_seconds(lambda run=backends[name]: run(*inputs)))
    return {name: {"times": times[name], "peak_mb": peaks[name]} for name in names}


def check_outputs(backends: dict, inputs: tuple, probabilities: bool = False) -> dict:
    """Relative error of every backend's outputs against the reference (PyTorch if timed);
    `probabilities`: compare a classifier's softmax (what its LiteRT file outputs), not logits."""

    def comparable(outputs):
        return [softmax_rows(output) for output in outputs] if probabilities else outputs

    reference_name = REFERENCE if REFERENCE in backends else next(iter(backends))
    expected = comparable(backends[reference_name](*inputs))
    errors = {}
    for name, backend in backends.items():
        actual = comparable(backend(*inputs))
        errors[name] = max(relative_error(got, want) for got, want in zip(actual, expected))
    return errors


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------

def summarise(results: dict, flops: float, rate_gflops: float, batch: int) -> dict:
    """Per backend: median and fastest ms, the ratio to PyTorch, to the FLOP floor, and to the
    best peer of the same precision (float32 / bf16 / int8), by medians and by fastest calls."""

    floor_ms = flops / (rate_gflops * 1e9) * 1e3
    medians = {name: float(np.median(result["times"])) * 1e3 for name, result in results.items()}
    fastest = {name: min(result["times"]) * 1e3 for name, result in results.items()}
    best_peer = {}
    for name in results:
        if name in PEERS:
            kind = precision_kind(name)
            if kind not in best_peer or medians[name] < medians[best_peer[kind]]:
                best_peer[kind] = name
    reference_ms = medians.get(REFERENCE)
    rows = {}
    for name, result in results.items():
        ms, peer = medians[name], best_peer.get(precision_kind(name))
        rows[name] = {"ms": round(ms, 2), "min_ms": round(fastest[name], 2),
                      "sequences_per_s": round(batch / ms * 1e3, 2),
                      "vs_torch": round(ms / reference_ms, 3) if reference_ms else None,
                      "vs_floor": round(ms / floor_ms, 2), "min_vs_floor": round(fastest[name] / floor_ms, 2),
                      "best_peer": peer,
                      "vs_peer": round(ms / medians[peer], 3) if peer else None,
                      "min_vs_peer": round(fastest[name] / fastest[peer], 3) if peer else None,
                      "peak_mb": round(result["peak_mb"], 1)}
    return {"gflop": round(flops / 1e9, 2), "floor_ms": round(floor_ms, 2), "backends": rows}


def print_table(shape_name: str, summary: dict, errors: dict, stream=sys.stderr, sizes: Optional[dict] = None) -> None:
    sizes = sizes or {}
    print(f"\n{shape_name}: {summary['gflop']} GFLOP, floor {summary['floor_ms']} ms "
          f"(matmul rate just before: {summary['matmul_gflops_before']} GFLOP/s)", file=stream)
    print(f"{'backend':26s} {'ms':>9s} {'min ms':>9s} {'seq/s':>8s} {'vs torch':>8s} {'vs floor':>8s} "
          f"{'vs peer':>8s} {'(min)':>6s} {'peak MB':>8s} {'file MB':>8s} {'rel err':>8s}", file=stream)
    for name, row in summary["backends"].items():
        ratio = f"{row['vs_torch']:.3f}" if row["vs_torch"] is not None else "-"
        peer = f"{row['vs_peer']:.3f}" if row["vs_peer"] is not None else "-"
        peer_min = f"{row['min_vs_peer']:.3f}" if row["min_vs_peer"] is not None else "-"
        print(f"{name:26s} {row['ms']:9.1f} {row['min_ms']:9.1f} {row['sequences_per_s']:8.1f} {ratio:>8s} "
              f"{row['vs_floor']:8.2f} {peer:>8s} {peer_min:>6s} {row['peak_mb']:8.1f} "
              f"{sizes.get(name, float('nan')):8.1f} {errors.get(name, float('nan')):8.1e}", file=stream)


def write_chart(report: dict, path: Path) -> None:
    """Grouped bars: ms per backend for every shape, the FLOP floor as a dashed line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(report["shapes"])
    figure, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.5), squeeze=False)
    for axis, shape_name in zip(axes[0], shapes):
        summary = report["shapes"][shape_name]
        names = list(summary["backends"])
        values = [summary["backends"][name]["ms"] for name in names]
        colors = ["#888888" if name == REFERENCE else "#55a868" if name.startswith("peer-")
                  else "#8172b2" if "openvino" in name else "#3b75af" if "onnx" in name else "#c44e52"
                  for name in names]
        bars = axis.bar(range(len(names)), values, color=colors)
        for bar, name in zip(bars, names):
            row = summary["backends"][name]
            labels = [f"{row['vs_torch']:.2f}" if row["vs_torch"] is not None else "",
                      f"{row['vs_peer']:.2f}" if row["vs_peer"] is not None else ""]
            axis.annotate("\n".join(label for label in labels if label),
                          (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                          fontsize=6)
        axis.axhline(summary["floor_ms"], color="black", linestyle="--", linewidth=1, label="FLOP floor")
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axis.set_ylabel("ms per batch (median)")
        axis.set_title(f"{shape_name} ({summary['gflop']} GFLOP)")
        axis.legend(fontsize=8)
    figure.suptitle(f"MobileBERT {report['architecture']} on {report['machine']['processor']}, "
                    f"{report['threads']} threads (above each bar: x PyTorch, then x the best peer of the "
                    f"same precision; green: peers)", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def machine_info() -> dict:
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"processor": processor, "cores": os.cpu_count(), "python": platform.python_version()}


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def parse_list(text: str, flag: str, convert=int) -> list:
    try:
        values = [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserInputError(f"{flag} {text!r}: expected a comma-separated list") from None
    if not values:
        raise UserInputError(f"{flag} is empty")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir with weights (Paddle or HF layout)")
    parser.add_argument("--batch", type=flags.integers(minimum=1, maximum=MAX_BATCH), default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--seq", type=flags.integers(minimum=1), default="128,384", help="sequence lengths, comma-separated")
    parser.add_argument("--runs", type=flags.integer(minimum=1), default=5, help="timed rounds per shape (median reported)")
    parser.add_argument("--warmup", type=flags.integer(minimum=0), default=2, help="untimed calls per backend and shape first")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"which to time, comma-separated, from: {', '.join(BENCH_BACKENDS)}")
    parser.add_argument("--peers", action="store_true",
                        help="also time what a user would pick instead, from the same weights: the HF model "
                             "exported by torch.onnx.export in ONNX Runtime (transformers optimizer) and in "
                             "OpenVINO (float32, its default precision, NNCF int8; those need the openvino extra)")
    parser.add_argument("--calibration-data", default=None, metavar="FILE",
                        help="task data (e.g. SQuAD dev JSON) for the static int8 paths' calibration "
                             "[default: random ids, which is enough for timing]")
    parser.add_argument("--threads", type=flags.integer(minimum=1, maximum=MAX_THREADS), default=None,
                        help="threads for PyTorch, ONNX Runtime and Paddle Inference [default: OMP_NUM_THREADS, "
                             "which the CLI sets to the core count]%(default).0s")
    parser.add_argument("--pause", type=flags.number(minimum=0, maximum=MAX_PAUSE), default=0.3,
                        help="idle seconds before each timed call, so the previous backend's spinning "
                             "worker threads are asleep")
    parser.add_argument("--output", default="bench", help="directory for bench.json and bench.png")


def run(args: argparse.Namespace) -> dict:
    names = parse_list(args.backends, "--backends", str)
    unknown = [name for name in names if name not in BENCH_BACKENDS and name not in peers.PEERS]
    if unknown:
        raise UserInputError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BENCH_BACKENDS)}")
    if args.peers:
        names += [name for name in peers.available_peers() if name not in names]
    if any("openvino" in name for name in names):
        openvino_core()                      # not installed: one line naming the extra
    if any(name.startswith("litert") for name in names):
        require_converter("bench --backends litert")
    if args.calibration_data is not None and not Path(args.calibration_data).is_file():
        raise UserInputError(f"--calibration-data {args.calibration_data}: no such file")
    shapes = [(batch, length) for batch in args.batch for length in args.seq]   # flags.integers: checked lists
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UserInputError(f"{model_dir}: no such model directory")
    check_creatable_dir(args.output)          # created only when the results are written
    threads = args.threads or default_threads()
    model, config = load_eager_model(model_dir)
    names = without_torch_twin(names, config, model_dir)
    too_long = [length for _, length in shapes if length > config.max_position_embeddings]
    if too_long:
        raise UserInputError(f"--seq {too_long[0]} exceeds the model's max_position_embeddings "
                             f"({config.max_position_embeddings})")
    calibration = None
    if any("int8" in name and (name in peers.PEERS or BENCH_BACKENDS[name].quantize == "int8-static") for name in names):

        import_nncf()
        calibration = (calibration_windows(model_dir, config, Path(args.calibration_data)) if args.calibration_data
                       else peers.random_calibration(config))
    inputs_accepted()
    report = bench(model, config, model_dir, names, shapes, args.runs, args.warmup, threads, args.pause, calibration)
    report["calibration"] = args.calibration_data or ("random ids (timing only)" if calibration else None)
    output = ensure_writable_dir(args.output)
    atomic_write_json(output / "bench.json", report)
    write_chart(report, output / "bench.png")
    report["files"] = [str(output / "bench.json"), str(output / "bench.png")]
    return report


def without_torch_twin(names: list, config: MobileBertConfig, model_dir: Path) -> list:
    """The backends to time: those built from the PyTorch twin (torch and the peers) are left out,
    with one line saying why, when transformers cannot build the model's layout (IB-BERT's)."""
    reason = config.transformers_incompatibility()
    needs_twin = [name for name in names if name == "torch" or name in PEERS]
    if reason is None or not needs_twin:
        return names
    rest = [name for name in names if name not in needs_twin]
    if not rest:
        raise UserInputError(f"{model_dir}: the PyTorch twin cannot be built ({reason}), and --backends names "
                             f"nothing else to time")
    logger.warning("%s: the PyTorch twin cannot be built (%s); timing %s without %s", model_dir, reason,
                   ", ".join(rest), ", ".join(needs_twin))
    return rest


def bench(model, config: MobileBertConfig, model_dir: Path, names: list, shapes: list, runs: int, warmup: int,
          threads: int, pause: float = 0.3, calibration: Optional[dict] = None) -> dict:
    rates = matmul_rate()
    rate = max(rates.values())   # the best rate seen in the run: contention from other processes only lowers it
    logger.info("float32 matmul rate: %s GFLOP/s", {key: round(value, 1) for key, value in rates.items()})
    architecture = config.architectures[0]
    report = {"model": str(model_dir), "architecture": architecture, "threads": threads,
              "machine": machine_info(),
              "matmul_gflops": {key: round(value, 1) for key, value in rates.items()},
              "runs": runs, "warmup": warmup, "pause_s": pause, "shapes": {}, "output_check": {}}
    if any("openvino" in name for name in names):

        report["openvino_cpu"] = openvino_cpu()    # bf16 / int8 kernels, default precision
    with tempfile.TemporaryDirectory(prefix="mobilebert-bench-") as staging:
        lengths = list(dict.fromkeys(length for _, length in shapes))      # the LiteRT signatures
        backends, built_mb, sizes = build_backends(names, model, config, model_dir, Path(staging), threads,
                                                   calibration, lengths)
        report["built_mb"] = {name: round(value, 1) for name, value in built_mb.items()}
        report["file_mb"] = {name: round(value, 2) for name, value in sizes.items()}
        report["thread_settings"] = thread_settings(threads)
        timed = {}
        for index, (batch, length) in enumerate(shapes):
            inputs = bench_inputs(config, batch, length)
            if index == 0:
                errors = check_outputs(backends, inputs, probabilities=ends_in_softmax(config, architecture))
                reference = REFERENCE if REFERENCE in backends else next(iter(backends))
                report["output_check"] = {"shape": f"{batch}x{length}", "relative_error_vs": reference,
                                          "errors": {name: float(f"{value:.3g}") for name, value in errors.items()}}
            gc.collect()
            rate_now = max(matmul_rate(repeats=3).values())
            rate = max(rate, rate_now)
            timed[(batch, length)] = (time_shape(backends, inputs, runs, warmup, pause), rate_now)
    for (batch, length), (results, rate_now) in timed.items():
        summary = summarise(results, model_flops(config, batch, length, architecture), rate, batch)
        summary["matmul_gflops_before"] = round(rate_now, 1)
        report["shapes"][f"{batch}x{length}"] = summary
        print_table(f"{batch}x{length}", summary, report["output_check"].get("errors", {}), sizes=report["file_mb"])
    report["process_peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["matmul_gflops_used_for_floor"] = round(rate, 1)
    return report


def thread_settings(threads: int) -> dict:
    settings = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "onnxruntime_intra_op": threads,
                "paddle_inference_cpu_math": threads, "openvino_inference_num_threads": threads}
    try:
        import torch

        settings["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return settings


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
