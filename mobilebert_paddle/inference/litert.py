"""LiteRT (.tflite) export for phones (`--format litert`): conversion, int8, task metadata, and
the check against eager at every signature length. The predictor that runs a .tflite is
predictors.LiteRtPredictor (`--backend litert`).

Route: the Paddle weights go into HuggingFace's PyTorch MobileBERT in memory (the same twin
`bench` times: `convert --to hf` is bit-exact), which litert-torch converts into one .tflite
file with a signature per sequence length (`seq_128`, `seq_384`, ...: litert-torch cannot
convert a symbolic length or batch, so each length is its own subgraph; the subgraphs share
the weight buffers). Each signature takes int32 `input_ids`, `token_type_ids` and
`attention_mask` of shape (1, length) and returns the head's outputs by name. Everything
lowers to TFLite builtin ops (the trigram embedding to SLICE/PAD/CONCATENATION, NoNorm to
MUL/ADD); the attention mask is passed to the HF model as an additive float mask, which keeps
GATHER_ND on booleans (version 5, unknown to the TFLite runtimes inside tflite-support and
older apps) out of the graph.

`--quantize int8`: ai-edge-quantizer's dynamic-range recipe (`dynamic_wi8_afp32`): weights of
every FULLY_CONNECTED and EMBEDDING_LOOKUP int8 per output channel, activations float32 in the
file and quantized per row at run time by the kernels (XNNPACK on CPU).

Metadata: the QA and sequence-classification exports carry TFLite metadata (BERT tokenizer with
the vocabulary, input/output tensor names, labels) written with MediaPipe's metadata writer, so
the on-device task APIs load the file with no code of the user's:
- MediaPipe's `TextClassifier` (classification): it reads its scores as they are and accepts
  only single-subgraph models, so the classification file ends in a softmax (output
  `probabilities`) and needs exactly one `--seq-lengths`;
- the TFLite Task Library's `BertQuestionAnswerer` (QA): it fills exactly 384 tokens into the
  first subgraph, so the first `--seq-lengths` must be 384 (the default for QA).

Everything here but the checks needs the `litert` extra (litert-torch, ai-edge-quantizer,
MediaPipe, PyTorch and transformers); it is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..core.logs import quiet_root_logger, stdout_to_stderr
from ..core.numerics import relative_error
from ..model.config import MobileBertConfig
from ..model.convert import hf_twin
from .predictors import (
    LITERT_EXTRA,
    LITERT_NAME,
    LiteRtPredictor,
    Predictor,
    default_threads,
    output_names,
    softmax_rows,
)

logger = logging.getLogger(__name__)

SIGNATURE_PREFIX = "seq_"
FILE_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
QA = "MobileBertForQuestionAnswering"
CLASSIFICATION = "MobileBertForSequenceClassification"
# Inputs of shape (batch, choices, length): no fixed-shape signature fits an unknown number of choices.
NOT_EXPORTED = {"MobileBertForMultipleChoice": "its inputs are (batch, choices, length)"}
DEFAULT_LENGTH = {QA: 384}             # SQuAD's windows; BertQuestionAnswerer's fixed length
OTHER_DEFAULT_LENGTH = 128             # GLUE's
TASK_LIBRARY_QA_LENGTH = 384           # tflite-support's BertQuestionAnswerer::kMaxSeqLen


# ----------------------------------------------------------------------------------------
# What is installed
# ----------------------------------------------------------------------------------------

# module -> the package that provides it
CONVERTER_PACKAGES = {"litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer",
                      "ai_edge_litert": "ai-edge-litert", "mediapipe": "mediapipe", "torch": "torch",
                      "transformers": "transformers"}


def require_converter(what: str = "--format litert") -> None:
    """The conversion side of the extra (litert-torch, ai-edge-quantizer, MediaPipe's metadata
    writer; PyTorch and transformers), or one line naming the extra."""
    missing = [package for module, package in CONVERTER_PACKAGES.items() if not _importable(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UserInputError(f"{what} needs {', '.join(missing)}, which {verb} not installed: {LITERT_EXTRA}")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "mediapipe", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


# ----------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------

def default_seq_lengths(config: MobileBertConfig, architecture: str) -> list:
    """The model's own max_seq_length (stored by the trainer) or the head's usual one (QA 384,
    others 128), at most max_position_embeddings."""
    stored = ((config.extra or {}).get("task_settings") or {}).get("max_seq_length")
    length = stored or DEFAULT_LENGTH.get(architecture, OTHER_DEFAULT_LENGTH)
    return [min(int(length), config.max_position_embeddings)]


def check_model(config: MobileBertConfig, architecture: str, source: Path) -> None:
    """Refuse, before any work, what the PyTorch route cannot build."""
    incompatibility = config.transformers_incompatibility()
    if incompatibility:
        raise UserInputError(f"{source}: --format litert converts through transformers' MobileBERT, and {incompatibility}")
    if config.trigram_input and config.trigram_ignores_padding:
        raise UserInputError(f"{source}: --format litert converts through transformers' MobileBERT, which has no "
                             "trigram_ignores_padding (this model's trigram embedding ignores [PAD])")
    if architecture in NOT_EXPORTED:
        raise UserInputError(f"{source}: {architecture} is not exported to LiteRT ({NOT_EXPORTED[architecture]})")


def check_seq_lengths(lengths: Sequence[int], config: MobileBertConfig, minimum: int = 1) -> list:
    lengths = [int(length) for length in lengths]
    if not lengths:
        raise UserInputError("--seq-lengths is empty")
    if len(set(lengths)) != len(lengths):
        raise UserInputError(f"--seq-lengths {','.join(map(str, lengths))}: a length is repeated")
    for length in lengths:
        if length < minimum:
            raise UserInputError(f"--seq-lengths {length}: expected at least {minimum}")
        if length > config.max_position_embeddings:
            raise UserInputError(f"--seq-lengths {length} exceeds the model's max_position_embeddings "
                                 f"({config.max_position_embeddings})")
    return lengths


def file_outputs(config: MobileBertConfig, architecture: str) -> tuple:
    """The .tflite's output names: the head's, except that a classifier (2+ labels) ends in a
    softmax, `probabilities`, since MediaPipe's TextClassifier reports the output as scores."""
    if ends_in_softmax(config, architecture):
        return ("probabilities",)
    return output_names(architecture)


def ends_in_softmax(config: MobileBertConfig, architecture: str) -> bool:
    return architecture == CLASSIFICATION and config.num_labels > 1


# ----------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------

def signature_name(length: int) -> str:
    return f"{SIGNATURE_PREFIX}{length}"


def exportable_module(hf_model, names: Sequence[str], softmax: bool):
    """The HF model with the file's calling convention: int32 (1, L) inputs by name, an additive
    float mask, a dict of named outputs."""
    import torch

    class LiteRtSignature(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, token_type_ids, attention_mask):
            # (1, 1, 1, L) float: HF takes a 4-D mask as it is and adds it to the attention scores.
            additive = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * torch.finfo(torch.float32).min
            output = self.inner(input_ids=input_ids.to(torch.int64), token_type_ids=token_type_ids.to(torch.int64),
                                attention_mask=additive)
            values = [value for value in output.values() if isinstance(value, torch.Tensor)][:len(names)]
            if softmax:
                values = [torch.softmax(values[0], dim=-1)]
            return dict(zip(names, values))

    return LiteRtSignature(hf_model).eval()


def convert(hf_model, names: Sequence[str], lengths: Sequence[int], softmax: bool) -> bytes:
    """The .tflite bytes: one signature per length, in the given order (the first is subgraph 0,
    the one the on-device task APIs run)."""
    import torch

    with stdout_to_stderr(), quiet_root_logger(logging.ERROR):   # torchao warns about GPU kernels at import
        import litert_torch
    module = exportable_module(hf_model, names, softmax)
    converter = litert_torch.Converter()
    for length in lengths:
        sample = {name: torch.ones((1, length), dtype=torch.int32) for name in FILE_INPUTS}
        converter.signature(signature_name(length), module, sample_kwargs=sample)
    try:
        with stdout_to_stderr(), quiet_root_logger(), torch.no_grad():   # (a root-logger INFO line per op)
            edge_model = converter.convert()
            content = edge_model.model_content()
    except Exception as error:  # litert-torch raises many types when an op cannot be lowered
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserInputError(f"litert-torch could not convert the model: {type(error).__name__}: {reason[:200]}") from None
    return compact_tensor_names(bytes(content))


def compact_tensor_names(content: bytes) -> bytes:
    """litert-torch names every tensor after its full module path ('__main__.LiteRtSignature/
    transformers.models.mobilebert.modeling_mobilebert.MobileBertModel_mobilebert/...', 3.4 MB
    of names in the full-size two-signature file). Keep the attribute path only
    ('inner/mobilebert/embeddings/...'); signature inputs and outputs keep their names."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    kept = {subgraph.tensors[index].name for subgraph in model.subgraphs
            for index in list(subgraph.inputs) + list(subgraph.outputs)}
    used = set(kept)                       # names stay unique in the model (ai-edge-quantizer requires it)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if not tensor.name or tensor.name in kept:
                continue
            name = short_tensor_name(tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name)
            unique, count = name, 1
            while unique in used:
                count += 1
                unique = f"{name}#{count}"
            used.add(unique)
            tensor.name = unique
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def short_tensor_name(name: str) -> str:
    """'pkg.mod.ClassA_attr/pkg.mod.ClassB_sub;1' -> 'attr/sub;1' (each part: the module's
    attribute name after its class's full name)."""
    parts = []
    for part in name.split("/"):
        last = part.rsplit(".", 1)[-1]
        parts.append(last.split("_", 1)[1] if "_" in last else last)
    return "/".join(parts)


def quantize_int8(content: bytes) -> bytes:
    """ai-edge-quantizer's dynamic-range int8 recipe (int8 weights per channel, float32
    activations quantized at run time)."""
    from ai_edge_quantizer import quantizer, recipe

    with stdout_to_stderr():
        engine = quantizer.Quantizer(bytearray(content))
        engine.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = engine.quantize()
    return inline_buffers(bytes(result.quantized_model))


def inline_buffers(content: bytes) -> bytes:
    """The same model with every weight inside the flatbuffer. ai-edge-quantizer stores large ones
    after it, addressed by file offset, and the metadata populator rewrites the flatbuffer (so
    those offsets would point into the wrong bytes) before appending the associated files."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))   # resolves offset buffers
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ----------------------------------------------------------------------------------------
# Metadata (MediaPipe's writer)
# ----------------------------------------------------------------------------------------

# Our metadata's fields and the metadata schema version that introduced them: BertTokenizerOptions
# and SubGraphMetadata.input_process_units 1.1.0, AssociatedFileType VOCABULARY 1.0.1.
METADATA_PARSER_VERSION = "1.1.0"


@contextlib.contextmanager
def metadata_writer_module():
    """MediaPipe's metadata_writer. mediapipe 1.x wheels leave out the compiled helper its
    populator imports (mediapipe.tasks.cc.metadata.python._pywrap_metadata_version, which
    computes the minimum metadata parser version); while it is missing, a stand-in returns the
    version our metadata needs (a test compares it with tflite-support's compiled one)."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    added = []
    if not _importable_module(name):
        for module in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python", name):
            if module not in sys.modules:
                sys.modules[module] = types.ModuleType(module)
                added.append(module)
        sys.modules[name].GetMinimumMetadataParserVersion = lambda buffer: METADATA_PARSER_VERSION
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

        yield metadata_writer
    finally:
        for module in added:      # the imported writer keeps its reference; nothing else sees the stand-in
            sys.modules.pop(module, None)


def _importable_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def add_metadata(content: bytes, config: MobileBertConfig, architecture: str, vocab_file: Path,
                 first_length: int) -> tuple:
    """(bytes with metadata, metadata JSON) for the QA and classification heads."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    subgraph = model.Subgraphs(0)
    signature = next(model.SignatureDefs(index) for index in range(model.SignatureDefsLength())
                     if model.SignatureDefs(index).SubgraphIndex() == 0)

    def tensor_name(entry) -> str:       # the subgraph's tensor behind a signature input/output name
        return subgraph.Tensors(entry.TensorIndex()).Name().decode()

    by_input = {signature.Inputs(index).Name().decode(): tensor_name(signature.Inputs(index))
                for index in range(signature.InputsLength())}
    by_output = {tensor_name(signature.Outputs(index)): signature.Outputs(index).Name().decode()
                 for index in range(signature.OutputsLength())}
    outputs = [by_output[subgraph.Tensors(subgraph.Outputs(index)).Name().decode()]   # in the subgraph's order
               for index in range(subgraph.OutputsLength())]
    with metadata_writer_module() as writer_module:
        writer = writer_module.MetadataWriter(bytearray(content))
        if architecture == QA:
            writer.add_general_info("MobileBERT question answering",
                                    f"Extractive question answering over {first_length}-token windows "
                                    "(mobilebert-paddle export).")
        else:
            writer.add_general_info("MobileBERT text classifier",
                                    f"Classifies text into {config.num_labels} labels (mobilebert-paddle export).")
        writer.add_bert_text_input(writer_module.BertTokenizer(str(vocab_file)), by_input["input_ids"],
                                   by_input["attention_mask"], by_input["token_type_ids"])
        if architecture == QA:
            for name in outputs:        # the Task Library finds them by these metadata names
                writer.add_feature_output(name=name, description=f"{name.replace('_', ' ')} of each token")
        else:
            labels = writer_module.Labels().add([config.id2label.get(index, str(index))
                                                 for index in range(config.num_labels)])
            writer.add_classification_output(labels, name="probabilities",
                                             description="Probability of each label (softmax of the logits).")
        with stdout_to_stderr():
            populated, metadata_json = writer.populate()
    return bytes(populated), metadata_json


def on_device_apis(architecture: str, lengths: Sequence[int], softmax: bool) -> dict:
    """Which standard on-device API can load the file, and if not why not."""
    if architecture == QA:
        if lengths[0] == TASK_LIBRARY_QA_LENGTH:
            return {"tflite_task_library_BertQuestionAnswerer": "yes"}
        return {"tflite_task_library_BertQuestionAnswerer":
                f"no: it fills {TASK_LIBRARY_QA_LENGTH} tokens into the first signature, which is "
                f"{signature_name(lengths[0])} (export with --seq-lengths {TASK_LIBRARY_QA_LENGTH} first)"}
    if architecture == CLASSIFICATION and softmax:
        if len(lengths) == 1:
            return {"mediapipe_TextClassifier": "yes"}
        return {"mediapipe_TextClassifier": "no: it accepts single-subgraph models only (export one --seq-lengths)"}
    return {}


def write_litert(model, config: MobileBertConfig, source: Path, staging: Path, quantize: Optional[str],
                 seq_lengths: Optional[Sequence[int]] = None) -> dict:
    """model.tflite in `staging` (which already holds config.json and the tokenizer files);
    returns the manifest's LiteRT fields."""
    architecture = config.architectures[0]
    check_model(config, architecture, source)
    lengths = check_seq_lengths(seq_lengths or default_seq_lengths(config, architecture), config)
    require_converter()
    softmax = ends_in_softmax(config, architecture)
    names = file_outputs(config, architecture)
    logger.info("converting to LiteRT: signatures %s (a full-size model takes minutes per signature)",
                ", ".join(signature_name(length) for length in lengths))
    with torch_threads(default_threads()):
        content = convert(hf_twin(model, config), names, lengths, softmax)
    if quantize == "int8":
        content = quantize_int8(content)
    manifest = {"model_file": LITERT_NAME,
                "signatures": {signature_name(length): length for length in lengths},
                "file_inputs": list(FILE_INPUTS), "file_outputs": list(names), "input_dtype": "int32"}
    if softmax:
        manifest["note"] = ("the file outputs softmax probabilities (what MediaPipe's TextClassifier reports); "
                            "--backend litert hands evaluate/predict their log as the logits")
    vocab = staging / "vocab.txt"
    if not (architecture == QA or softmax):
        manifest["metadata"] = "none: task metadata is written for the QA and classification heads"
    elif not vocab.is_file():
        manifest["metadata"] = "none: the model directory has no vocab.txt for the BERT tokenizer metadata"
    else:
        content, _ = add_metadata(content, config, architecture, vocab, lengths[0])
        manifest["metadata"] = "BERT tokenizer (vocab.txt), tensor names" + (", labels" if softmax else "")
        manifest["on_device"] = on_device_apis(architecture, lengths, softmax)
    (staging / LITERT_NAME).write_bytes(content)
    return manifest


@contextlib.contextmanager
def torch_threads(threads: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------
# The check against eager
# ----------------------------------------------------------------------------------------

def probe_batches(config: MobileBertConfig, lengths: Sequence[int], seed: int = 0) -> dict:
    """{length: batch of 2 rows of exactly that width, one full and one with a third padding}:
    what the export is checked on at every signature (padding changes MobileBERT's outputs, so
    the eager model is run on the same padded rows)."""
    rng = np.random.default_rng(seed)
    batches = {}
    for length in lengths:
        real = np.array([length, max(1, length - length // 3)])
        positions = np.arange(length)[None, :]
        attention_mask = (positions < real[:, None]).astype(np.int64)
        input_ids = rng.integers(min(5, config.vocab_size - 1), config.vocab_size, size=(2, length)) * attention_mask
        token_type_ids = ((positions >= real[:, None] // 2) * attention_mask).astype(np.int64)
        batches[length] = dict(input_ids=input_ids.astype(np.int64), token_type_ids=token_type_ids,
                               attention_mask=attention_mask)
    return batches


def compare_signatures(predictor: LiteRtPredictor, reference: Predictor, config: MobileBertConfig) -> dict:
    """{signature: {output: relative error}} of the export against the eager model, on padded and
    unpadded rows at every signature length. A classifier is compared on probabilities."""
    errors = {}
    for length, batch in probe_batches(config, predictor.lengths).items():
        expected, actual = reference(batch), predictor(batch)
        if predictor.log_probabilities:
            expected, actual = [softmax_rows(expected[0])], [np.exp(actual[0])]
        errors[signature_name(length)] = {name: relative_error(got, want) for name, got, want
                                          in zip(predictor.file_outputs, actual, expected)}
    return errors
