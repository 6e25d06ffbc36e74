"""Predictors: one call signature for every inference backend (eager Paddle, Paddle Inference,
ONNX Runtime, OpenVINO, LiteRT), and the reading of an export directory (export.json, the manifest).

`predictor(input_ids, token_type_ids, attention_mask)` -> tuple of numpy arrays, named by
`output_names(architecture)`. Exports are written by export.py; load.py picks the predictor for
a path and a backend.
"""


from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..core.files import SMALL_FILE_BYTES, read_json
from ..model.config import MODEL_INPUT_NAMES, MobileBertConfig
from ..model.modeldir import inside

# --------------------------------------------------------------------------------------------
# Loading a model for inference
# --------------------------------------------------------------------------------------------













logger = logging.getLogger(__name__)


BACKENDS = ("eager", "paddle", "onnx", "openvino", "litert")
# Which backends run an export of each format (OpenVINO reads ONNX models as well as its own IR).
FORMAT_BACKENDS = {"paddle": ("paddle",), "onnx": ("onnx", "openvino"), "openvino": ("openvino",),
                   "litert": ("litert",)}
MANIFEST_NAME = "export.json"
PADDLE_PREFIX = "model"                 # paddle.jit.save writes model.json + model.pdiparams
ONNX_NAME = "model.onnx"
OPENVINO_NAME = "model.xml"             # OpenVINO IR: model.xml + model.bin
OPENVINO_EXTRA = "pip install 'mobilebert-paddle[openvino]'"
LITERT_NAME = "model.tflite"
LITERT_EXTRA = "pip install 'mobilebert-paddle[litert]'"
# Paddle Inference on CPU: oneDNN (MKLDNN) kernels. PaddleNLP's export fails in oneDNN on the
# trigram concat; this model's export runs under oneDNN with outputs equal to eager (tests) and
# faster than Paddle's plain CPU kernels (`mobilebert bench`), so it is on by default.
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
            input_ids, token_type_ids, attention_mask = (batch.get(name) for name in MODEL_INPUT_NAMES)
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
        arrays = dict(zip(MODEL_INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(arrays[name])
        predictor.run()
        return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


class OnnxPredictor(Predictor):
    """An ONNX model run by ONNX Runtime on CPU with all graph optimisations.

    Large batches (at least `SPLIT_MIN_TOKENS` tokens and one row per thread) are split into
    one chunk per thread, each run concurrently on a second, single-threaded session: every
    core then works through its own rows without synchronising after each operation (faster
    than ONNX Runtime's intra-op threads on large batches, no different on small ones: README,
    Speed). The second session is made on first use.
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
        arrays = dict(zip(MODEL_INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
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
      every operation (README, OpenVINO, gives what each setting gains).
    - Shapes seen `STATIC_AFTER` times get a compilation for that exact shape (OpenVINO then
      plans memory and picks kernels for it), made in a second or two and kept for the
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
        check_openvino_xml(Path(model_path))
        self.model = self.core.read_model(str(model_path))
        self.compiled = self.core.compile_model(self.model, "CPU", openvino_settings(self.threads, precision))
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._dynamic = {1: [self.compiled.create_infer_request()]}     # streams -> infer requests
        self._static = OrderedDict()                                      # (streams, shapes) -> infer requests
        self._seen = Counter()

    def run(self, input_ids, token_type_ids, attention_mask):
        arrays = dict(zip(MODEL_INPUT_NAMES, (input_ids, token_type_ids, attention_mask)))
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


class LiteRtPredictor(Predictor):
    """A .tflite (`--format litert`) run by ai-edge-litert's interpreter (XNNPACK on CPU), one row
    per call (the file's signatures have batch 1, as phones run it): each row is padded to the
    shortest signature length that holds it, a longer row is refused in one line. Per-token
    outputs are cut back to the row's width. A classifier's file ends in a softmax (what
    MediaPipe's TextClassifier reports); its log is handed on as the logits (the same
    distribution: eager's logits minus a constant per row).

    Padding is not a no-op for MobileBERT in any runtime: the trigram embedding of the last real
    token reads the next position's embedding, [PAD]'s when padded and zeros at the very end;
    `evaluate` pads every window to max_seq_length, so an export at that length runs its rows as
    eager does."""

    backend = "litert"

    def __init__(self, config: MobileBertConfig, model_dir: Path, model_path: Path, names: Sequence[str],
                 signatures: dict, file_outputs: Sequence[str], threads: Optional[int] = None):
        super().__init__(config, model_dir, names)
        interpreter_class = litert_interpreter()
        self.threads = threads or default_threads()
        self.interpreter = interpreter_class(model_path=str(model_path), num_threads=self.threads)
        available = set(self.interpreter.get_signature_list())
        missing = sorted(set(signatures) - available)
        if missing:
            raise UserInputError(f"{model_path}: has no signature {missing[0]} (it has {', '.join(sorted(available))})")
        self.runners = {int(length): self.interpreter.get_signature_runner(name) for name, length in signatures.items()}
        self.lengths = sorted(self.runners)
        self.file_outputs = tuple(file_outputs)
        self.pad_id = int(getattr(config, "pad_token_id", 0) or 0)
        architecture = (config.architectures or [""])[0]
        self.per_token = [name in PER_TOKEN_OUTPUTS or architecture in PER_TOKEN_HEADS for name in self.file_outputs]
        self.log_probabilities = self.file_outputs == ("probabilities",)

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    def signature_length(self, width: int) -> int:
        for length in self.lengths:
            if length >= width:
                return length
        raise UserInputError(f"{self.model_dir}: a row of {width} tokens is longer than the LiteRT export's longest "
                             f"signature ({self.max_length}); export with --seq-lengths {width} (or more), or use "
                             f"--max-seq-length {self.max_length}")

    def run(self, input_ids, token_type_ids, attention_mask):
        if input_ids.ndim != 2:
            raise UserInputError(f"{self.model_dir}: the LiteRT export takes (batch, length) inputs, "
                                 f"got shape {input_ids.shape}")
        rows, width = input_ids.shape
        length = self.signature_length(width)
        runner = self.runners[length]
        pad = ((0, 0), (0, length - width))
        arrays = {"input_ids": np.pad(input_ids, pad, constant_values=self.pad_id),
                  "token_type_ids": np.pad(token_type_ids, pad), "attention_mask": np.pad(attention_mask, pad)}
        chunks = []
        for row in range(rows):
            result = runner(**{name: np.ascontiguousarray(value[row:row + 1], dtype=np.int32)
                               for name, value in arrays.items()})
            chunks.append([result[name] for name in self.file_outputs])
        outputs = []
        for index, per_token in enumerate(self.per_token):
            value = np.concatenate([chunk[index] for chunk in chunks])
            outputs.append(value[:, :width] if per_token else value)
        if self.log_probabilities:
            with np.errstate(divide="ignore"):
                outputs = [np.log(outputs[0])]
        return outputs


# Outputs whose axis 1 is the sequence (the LiteRT predictor cuts them back to the row's width).
PER_TOKEN_OUTPUTS = {"start_logits", "end_logits", "sequence_output", "prediction_logits"}
PER_TOKEN_HEADS = ("MobileBertForTokenClassification", "MobileBertForMaskedLM")


def litert_interpreter():
    """ai_edge_litert's Interpreter class, or one line naming what to install (running a .tflite
    needs only ai-edge-litert)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UserInputError(f"the litert backend needs ai-edge-litert, which is not installed: "
                             f"pip install ai-edge-litert (or {LITERT_EXTRA})") from None
    return Interpreter


def load_litert(config: MobileBertConfig, model_dir: Path, directory: Path, manifest: dict,
                threads: Optional[int] = None) -> LiteRtPredictor:
    """The predictor for a LiteRT export dir (its manifest names the signatures and file outputs)."""
    path = directory / MANIFEST_NAME
    signatures, file_outputs = manifest.get("signatures"), manifest.get("file_outputs")
    if not isinstance(signatures, dict) or not signatures or not all(
            isinstance(length, int) and length > 0 for length in signatures.values()):
        raise UserInputError(f"{path}: 'signatures' must map signature names to sequence lengths")
    if not isinstance(file_outputs, list) or not file_outputs or not all(isinstance(name, str) for name in file_outputs):
        raise UserInputError(f"{path}: 'file_outputs' must list the .tflite's output names")
    return LiteRtPredictor(config, model_dir, directory / manifest["model_file"], manifest["outputs"], signatures,
                           file_outputs, threads)


def softmax_rows(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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




def load_eager_model(directory: Path):
    """(Paddle model in eval mode, config) from a model dir with weights."""
    from ..model.loading import build_model, load_pretrained

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
        if backend == "litert":
            predictor = load_litert(config, shown_dir, directory, manifest, threads)
        elif backend == "paddle":
            predictor = PaddleInferencePredictor(config, shown_dir, directory / PADDLE_PREFIX, names, threads)
        elif backend == "openvino":
            predictor = OpenVinoPredictor(config, shown_dir, model_file, names, threads)
        else:  # read the bytes now: the file may be in a temporary directory about to be removed
            predictor = OnnxPredictor(config, shown_dir, read_model_bytes(model_file), names, threads)
        check_runs(predictor, config, manifest.get("architecture", ""))
    except UserInputError:
        raise
    except Exception as error:  # onnxruntime / Paddle Inference / OpenVINO raise their own types for bad files
        reason = error_reason(error)
        raise UserInputError(f"{shown_files}: unreadable {backend} model (truncated or corrupt?): "
                             f"{reason[:160]}") from None
    return predictor


def check_openvino_xml(path: Path) -> None:
    """model.xml must be an OpenVINO IR (XML whose root is <net>) before OpenVINO reads it: given
    anything else, OpenVINO tries every frontend it has (TensorFlow's prints absl log lines) and
    fails with a message naming a line of its own source, not the file's problem."""
    import xml.etree.ElementTree as ElementTree

    if path.suffix != ".xml":
        return                      # an ONNX file, read by OpenVINO's ONNX frontend
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise UserInputError(f"{path}: unreadable openvino model (truncated or corrupt?): not valid XML "
                             f"({error})") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the model ({error.strerror or error})") from None
    if root.tag != "net":
        raise UserInputError(f"{path}: unreadable openvino model: not an OpenVINO IR (root element <{root.tag}>, "
                             "expected <net>)")


def error_reason(error: Exception) -> str:
    """The informative line of a backend's exception (OpenVINO's first line only says where in its
    source it was thrown: "Exception from src/inference/src/cpp/core.cpp:84:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not re.fullmatch(r"Exception from \S+:\d+:?", line)]
    return (useful or lines or [type(error).__name__])[0]


def read_model_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the model ({error.strerror or error})") from None


def check_runs(predictor: Predictor, config: MobileBertConfig, architecture: str) -> None:
    """One tiny forward: a truncated weights file can load and then fail (or be empty) at run time."""
    batch = probe_batch(config, architecture or (config.architectures or ["MobileBertModel"])[0])
    if isinstance(predictor, LiteRtPredictor):            # fixed lengths: no row longer than the longest
        batch = {name: value[..., :predictor.max_length] for name, value in batch.items()}
    outputs = predictor(batch)
    if len(outputs) != len(predictor.output_names):
        raise UserInputError(f"{predictor.model_dir}: the exported model gives {len(outputs)} outputs, "
                             f"its manifest names {len(predictor.output_names)}")


def read_manifest(directory: Path) -> Optional[dict]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None

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


FORMATS = ("paddle", "onnx", "openvino", "litert")


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


def bench_inputs(config: MobileBertConfig, batch: int, length: int, seed: int = 0) -> tuple:
    """Random ids of full length (no padding: every token counts), two segments."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, config.vocab_size, size=(batch, length)).astype(np.int64)
    input_ids[:, 0] = 2
    token_type_ids = np.zeros_like(input_ids)
    token_type_ids[:, length // 2:] = 1
    return input_ids, token_type_ids, np.ones_like(input_ids)
