"""`mobilebert export`: a static Paddle inference model or an ONNX model, and `load_predictor`,
the one way every inference path (eager Paddle, Paddle Inference, ONNX Runtime) is run.

Export route: the Paddle model (optionally rewritten by fuse.py) is traced with
`paddle.jit.to_static` over inputs of dynamic batch and length (InputSpec [None, None]) and
saved with `paddle.jit.save` (Paddle 3 writes a PIR program, model.json + model.pdiparams).
For ONNX that program goes through paddle2onnx, which reads PIR programs directly (no need to
fall back to the old IR), then input/output names and dynamic axes are tidied. `--quantize
int8` quantizes the ONNX model's matmul weights to int8 with activations quantized on the fly
(onnxruntime.quantization.quantize_dynamic).

An export directory holds config.json (with `architectures`), the tokenizer files, the model
file(s) and export.json, the manifest `load_predictor` reads. Every export is checked against
the eager model on a probe batch before it is put in place; the manifest records the error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from . import flags
from .compare import relative_error
from .config import MobileBertConfig
from .errors import UserInputError
from .files import SMALL_FILE_BYTES, atomic_directory, atomic_write_json, check_separate_dirs, read_json

logger = logging.getLogger(__name__)

FORMATS = ("paddle", "onnx", "openvino")
QUANTIZATIONS = ("int8", "int8-static")
BACKENDS = ("eager", "paddle", "onnx", "openvino")
# Which backends run an export of each format (OpenVINO reads ONNX models as well as its own IR).
FORMAT_BACKENDS = {"paddle": ("paddle",), "onnx": ("onnx", "openvino"), "openvino": ("openvino",)}
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
MANIFEST_NAME = "export.json"
PADDLE_PREFIX = "model"                 # paddle.jit.save writes model.json + model.pdiparams
ONNX_NAME = "model.onnx"
OPENVINO_NAME = "model.xml"             # OpenVINO IR: model.xml + model.bin
OPENVINO_EXTRA = "pip install 'mobilebert-paddle[openvino]'"
CALIBRATION_WINDOWS = 300               # static int8: windows sampled from --calibration-data
ONNX_OPSET = 17
# paddle2onnx 2.1 accepts 7..21 but writes opset 10 for anything below 10 (aborts above 21);
# 10..21 each give a model of that opset that matches eager, --fuse and int8 included (measured)
MIN_OPSET, MAX_OPSET = 10, 21
EXPORT_TOLERANCE = 1e-5                 # fp32 exports must match eager within this relative error
# Paddle Inference on CPU: oneDNN (MKLDNN) kernels. PaddleNLP's export fails in oneDNN on the
# trigram concat; this model's export runs under oneDNN with outputs equal to eager (tests) and
# 1.6-2.5x faster than Paddle's plain CPU kernels (mobilebert bench), so it is on by default.
PADDLE_INFERENCE_MKLDNN = True

OUTPUT_NAMES = {
    "MobileBertModel": ("sequence_output", "pooled_output"),
    "MobileBertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
    "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
}


def output_names(architecture: str) -> tuple:
    return OUTPUT_NAMES.get(architecture, ("logits",))


def input_rank(architecture: str) -> int:
    """(B, T) ids, or (B, C, T) for multiple choice."""
    return 3 if architecture == "MobileBertForMultipleChoice" else 2


def default_threads() -> int:
    """Threads for Paddle Inference / ONNX Runtime: OMP_NUM_THREADS if set, else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------
# Predictors: one call signature for every backend
# ----------------------------------------------------------------------------------------

class Predictor:
    """`predictor(input_ids, token_type_ids, attention_mask)` -> tuple of numpy arrays
    (QA: (start_logits, end_logits); classification: (logits,)). Inputs are int64 arrays of
    shape (B, T); missing token types are zeros and a missing mask is all ones. A single dict
    {"input_ids": ..., ...} is accepted too (the evaluation code's batches)."""

    backend = ""

    def __init__(self, config: MobileBertConfig, model_dir: Path, output_names: Sequence[str]):
        self.config = config
        self.model_dir = Path(model_dir)
        self.output_names = tuple(output_names)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None) -> tuple:
        if isinstance(input_ids, Mapping):
            batch = input_ids
            input_ids, token_type_ids, attention_mask = (batch.get(name) for name in INPUT_NAMES)
        input_ids = np.asarray(input_ids, dtype=np.int64)
        token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                          else np.asarray(token_type_ids, dtype=np.int64))
        attention_mask = (np.ones_like(input_ids) if attention_mask is None
                          else np.asarray(attention_mask, dtype=np.int64))
        return tuple(self.run(input_ids, token_type_ids, attention_mask))

    def run(self, input_ids, token_type_ids, attention_mask):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_dir}, outputs={self.output_names})"


class EagerPredictor(Predictor):
    """The Paddle model in memory (dynamic graph)."""

    backend = "eager"

    def __init__(self, model, config: MobileBertConfig, model_dir: Path):
        super().__init__(config, model_dir, output_names(config.architectures[0]))
        self.model = model
        model.eval()

    def run(self, input_ids, token_type_ids, attention_mask):
        import paddle

        with paddle.no_grad():
            outputs = self.model(paddle.to_tensor(input_ids), paddle.to_tensor(token_type_ids),
                                 paddle.to_tensor(attention_mask))
        outputs = (outputs,) if isinstance(outputs, paddle.Tensor) else outputs
        return [output.numpy() for output in outputs if output is not None][:len(self.output_names)]


class PaddleInferencePredictor(Predictor):
    """A static Paddle model run by Paddle Inference (paddle.inference) on CPU."""

    backend = "paddle"

    def __init__(self, config: MobileBertConfig, model_dir: Path, prefix: Path, names: Sequence[str],
                 threads: Optional[int] = None, mkldnn: bool = PADDLE_INFERENCE_MKLDNN):
        super().__init__(config, model_dir, names)
        self.prefix = Path(prefix)
        self.threads = threads or default_threads()
        self.mkldnn = mkldnn
        self.predictor = self._create(mkldnn)
        self._plain_kernels = None

    def _create(self, mkldnn: bool):
        from paddle import inference

        settings = inference.Config(f"{self.prefix}.json", f"{self.prefix}.pdiparams")
        settings.disable_gpu()
        settings.set_cpu_math_library_num_threads(self.threads)
        if mkldnn:
            settings.enable_mkldnn()
        else:
            settings.disable_mkldnn()
        settings.switch_ir_optim(True)     # (enable_memory_optim fails on PIR programs in Paddle 3.3)
        settings.disable_glog_info()
        return inference.create_predictor(settings)

    def run(self, input_ids, token_type_ids, attention_mask):
        predictor = self.predictor
        if self.mkldnn and input_ids.shape[-1] == 1:
            # oneDNN's concat fails on the empty (B, 0, E) slice the trigram makes of a one-token
            # sequence (the unfused graph; fuse.py avoids it): plain kernels for that rare case.
            if self._plain_kernels is None:
                self._plain_kernels = self._create(mkldnn=False)
            predictor = self._plain_kernels
        arrays = dict(zip(INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(arrays[name])
        predictor.run()
        return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


class OnnxPredictor(Predictor):
    """An ONNX model run by ONNX Runtime on CPU with all graph optimisations.

    Large batches (at least `SPLIT_MIN_TOKENS` tokens and one row per thread) are split into
    one chunk per thread, each run concurrently on a second, single-threaded session: every
    core then works through its own rows without synchronising after each operation, which
    measured ~10% faster than ONNX Runtime's intra-op threads at 8 x 384 (and no different
    below ~2k tokens, where it is not used). The second session is made on first use.
    """

    backend = "onnx"
    SPLIT_MIN_TOKENS = 2048

    def __init__(self, config: MobileBertConfig, model_dir: Path, model: "str | bytes", names: Sequence[str],
                 threads: Optional[int] = None, split_batches: bool = True):
        super().__init__(config, model_dir, names)
        self.threads = threads or default_threads()
        self.model = model
        self.session = onnx_session(model, self.threads)
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.split_batches = split_batches and self.threads > 1
        self._single_thread = None
        self._pool = None

    def run(self, input_ids, token_type_ids, attention_mask):
        arrays = dict(zip(INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
        feed = {name: arrays[name] for name in self.input_names}
        rows = input_ids.shape[0]
        if self.split_batches and rows >= self.threads and input_ids.size >= self.SPLIT_MIN_TOKENS:
            return self._run_split(feed, rows)
        return self.session.run(list(self.output_names), feed)

    def _run_split(self, feed: dict, rows: int) -> list:
        from concurrent.futures import ThreadPoolExecutor

        if self._single_thread is None:
            self._single_thread = onnx_session(self.model, 1)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-rows")
        bounds = np.linspace(0, rows, self.threads + 1).astype(int)
        futures = [self._pool.submit(self._single_thread.run, list(self.output_names),
                                     {name: value[start:end] for name, value in feed.items()})
                   for start, end in zip(bounds[:-1], bounds[1:])]
        chunks = [future.result() for future in futures]      # ONNX Runtime releases the GIL in run
        return [np.concatenate([chunk[index] for chunk in chunks]) for index in range(len(self.output_names))]


def onnx_session(model: "str | bytes", threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3           # paddle2onnx leaves unused constants ORT warns about
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OpenVinoPredictor(Predictor):
    """An ONNX model or an OpenVINO IR run by OpenVINO's CPU plugin.

    `precision` is OpenVINO's INFERENCE_PRECISION_HINT: "f32" (the default here) keeps float32
    models exact; on CPUs with bfloat16 instructions OpenVINO's own default is "bf16", which
    rounds every matmul's inputs to bfloat16 (relative error ~1e-2 on MobileBERT). int8 IRs
    (NNCF) run their quantized matmuls in int8 whatever the hint; it applies to the rest.

    How a call runs (`tuned=True`, the default; `tuned=False` is a plain latency-mode compile,
    as `bench --peers` runs the HF export):
    - Batches of at least `SPLIT_MIN_TOKENS` tokens with a row per thread run as one chunk per
      thread, each on its own single-threaded stream, so the cores do not synchronise after
      every operation (measured 4-7% faster than two intra-op threads at 2x128 to 8x128).
    - Shapes seen `STATIC_AFTER` times get a compilation for that exact shape (OpenVINO then
      plans memory and picks kernels for it: up to 7% faster than the dynamic-shape
      compilation in float32 and 9-23% in int8 at 1x128 to 8x384), made in 0.5-2 s and kept for the
      `STATIC_KEEP` most recently used shapes. Other shapes run on the dynamic compilation.
      Evaluation pads every window to max_seq_length, so it uses at most two shapes.
    """

    backend = "openvino"
    SPLIT_MIN_TOKENS = 256
    STATIC_AFTER = 2
    STATIC_KEEP = 4

    def __init__(self, config: MobileBertConfig, model_dir: Path, model_path: Path, names: Sequence[str],
                 threads: Optional[int] = None, precision: str = "f32", tuned: bool = True):
        from collections import Counter, OrderedDict

        super().__init__(config, model_dir, names)
        self.threads = threads or default_threads()
        self.precision = precision
        self.tuned = tuned
        self.core = openvino_core()
        self.model = self.core.read_model(str(model_path))
        self.compiled = self.core.compile_model(self.model, "CPU", openvino_settings(self.threads, precision))
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._dynamic = {1: [self.compiled.create_infer_request()]}     # streams -> infer requests
        self._static = OrderedDict()                                      # (streams, shapes) -> infer requests
        self._seen = Counter()

    def run(self, input_ids, token_type_ids, attention_mask):
        arrays = dict(zip(INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
        feed = {name: np.ascontiguousarray(arrays[name]) for name in self.input_names}
        rows = input_ids.shape[0]
        streams = 1
        if self.tuned and self.threads > 1 and rows >= self.threads and input_ids.size >= self.SPLIT_MIN_TOKENS:
            streams = self.threads
        bounds = np.linspace(0, rows, streams + 1).astype(int)
        chunks = [{name: value[start:end] for name, value in feed.items()}
                  for start, end in zip(bounds[:-1], bounds[1:])]
        requests = self._requests(streams, chunks)
        if streams == 1:
            results = requests[0].infer(chunks[0], share_inputs=True)      # outputs are copies (share_outputs=False)
            return [results[name] for name in self.output_names]
        for request, chunk in zip(requests, chunks):
            request.start_async({name: np.ascontiguousarray(value) for name, value in chunk.items()})
        outputs = []
        for request in requests:
            request.wait()
            outputs.append([request.get_tensor(name).data.copy() for name in self.output_names])
        return [np.concatenate([chunk[index] for chunk in outputs]) for index in range(len(self.output_names))]

    def _requests(self, streams: int, chunks: list) -> list:
        """Infer requests for `streams` chunks: the static compilation for their shape when there
        is one (or it is due), else the dynamic one."""
        shapes = {tuple(tuple(value.shape) for value in chunk.values()) for chunk in chunks}
        key = (streams, shapes.pop()) if self.tuned and len(shapes) == 1 else None
        if key in self._static:
            self._static.move_to_end(key)
            return self._static[key]
        if key is not None:
            self._seen[key] += 1
            if self._seen[key] >= self.STATIC_AFTER:
                model = self.model.clone()
                model.reshape({name: list(shape) for name, shape in zip(chunks[0], key[1])})
                self._static[key] = self._compile(model, streams)
                if len(self._static) > self.STATIC_KEEP:
                    self._static.popitem(last=False)
                if len(self._seen) > 64 * self.STATIC_KEEP:           # many shapes: forget the counts
                    self._seen.clear()
                return self._static[key]
        if streams not in self._dynamic:
            self._dynamic[streams] = self._compile(self.model, streams)
        return self._dynamic[streams]

    def _compile(self, model, streams: int) -> list:
        settings = openvino_settings(self.threads, self.precision)
        if streams > 1:
            settings.update(NUM_STREAMS=streams, PERFORMANCE_HINT="THROUGHPUT")
        compiled = self.core.compile_model(model, "CPU", settings)
        return [compiled.create_infer_request() for _ in range(streams)]


def openvino_core():
    """openvino.Core(), or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise UserInputError(f"the openvino backend needs OpenVINO, which is not installed: {OPENVINO_EXTRA}") from None
    return openvino.Core()


def openvino_settings(threads: int, precision: str = "f32") -> dict:
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY"}


def openvino_cpu() -> dict:
    """What OpenVINO says about this CPU: whether it has bf16 / int8 kernels, and its default
    inference precision (bf16 where the CPU has it)."""
    core = openvino_core()
    import openvino

    return {"openvino": openvino.__version__, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "default_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))}


def load_predictor(model_dir: "str | os.PathLike", backend: str = "eager", *, fuse: bool = False,
                   threads: Optional[int] = None) -> Predictor:
    """A predictor for `model_dir` on `backend` ("eager", "paddle", "onnx" or "openvino").

    `model_dir` is an export dir (from `mobilebert export`) or a model dir with weights. An
    export dir runs on the backend of its format (an ONNX export on "onnx" or "openvino"); a
    model dir runs eagerly or is exported in memory first to the backend's own format (with
    `fuse` if asked), so evaluating a trained model on another backend needs no export step.
    """
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "openvino":
        openvino_core()                      # not installed: one line before any work
    directory = Path(model_dir)
    manifest = read_manifest(directory)
    if manifest is not None:
        if backend not in FORMAT_BACKENDS[manifest["format"]]:
            raise UserInputError(f"{directory}: holds a {manifest['format']} export, not a {backend} one "
                                 f"(use --backend {manifest['format']}, or export with --format {backend})")
        return load_exported(directory, manifest, threads, backend=backend)
    if not directory.is_dir():
        raise UserInputError(f"{directory}: no such model directory")
    model, config = load_eager_model(directory)
    if backend == "eager":
        return EagerPredictor(model, config, directory)
    logger.info("%s: exporting to %s in memory (run `mobilebert export` once to skip this)", directory, backend)
    # The files live as long as the predictor (Paddle Inference may reopen them), then go.
    staging = tempfile.TemporaryDirectory(prefix="mobilebert-export-")
    manifest = write_export(model, config, directory, Path(staging.name), backend, fuse=fuse)
    predictor = load_exported(Path(staging.name), manifest, threads, model_dir=directory)
    predictor.staging = staging
    return predictor


def load_eager_model(directory: Path):
    """(Paddle model in eval mode, config) from a model dir with weights."""
    from .modeldir import build_model, load_pretrained

    config, state = load_pretrained(directory)
    model = build_model(config, state)
    config.architectures = [type(model).architecture]
    model.load_converted_state_dict(state, source=str(directory))
    model.eval()
    return model, config


def load_exported(directory: Path, manifest: dict, threads: Optional[int] = None,
                  model_dir: Optional[Path] = None, backend: Optional[str] = None) -> Predictor:
    config = MobileBertConfig.from_pretrained(directory)
    names = manifest["outputs"]
    shown_dir = model_dir or directory
    backend = backend or manifest["format"]
    model_file = directory / manifest["model_file"]
    shown_files = f"{directory / PADDLE_PREFIX}.json / .pdiparams" if backend == "paddle" else model_file
    try:
        if backend == "paddle":
            predictor = PaddleInferencePredictor(config, shown_dir, directory / PADDLE_PREFIX, names, threads)
        elif backend == "openvino":
            predictor = OpenVinoPredictor(config, shown_dir, model_file, names, threads)
        else:  # read the bytes now: the file may be in a temporary directory about to be removed
            predictor = OnnxPredictor(config, shown_dir, read_model_bytes(model_file), names, threads)
        check_runs(predictor, config, manifest.get("architecture", ""))
    except UserInputError:
        raise
    except Exception as error:  # onnxruntime / Paddle Inference / OpenVINO raise their own types for bad files
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserInputError(f"{shown_files}: unreadable {backend} model (truncated or corrupt?): "
                             f"{reason[:160]}") from None
    return predictor


def read_model_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the model ({error.strerror or error})") from None


def check_runs(predictor: Predictor, config: MobileBertConfig, architecture: str) -> None:
    """One tiny forward: a truncated weights file can load and then fail (or be empty) at run time."""
    batch = probe_batch(config, architecture or (config.architectures or ["MobileBertModel"])[0])
    outputs = predictor(batch)
    if len(outputs) != len(predictor.output_names):
        raise UserInputError(f"{predictor.model_dir}: the exported model gives {len(outputs)} outputs, "
                             f"its manifest names {len(predictor.output_names)}")


def read_manifest(directory: Path) -> Optional[dict]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    from .modeldir import inside

    manifest = read_json(path, "export manifest", max_bytes=SMALL_FILE_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise UserInputError(f"{path}: not a mobilebert export manifest (no valid 'format')")
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(name, str) for name in outputs):
        raise UserInputError(f"{path}: 'outputs' must be a list of output names")
    model_file = inside(directory, manifest.get("model_file"), f"{path}: model_file")
    if not model_file.is_file():
        raise UserInputError(f"{path}: names model file {manifest['model_file']!r}, which is missing")
    return manifest


# ----------------------------------------------------------------------------------------
# Static graph and ONNX
# ----------------------------------------------------------------------------------------

def export_layer(model, architecture: str):
    """A layer with forward(input_ids, token_type_ids, attention_mask) -> the head's output
    tensors, which is what to_static traces. How many outputs there are is fixed here from
    the architecture: inside the traced function a static value is not a paddle.Tensor,
    so a type test there would pick the wrong branch."""
    import paddle

    class ExportWrapper(paddle.nn.Layer):
        def __init__(self, inner, count: int):
            super().__init__()
            self.inner = inner
            self.count = count

        def forward(self, input_ids, token_type_ids, attention_mask):
            outputs = self.inner(input_ids, token_type_ids, attention_mask)
            if self.count == 1:
                return outputs
            return tuple(outputs[index] for index in range(self.count))

    wrapper = ExportWrapper(model, len(output_names(architecture)))
    wrapper.eval()
    return wrapper


def save_static_model(model, architecture: str, prefix: Path) -> None:
    """to_static over (batch, length)-dynamic int64 inputs, then jit.save -> prefix.json/.pdiparams."""
    import paddle
    from paddle.static import InputSpec

    shape = [None] * input_rank(architecture)
    specs = [InputSpec(shape, "int64", name=name) for name in INPUT_NAMES]
    static = paddle.jit.to_static(export_layer(model, architecture), input_spec=specs, full_graph=True)
    paddle.jit.save(static, str(prefix))
    check_static_model(prefix)


def check_static_model(prefix: Path) -> None:
    """jit.save does not report a failed write: on a full disk it leaves a cut model.json or
    .pdiparams, which paddle2onnx then rejects by exiting the process. Read both back first."""
    import json

    import paddle

    try:
        json.loads(Path(f"{prefix}.json").read_text(encoding="utf-8"))
        paddle.jit.load(str(prefix))
    except (OSError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise OSError(errno.EIO, f"Paddle wrote an incomplete static model, is the disk full? ({reason})",
                      f"{prefix}.json") from None


def static_to_onnx(prefix: Path, architecture: str, opset: int = ONNX_OPSET):
    """paddle2onnx on the saved PIR program; returns the tidied onnx.ModelProto."""
    import onnx
    import paddle2onnx

    try:
        with stdout_to_stderr():   # paddle2onnx's C++ side prints progress on stdout, where our JSON goes
            model_bytes = paddle2onnx.export(f"{prefix}.json", f"{prefix}.pdiparams", None, opset_version=opset,
                                             enable_onnx_checker=True, enable_optimize=True)
    except (Exception, SystemExit) as error:  # paddle2onnx logs and re-raises many types, or calls sys.exit
        raise RuntimeError(f"paddle2onnx could not convert the static model: {error}") from error
    if not model_bytes:
        raise RuntimeError("paddle2onnx returned an empty model")
    model = onnx.load_from_string(model_bytes)
    tidy_onnx(model, architecture)
    return model


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 (C/C++ libraries' stdout included) and Python's sys.stdout (what
    rich's progress bars in NNCF write to) to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.WARNING):
    """onnxruntime.quantization logs a line per tensor on the root logger at INFO."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def tidy_onnx(model, architecture: str) -> None:
    """Name the outputs after the head's outputs and the dynamic axes after what they hold;
    drop the constants paddle2onnx leaves unused."""
    graph = model.graph
    renames = {output.name: name for output, name in zip(graph.output, output_names(architecture))}
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = renames.get(name, name)
        for index, name in enumerate(node.output):
            node.output[index] = renames.get(name, name)
    for output in graph.output:
        output.name = renames.get(output.name, output.name)
    axes = ("batch", "choices", "sequence") if input_rank(architecture) == 3 else ("batch", "sequence")
    for value in list(graph.input) + list(graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_value:
                dim.dim_param = axes[min(axis, len(axes) - 1)]
    constants_to_initializers(graph)
    used = {name for node in graph.node for name in node.input}
    unused = [item for item in graph.initializer if item.name not in used]
    for item in unused:
        graph.initializer.remove(item)


def constants_to_initializers(graph) -> None:
    """paddle2onnx writes every weight as a Constant node, and many Identity nodes; make the
    constants initializers (what the int8 quantizer looks for) and drop the Identities."""
    from onnx import helper

    outputs = {output.name for output in graph.output}
    constants = {}
    for node in list(graph.node):
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = helper.get_attribute_value(node.attribute[0])
            tensor.name = node.output[0]
            constants[tensor.name] = tensor
            graph.node.remove(node)
    aliases = {}
    for node in list(graph.node):   # read through Identity nodes (nodes are in topological order)
        if node.op_type == "Identity" and node.output[0] not in outputs:
            aliases[node.output[0]] = aliases.get(node.input[0], node.input[0])
            graph.node.remove(node)
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = aliases.get(name, name)
    graph.initializer.extend(constants.values())


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


# ----------------------------------------------------------------------------------------
# Writing an export directory
# ----------------------------------------------------------------------------------------

def probe_batch(config: MobileBertConfig, architecture: str, seed: int = 0) -> dict:
    """Random ids of a shape no export is specialised to (3 rows x 11, with padding)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([11, 6, 9])
    width = min(int(lengths.max()), config.max_position_embeddings)
    shape = (len(lengths), width)
    input_ids = rng.integers(min(5, config.vocab_size - 1), config.vocab_size, size=shape)
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    token_type_ids = ((np.arange(width)[None, :] >= lengths[:, None] // 2) * attention_mask).astype(np.int64)
    input_ids = np.where(attention_mask == 1, input_ids, 0).astype(np.int64)
    batch = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    if input_rank(architecture) == 3:
        batch = {name: np.stack([value, np.roll(value, 1, axis=0)], axis=1) for name, value in batch.items()}
    return batch


def compare_with_eager(predictor: Predictor, reference: Predictor, batch: dict) -> dict:
    """{output name: relative error} of `predictor` against the eager model on `batch`."""
    expected, actual = reference(batch), predictor(batch)
    return {name: relative_error(got, want) for name, got, want in zip(predictor.output_names, actual, expected)}


def write_export(model, config: MobileBertConfig, source: Path, staging: Path, export_format: str,
                 fuse: bool = False, quantize: Optional[str] = None, opset: int = ONNX_OPSET,
                 calibration: Optional[dict] = None) -> dict:
    """Write the export into the (empty) directory `staging`; returns the manifest.
    `calibration`: model inputs {name: (N, T) array} for --quantize int8-static."""
    from .modeldir import copy_tokenizer_files

    architecture = config.architectures[0]
    layer = model
    if fuse:
        from .fuse import FuseError, fuse_model

        try:
            layer = fuse_model(model)
        except FuseError as error:
            raise UserInputError(f"{source}: {error}; export without --fuse") from None
    config.save_pretrained(staging)
    copy_tokenizer_files(source, staging)
    manifest = {"format": export_format, "architecture": architecture, "fused": fuse, "quantization": quantize,
                "inputs": list(INPUT_NAMES), "outputs": list(output_names(architecture))}
    if export_format == "paddle":
        save_static_model(layer, architecture, staging / PADDLE_PREFIX)
        manifest["model_file"] = f"{PADDLE_PREFIX}.json"
    elif export_format == "openvino":
        manifest.update(write_openvino(layer, config, staging, fuse, quantize, opset, calibration))
    else:
        manifest.update(write_onnx(layer, config, staging, fuse, quantize, opset))
    manifest["versions"] = library_versions(export_format)
    atomic_write_json(staging / MANIFEST_NAME, manifest)
    return manifest


def write_onnx(layer, config: MobileBertConfig, staging: Path, fuse: bool, quantize: Optional[str],
               opset: int) -> dict:
    """model.onnx in `staging`. Order matters: the residual-Gemm rewrite needs standard ONNX
    shape inference, the int8 quantizer quantizes MatMul (not Gemm) and cannot type the
    com.microsoft attention op, so: Gemms (fp32 only), then int8, then attention."""
    import onnx

    from .fuse import use_multi_head_attention

    model, rewrites = layer_to_onnx(layer, config.architectures[0], staging, fuse and quantize is None, opset)
    if quantize == "int8":
        fp32_path, int8_path = staging / "model.fp32.onnx", staging / "model.int8.onnx"
        onnx.save(model, str(fp32_path))
        quantize_int8(fp32_path, int8_path, float_weights=head_weight_names(layer))
        model = onnx.load(str(int8_path))
        fp32_path.unlink()
        int8_path.unlink()
    if fuse:
        rewrites["multi_head_attention"] = use_multi_head_attention(model, config.num_attention_heads,
                                                                    config.true_hidden_size)
    onnx.save(model, str(staging / ONNX_NAME))
    return {"model_file": ONNX_NAME, "opset": opset, "graph_rewrites": rewrites}


def layer_to_onnx(layer, architecture: str, staging: Path, residual_gemms: bool, opset: int) -> tuple:
    """(onnx.ModelProto, {rewrite: count}) of the traced layer, via a static model in a scratch dir."""
    from .fuse import fuse_residual_gemms

    with tempfile.TemporaryDirectory(prefix="static-", dir=staging) as static_dir:
        prefix = Path(static_dir) / PADDLE_PREFIX
        save_static_model(layer, architecture, prefix)
        model = static_to_onnx(prefix, architecture, opset)
    rewrites = {"residual_gemms": fuse_residual_gemms(model)} if residual_gemms else {}
    return model, rewrites


def write_openvino(layer, config: MobileBertConfig, staging: Path, fuse: bool, quantize: Optional[str],
                   opset: int, calibration: Optional[dict] = None) -> dict:
    """model.xml + model.bin (OpenVINO IR) in `staging`: the ONNX graph (with the residual Gemms
    when fused; not ONNX Runtime's attention op: OpenVINO builds its own attention from the
    plain graph) read by OpenVINO, weights kept in float32. int8-static: NNCF's post-training
    quantization calibrated on the `calibration` windows, the task head left in float32."""
    import onnx
    import openvino

    model, rewrites = layer_to_onnx(layer, config.architectures[0], staging, fuse, opset)
    head_weights = head_weight_names(layer)          # the traced program's names, as the ONNX graph has them
    head_nodes = matmuls_reading(model.graph, head_weights)
    with tempfile.TemporaryDirectory(prefix="onnx-", dir=staging) as scratch:
        onnx.save(model, str(Path(scratch) / ONNX_NAME))
        ov_model = openvino.convert_model(str(Path(scratch) / ONNX_NAME))
    manifest = {"model_file": OPENVINO_NAME, "opset": opset, "graph_rewrites": rewrites}
    if quantize == "int8-static":
        ov_model = quantize_static_openvino(ov_model, calibration, head_nodes)
        manifest["calibration_windows"] = len(calibration["input_ids"])
        manifest["float_nodes"] = head_nodes
    openvino.save_model(ov_model, str(staging / OPENVINO_NAME), compress_to_fp16=False)
    return manifest


def quantize_static_openvino(ov_model, calibration: dict, float_nodes: Sequence[str]):
    """NNCF post-training quantization (transformer preset: int8 weights per channel, int8
    activations with ranges from the calibration windows, SmoothQuant); `float_nodes` stay float."""
    nncf = import_nncf()
    rows = len(calibration["input_ids"])
    items = [{name: np.ascontiguousarray(calibration[name][row:row + 1], dtype=np.int64) for name in INPUT_NAMES}
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


def library_versions(export_format: str) -> dict:
    import paddle

    versions = {"paddlepaddle": paddle.__version__}
    if export_format == "onnx":
        import onnxruntime
        import paddle2onnx

        versions.update(paddle2onnx=paddle2onnx.__version__, onnxruntime=onnxruntime.__version__)
    if export_format == "openvino":
        import openvino
        import paddle2onnx

        versions.update(paddle2onnx=paddle2onnx.__version__, openvino=openvino.__version__)
        with contextlib.suppress(ImportError):
            import nncf

            versions["nncf"] = nncf.__version__
    return versions


def check_output_dir(output: Path, source: Path) -> None:
    """Refuse, before any work, an output that cannot be written or would replace something
    that is not an export (the whole directory is replaced)."""
    check_separate_dirs(source, output, "--output", "the model directory")
    if output.exists() and not output.is_dir():
        raise UserInputError(f"{output}: --output exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_NAME).is_file():
        raise UserInputError(f"{output}: --output is a non-empty directory that is not an export; "
                             "choose a new or empty directory (an export there is replaced whole)")
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{output}: cannot create the output directory ({ancestor} is not a writable directory)")


def check_options(export_format: str, quantize: Optional[str], opset: int = ONNX_OPSET,
                  calibration_data: Optional[Path] = None) -> None:
    """The export's options, for Python callers (the CLI's flags are checked as they are parsed)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserInputError(f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {MAX_OPSET}")
    if export_format not in FORMATS:
        raise UserInputError(f"unknown --format {export_format!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserInputError(f"unknown --quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and export_format != "onnx":
        raise UserInputError("--quantize int8 needs --format onnx (dynamic int8 runs in ONNX Runtime; "
                             "for OpenVINO use --quantize int8-static)")
    if quantize == "int8-static" and export_format != "openvino":
        raise UserInputError("--quantize int8-static needs --format openvino (NNCF quantizes OpenVINO models)")
    if quantize == "int8-static" and calibration_data is None:
        raise UserInputError("--quantize int8-static needs --calibration-data FILE: the task's data its "
                             "ranges are measured on (e.g. the dev set you evaluate with)")
    if calibration_data is not None and quantize != "int8-static":
        raise UserInputError("--calibration-data is only read by --quantize int8-static")
    if calibration_data is not None and not Path(calibration_data).is_file():
        raise UserInputError(f"--calibration-data {calibration_data}: no such file")
    if export_format == "openvino":
        openvino_core()
    if quantize == "int8-static":
        import_nncf()


def export_model(model_dir: "str | os.PathLike", output_dir: "str | os.PathLike", export_format: str = "onnx",
                 fuse: bool = False, quantize: Optional[str] = None, opset: int = ONNX_OPSET,
                 calibration_data: "str | os.PathLike | None" = None,
                 calibration_count: int = CALIBRATION_WINDOWS) -> dict:
    """Export the model in `model_dir` to `output_dir` (replaced atomically); returns the summary.
    `calibration_data`: a task data file (SQuAD JSON, GLUE TSV) for --quantize int8-static."""
    check_options(export_format, quantize, opset, calibration_data)
    source, output = Path(model_dir), Path(output_dir)
    if not source.is_dir():
        raise UserInputError(f"{source}: no such model directory")
    check_output_dir(output, source)
    started = time.perf_counter()
    model, config = load_eager_model(source)
    reference = EagerPredictor(model, config, source)
    calibration = None
    if calibration_data is not None:
        calibration = calibration_windows(source, config, Path(calibration_data), calibration_count)
    try:
        with atomic_directory(output) as staging:
            manifest = write_export(model, config, source, staging, export_format, fuse, quantize, opset,
                                    calibration)
            batch = probe_batch(config, manifest["architecture"])
            errors = compare_with_eager(load_exported(staging, manifest), reference, batch)
            manifest["probe"] = {"shape": list(batch["input_ids"].shape), "relative_error": errors}
            check_probe(errors, quantize, output)
            atomic_write_json(staging / MANIFEST_NAME, manifest)
    except OSError as error:     # no permission, or a full disk: the staging dir is gone, nothing is half-written
        kept = "the earlier export is kept" if output.exists() else "nothing was written"
        raise UserInputError(f"{output}: cannot write the export ({error.strerror or error}); {kept}") from None
    files = sorted(path.name for path in output.iterdir())
    return {"model": str(source), "output": str(output), **manifest, "files": files,
            "seconds": round(time.perf_counter() - started, 1)}


def calibration_windows(model_dir: Path, config: MobileBertConfig, path: Path, count: int = CALIBRATION_WINDOWS,
                        seed: int = 0) -> dict:
    """Up to `count` model rows {name: (N, T) int64}, sampled (seeded) from a task data file cut
    into windows as `evaluate` cuts it, with the model's own window settings."""
    from .evaluation import check_sequence_length
    from .tasks import TaskSettings, get_task, load_eval_sets
    from .tokenizer import MobileBertTokenizer

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
    return {name: np.asarray(inputs[name][chosen], dtype=np.int64) for name in INPUT_NAMES}


def check_probe(errors: dict, quantize: Optional[str], output: Path) -> None:
    worst = max(errors.values())
    if quantize:
        logger.info("%s: int8 model vs eager on the probe batch: relative error %.3g", output, worst)
    elif worst > EXPORT_TOLERANCE:
        raise RuntimeError(f"{output}: the export differs from the eager model by relative error {worst:.3g} "
                           f"(> {EXPORT_TOLERANCE}); nothing was written")


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir with weights (e.g. runs/squad1/best)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="paddle: static Paddle inference model (model.json + model.pdiparams); "
                             "onnx: model.onnx via paddle2onnx; openvino: OpenVINO IR (model.xml + model.bin)")
    parser.add_argument("--output", required=True, help="export directory to write (replaced atomically)")
    parser.add_argument("--fuse", action="store_true",
                        help="inference-only rewrite: fold NoNorms into the Linears, merge projections "
                             "that read the same input (same outputs within float32 rounding)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="int8: dynamic quantization of the ONNX model's matmuls (onnx format only); "
                             "int8-static: NNCF static quantization calibrated on --calibration-data "
                             "(openvino format only)")
    parser.add_argument("--calibration-data", default=None, metavar="FILE",
                        help="int8-static: the task's data (SQuAD JSON / GLUE TSV, e.g. the dev set); "
                             f"{CALIBRATION_WINDOWS} windows sampled from it measure the activation ranges")
    parser.add_argument("--calibration-windows", type=flags.integer(minimum=1), default=CALIBRATION_WINDOWS,
                        help="how many windows to sample from --calibration-data")
    parser.add_argument("--opset", type=flags.integer(minimum=MIN_OPSET, maximum=MAX_OPSET), default=ONNX_OPSET,
                        help=f"ONNX opset version, {MIN_OPSET} to {MAX_OPSET}")


def run(args: argparse.Namespace) -> dict:
    return export_model(args.model, args.output, args.format, fuse=args.fuse, quantize=args.quantize,
                        opset=args.opset, calibration_data=args.calibration_data,
                        calibration_count=args.calibration_windows)
