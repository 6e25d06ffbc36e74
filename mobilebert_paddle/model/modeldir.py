"""The model directory: the one place that reads and writes it, with every check on the way.

A model directory (ARCHITECTURE.md, The model directory) is config.json + model.safetensors (Paddle layout, metadata
{"format": "paddle"}) + tokenizer files. This module also reads what users bring:
  * a HuggingFace dir: model.safetensors, sharded safetensors with an index, or
    pytorch_model.bin (torch.load(weights_only=True): tensors only, never code);
  * MobileBert_paddle's model_state.pdparams (a pickle read by an arrays-only unpickler);
  * a hub id such as google/mobilebert-uncased, fetched with huggingface_hub.

What is checked before a model is built (a bad file costs one line, not a traceback, a hang
or an allocation of terabytes): the config's types and ranges (config.py), every file a
directory references stays inside it, weight files hold a dict of name -> tensor, and the
config's sizes equal the weights' shapes (read from the tensors, layer by layer, against a
one-layer model built without memory). Writes go to a staging directory renamed into place.
It also holds the HF <-> Paddle layout conversion (which weights are transposed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np

from ..core.errors import UserInputError
from ..core.files import (
    SMALL_FILE_BYTES,
    atomic_directory,
    atomic_write_safetensors,
    check_separate_dirs,
    ensure_writable_dir,
    read_json,
)
from .config import CONFIG_NAME, MobileBertConfig

logger = logging.getLogger(__name__)

StateDict = Dict[str, np.ndarray]

WEIGHTS_NAME = "model.safetensors"
PADDLE_FORMAT = {"format": "paddle"}
HF_FORMAT = {"format": "pt"}
SEED_WEIGHTS_NAME = "model_state.pdparams"  # MobileBert_paddle's layout, read for compatibility
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN_NAME = "pytorch_model.bin"
HF_BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Stored by older HF checkpoints, recomputed here: tied copies and a non-persistent buffer.
TIED_OR_DERIVED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "embeddings.position_ids")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYER_KEY = re.compile(r"(encoder\.layer\.)(\d+)\.")


# ----------------------------------------------------------------------------------------
# Paths a directory references stay inside it
# ----------------------------------------------------------------------------------------

def inside(directory: Path, name, where: str) -> Path:
    """directory / name, refused unless `name` is a string naming a path inside `directory`
    (after resolving '..' and symlinks): an index or manifest must not open /etc/passwd."""
    if not isinstance(name, str) or not name:
        raise UserInputError(f"{where}: a file name must be a non-empty string, got {name!r}")
    root = directory.resolve()
    path = (directory / name).resolve()
    if path != root and root not in path.parents:
        raise UserInputError(f"{where}: names {name!r}, which is outside {directory}; refused")
    return directory / name


# ----------------------------------------------------------------------------------------
# Reading weight files: a dict of name -> array, or one line saying why not
# ----------------------------------------------------------------------------------------

def check_tensor_dict(state, path: Path, is_tensor=lambda value: isinstance(value, np.ndarray)) -> dict:
    """A state dict is a mapping of names to tensors; anything else is refused by kind."""
    if not isinstance(state, dict):
        raise UserInputError(f"{path}: holds a {type(state).__name__}, not a dict of name -> tensor")
    for key, value in state.items():
        if not isinstance(key, str) or not is_tensor(value):
            raise UserInputError(f"{path}: entry {key!r} is of type {type(value).__name__}, not a named tensor; "
                                 "expected a dict of name -> tensor")
    return state


def read_safetensors(path: Path) -> Tuple[StateDict, dict]:
    """(tensors as numpy, metadata); a truncated or corrupt file is a UserInputError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise UserInputError(f"{path}: unreadable safetensors file (truncated or corrupt?): {error}") from None
    except TypeError as error:  # e.g. bfloat16, which numpy cannot hold
        raise UserInputError(f"{path}: unsupported tensor type for numpy: {error}") from None


def read_safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file (header only; no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise UserInputError(f"{path}: unreadable safetensors file (truncated or corrupt?): {error}") from None


def read_torch_bin(path: Path) -> StateDict:
    try:
        import torch
    except ImportError:
        raise UserInputError(f"{path}: reading pytorch_model.bin needs PyTorch "
                             "(pip install torch), or convert from model.safetensors instead") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle arbitrary code
    except Exception as error:  # torch raises many types for bad files
        raise UserInputError(f"{path}: {torch_load_reason(error)}") from None
    check_tensor_dict(state, path, lambda value: isinstance(value, torch.Tensor))
    return {key: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            for key, value in state.items()}


# torch's refusal names what the pickle asked for ("Unsupported global: GLOBAL os.system", ...)
PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
PICKLE_OPCODE = re.compile(r"Unsupported operand (\d+)")
ONLY_TENSORS = "only tensors are loaded from pytorch_model.bin"


def torch_load_reason(error: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, as one clause. torch's own message
    advises turning the safety off; that advice is never passed on."""
    text = " ".join(str(error).split())
    found = PICKLED_GLOBAL.search(text)
    if found:
        return f"contains a pickled object of type {found.group(1)}, refused: {ONLY_TENSORS}"
    found = PICKLE_OPCODE.search(text)
    if found:
        return (f"unreadable PyTorch weights: pickle opcode {found.group(1)} refused (a corrupt file, or more "
                f"than tensors); {ONLY_TENSORS}")
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text or "Unpickler" in text:
        return f"unreadable PyTorch weights: pickled content other than tensors refused; {ONLY_TENSORS}"
    first = text.split(". ")[0][:160]
    return f"unreadable PyTorch weights (truncated or corrupt?): {type(error).__name__}: {first}"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles a .pdparams state dict (a dict of numpy arrays) and nothing else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("collections", "OrderedDict"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"contains a pickled object of type {module}.{name}, refused: "
                                     "only arrays are loaded")


def read_pdparams(path: Path) -> StateDict:
    try:
        with open(path, "rb") as handle:
            state = _ArraysOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as error:
        raise UserInputError(f"{path}: not a plain Paddle state dict ({error})") from None
    if isinstance(state, dict):
        state.pop("StructuredToParameterName@@", None)   # paddle.save's name table, not a tensor
    return {key: np.asarray(value) for key, value in check_tensor_dict(state, path).items()}


def _read_sharded(directory: Path, index_name: str, reader) -> StateDict:
    index_path = directory / index_name
    index = read_json(index_path, "weights index", max_bytes=SMALL_FILE_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserInputError(f"{index_path}: no 'weight_map' object of tensor name -> shard file")
    shards = [inside(directory, name, f"{index_path}: weight_map[{key!r}]") for key, name in weight_map.items()]
    state: StateDict = {}
    for shard in sorted(set(shards)):
        part = reader(shard)
        state.update(part[0] if isinstance(part, tuple) else part)
    return state


def read_weights(directory: Path) -> Tuple[StateDict, str]:
    """Read whichever weights a model dir holds: (state dict, "paddle" or "hf" layout)."""
    if (directory / WEIGHTS_NAME).is_file():
        state, metadata = read_safetensors(directory / WEIGHTS_NAME)
        return state, "paddle" if metadata.get("format") == "paddle" else "hf"
    if (directory / HF_SAFETENSORS_INDEX).is_file():
        return _read_sharded(directory, HF_SAFETENSORS_INDEX, read_safetensors), "hf"
    if (directory / SEED_WEIGHTS_NAME).is_file():
        return read_pdparams(directory / SEED_WEIGHTS_NAME), "paddle"
    if (directory / HF_BIN_NAME).is_file():
        return read_torch_bin(directory / HF_BIN_NAME), "hf"
    if (directory / HF_BIN_INDEX).is_file():
        return _read_sharded(directory, HF_BIN_INDEX, read_torch_bin), "hf"
    raise UserInputError(f"{directory}: no weights found (expected {WEIGHTS_NAME}, {HF_SAFETENSORS_INDEX}, "
                         f"{SEED_WEIGHTS_NAME} or {HF_BIN_NAME})")


# ----------------------------------------------------------------------------------------
# Resolving a source (local dir or hub id)
# ----------------------------------------------------------------------------------------

def resolve_source(source: str | os.PathLike) -> Path:
    """A local model dir as is; a hub id downloaded (or taken from the HF cache)."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise UserInputError(f"{path}: expected a model directory, found a file")
        return path
    if not HUB_ID.match(str(source)):
        raise UserInputError(f"{source}: no such directory (nor a hub id of the form owner/name)")
    return download_from_hub(str(source))


def download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_NAME, "*.safetensors", "*.safetensors.index.json", *TOKENIZER_FILES]
    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(directory.glob("*.safetensors")):  # older repos only have pytorch_model.bin
            directory = Path(snapshot_download(repo_id, allow_patterns=[HF_BIN_NAME, HF_BIN_INDEX]))
    except Exception as error:  # offline, unknown repo, auth: each ends in one line for the user
        raise UserInputError(hub_error_message(repo_id, error)) from None
    return directory


def hub_error_message(repo_id: str, error: Exception) -> str:
    """One line saying why a hub download failed and what to do instead."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    manual = (f"download config.json, model.safetensors (or pytorch_model.bin) and vocab.txt from "
              f"https://huggingface.co/{repo_id} into a directory and pass that directory instead")
    if isinstance(error, LocalEntryNotFoundError):  # offline (HF_HUB_OFFLINE or no network) and not cached
        return (f"{repo_id}: not a local directory, not in the HuggingFace cache, and the hub is unreachable "
                f"(offline?); {manual}")
    if isinstance(error, GatedRepoError):
        return f"{repo_id}: the hub repository is gated; accept its terms and log in (hf auth login), or {manual}"
    if isinstance(error, RepositoryNotFoundError):
        return f"{repo_id}: neither a local directory nor a model on the HuggingFace hub (private? log in first)"
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return f"{repo_id}: cannot download from the HuggingFace hub ({first_line.strip()[:200]}); {manual}"


def tokenizer_source(source: str | os.PathLike) -> Path:
    """The directory holding the tokenizer files of a model source (resolving hub ids)."""
    return resolve_source(source)


# ----------------------------------------------------------------------------------------
# Loading: config + weights, checked against each other before any model is built
# ----------------------------------------------------------------------------------------

def read_config(directory: Path) -> MobileBertConfig:
    if not (directory / CONFIG_NAME).is_file():
        raise UserInputError(f"{directory}: no {CONFIG_NAME}; not a MobileBERT model directory")
    return MobileBertConfig.from_pretrained(directory)


def read_model_dir(source: str | os.PathLike) -> Tuple[Path, MobileBertConfig, StateDict, str]:
    """(directory, config, weights as stored, their layout "paddle" or "hf") from any supported
    source; the layer count is checked against the weights before anything else is read."""
    directory = resolve_source(source)
    config = read_config(directory)
    state, layout = read_weights(directory)
    check_layer_count(config, state, directory)
    if layout == "hf":
        check_decoder_tied(state, config, directory)
    return directory, config, state, layout


def load_weights_for(model_class, source: str | os.PathLike) -> Tuple[MobileBertConfig, StateDict]:
    """(config, state dict in Paddle layout) for a `model_class` model, checked: the config's sizes
    equal the weights' shapes, so building the model it describes is safe."""
    return checked_paddle_state(model_class, *read_model_dir(source))


def checked_paddle_state(model_class, directory: Path, config: MobileBertConfig, state: StateDict,
                         layout: str) -> Tuple[MobileBertConfig, StateDict]:
    """read_model_dir's weights in Paddle layout, their shapes checked against `model_class`'s."""
    if layout == "hf":
        state = hf_to_paddle(state, config, model_class)
    check_sizes(config, state, model_class, directory)
    return config, state


def check_decoder_tied(hf_state: StateDict, config: MobileBertConfig, directory: Path) -> None:
    """The Paddle MLM head always uses the word embeddings (and cls.predictions.bias) as its
    decoder, as HF does when tie_word_embeddings is true (stored decoder copies are then
    ignored by HF too). An untied checkpoint carries its own decoder, which would be lost."""
    stored = [key for key in hf_state if key.endswith(TIED_OR_DERIVED_KEYS[:2])]
    if stored and not config.tie_word_embeddings:
        raise UserInputError(f"{directory}: tie_word_embeddings is false and the checkpoint has its own MLM "
                             f"decoder ({', '.join(sorted(stored))}); only tied decoders are supported")


def check_layer_count(config: MobileBertConfig, state: StateDict, source) -> None:
    """The weights hold encoder.layer.0 .. N-1: N must be num_hidden_layers (a config asking
    for a million layers is refused here, before anything is built)."""
    indices = {int(match.group(2)) for key in state for match in [LAYER_KEY.search(key)] if match}
    if indices != set(range(len(indices))):
        gaps = sorted(set(range(max(indices) + 1)) - indices)[:4]
        raise UserInputError(f"{source}: the weights skip encoder layer(s) {gaps}; a checkpoint's layers are "
                             "numbered from 0 without gaps")
    if indices and len(indices) != config.num_hidden_layers:
        raise UserInputError(f"{source}: config.json and the weights disagree; num_hidden_layers is "
                             f"{config.num_hidden_layers} but the weights hold {len(indices)} layers "
                             f"(encoder.layer.0-{len(indices) - 1})")


@functools.lru_cache(maxsize=16)
def _one_layer_structure(config_json: str, model_class) -> tuple[dict, frozenset]:
    """({name: shape} of the parameters, names of the nn.Linear weights) of a one-layer
    `model_class` model for the config, built under LazyGuard (names and shapes only: no memory
    however large the sizes, no initialisation)."""
    import paddle

    config = MobileBertConfig.from_dict(json.loads(config_json))
    with paddle.LazyGuard():
        model = model_class(config)
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        linear = frozenset(f"{name}.weight" for name, layer in model.named_sublayers()
                           if isinstance(layer, paddle.nn.Linear))
    return shapes, linear


def one_layer_structure(config: MobileBertConfig, model_class) -> tuple[dict, frozenset]:
    return _one_layer_structure(config.replace(num_hidden_layers=1).to_json_string(), model_class)


def check_sizes(config: MobileBertConfig, state: StateDict, model_class, source) -> None:
    """Every stored weight whose name the config's model has must have the shape the config
    gives it (layer N read as layer 0): sizes are checked on shapes, before allocating."""
    shapes, _ = one_layer_structure(config, model_class)
    order = {key: position for position, key in enumerate(shapes)}   # the model's order: embeddings first
    mismatched = []
    for key, value in state.items():
        bare = LAYER_KEY.sub(r"\g<1>0.", key)
        bare = bare if bare in shapes else f"mobilebert.{bare}"
        if bare in shapes and tuple(value.shape) != shapes[bare]:
            mismatched.append((order[bare], f"{key} {tuple(value.shape)} in checkpoint vs {shapes[bare]} in config"))
    mismatched = [text for _, text in sorted(mismatched)]
    if mismatched:
        raise UserInputError(f"{source}: config.json and the weights disagree; shape mismatch: {_first(mismatched)}"
                             f"{label_hint(config, state)}")


def label_hint(config: MobileBertConfig, state: StateDict) -> str:
    """When only the classifier disagrees, the label count is what is wrong: say so."""
    stored = next((value.shape[-1] for key, value in state.items() if key.endswith("classifier.weight")), None)
    if stored is None or stored == config.num_labels:
        return ""
    return (f" (the checkpoint's classifier has {stored} labels, the config {config.num_labels}: "
            f"fix num_labels / id2label, or start from a base model)")


def check_label_count(stored: MobileBertConfig, state: StateDict, architecture: str, wanted: dict, task: str,
                      source) -> None:
    """Fine-tuning a classifier on a task with another label count: say which counts and what to do."""
    has_classifier = any(key.endswith("classifier.weight") for key in state)
    if has_classifier and architecture.endswith("Classification") and len(wanted) != stored.num_labels:
        labels = ", ".join(stored.id2label[index] for index in sorted(stored.id2label))
        raise UserInputError(f"{source}: the model has {stored.num_labels} labels ({labels[:120]}), task {task} has "
                             f"{len(wanted)}: start from a base model (mobilebert convert of the pretrained "
                             f"checkpoint) or from a model fine-tuned on a {len(wanted)}-label task")


# ----------------------------------------------------------------------------------------
# Matching a state dict to a model: HF's rules, with config/weights disagreement made loud
# ----------------------------------------------------------------------------------------

def _align_prefix(model_keys: Iterable[str], state: StateDict, prefix: str = "mobilebert.") -> StateDict:
    """Add or strip the base-model prefix so a base checkpoint loads into a head and back."""
    model_has_prefix = any(key.startswith(prefix) for key in model_keys)
    state_has_prefix = any(key.startswith(prefix) for key in state)
    if model_has_prefix and not state_has_prefix:
        return {prefix + key: value for key, value in state.items()}
    if state_has_prefix and not model_has_prefix:
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _is_backbone(key: str) -> bool:
    """Embeddings and encoder weights must come from the checkpoint; heads (and the pooler,
    absent from checkpoints trained without classifier_activation) may be new."""
    bare = key[len("mobilebert."):] if key.startswith("mobilebert.") else key
    return bare.startswith(("embeddings.", "encoder."))


def match_state_dict(model, state: StateDict, source: str = "checkpoint", strict: bool = False):
    """Check `state` against `model`: returns (state to load, names newly initialised).

    Raises UserInputError naming keys and shapes when the config and the weights disagree:
    a backbone weight missing or unexpected, or any shape mismatch. With `strict` (used by
    `convert`), any missing or unexpected key at all is an error.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = _align_prefix(expected, state)
    mismatched = [f"{key} {tuple(state[key].shape)} in checkpoint vs {shape} in config"
                  for key, shape in expected.items() if key in state and tuple(state[key].shape) != shape]
    missing = sorted(key for key in expected if key not in state)
    unexpected = sorted(key for key in state if key not in expected)
    fatal_missing = missing if strict else [key for key in missing if _is_backbone(key)]
    fatal_unexpected = unexpected if strict else [key for key in unexpected if _is_backbone(key)]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + _first(mismatched))
    if fatal_missing:
        problems.append("missing from checkpoint: " + _first(fatal_missing))
    if fatal_unexpected:
        problems.append("not in the model the config describes: " + _first(fatal_unexpected))
    if problems:
        raise UserInputError(f"{source}: config.json and the weights disagree; " + "; ".join(problems)
                             + label_hint(model.config, state))
    ignored = [key for key in unexpected if key not in fatal_unexpected]
    if ignored:
        logger.info("%s: %d checkpoint weights not used by %s: %s", source, len(ignored),
                    type(model).__name__, _first(ignored))
    dtypes = {key: value.dtype for key, value in model.state_dict().items()}
    loadable = {key: np.asarray(state[key]).astype(_numpy_dtype(dtypes[key]), copy=False)
                for key in expected if key in state}
    return loadable, missing


def _numpy_dtype(paddle_dtype) -> str:
    return str(paddle_dtype).replace("paddle.", "")


def _first(items, count: int = 4) -> str:
    shown = ", ".join(items[:count])
    return shown + (f" (+{len(items) - count} more)" if len(items) > count else "")


def infer_architecture(state: StateDict) -> str:
    keys = set(state)
    has = lambda suffix: any(key.endswith(suffix) for key in keys)  # noqa: E731
    if has("qa_outputs.weight"):
        return "MobileBertForQuestionAnswering"
    if has("cls.predictions.transform.dense.weight"):
        return "MobileBertForPreTraining" if has("cls.seq_relationship.weight") else "MobileBertForMaskedLM"
    if has("cls.seq_relationship.weight"):
        return "MobileBertForNextSentencePrediction"
    if has("classifier.weight"):
        return "MobileBertForSequenceClassification"
    return "MobileBertModel"


def load_tokenizer(directory: Path, config: MobileBertConfig):
    """The directory's tokenizer, checked against the model: an id beyond vocab_size would
    fail deep inside the embedding lookup, so a larger vocabulary is refused here."""
    from .tokenizer import MobileBertTokenizer

    tokenizer = MobileBertTokenizer.from_pretrained(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserInputError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's "
                             f"vocab_size is {config.vocab_size}: ids from {config.vocab_size} on have no embedding")
    return tokenizer


# ----------------------------------------------------------------------------------------
# Writing model directories
# ----------------------------------------------------------------------------------------

def model_state_numpy(model) -> StateDict:
    return {key: np.ascontiguousarray(value.numpy()) for key, value in model.state_dict().items()}


def save_paddle_model_dir(model, directory: str | os.PathLike, tokenizer=None,
                          tokenizer_from: str | os.PathLike | None = None) -> None:
    """Write config.json, model.safetensors (Paddle layout) and tokenizer files, atomically."""
    with atomic_directory(directory) as staging:
        model.config.architectures = [type(model).architecture]
        write_model_files(staging, model.config, model_state_numpy(model), PADDLE_FORMAT)
        _write_tokenizer(staging, tokenizer, tokenizer_from)


def _write_tokenizer(staging: Path, tokenizer=None, tokenizer_from: str | os.PathLike | None = None) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    elif tokenizer_from is not None:
        copy_tokenizer_files(Path(tokenizer_from), staging)


def copy_tokenizer_files(source: Path, destination: Path) -> list:
    """Copy the tokenizer files present in `source`; make vocab.txt from tokenizer.json if needed."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
            copied.append(name)
    if "vocab.txt" not in copied and "tokenizer.json" in copied:
        from .tokenizer import MobileBertTokenizer

        MobileBertTokenizer.from_pretrained(source).save_pretrained(destination)
        copied.append("vocab.txt")
    if not copied:
        logger.warning("%s: no tokenizer files (vocab.txt / tokenizer.json) to copy", source)
    return copied


def write_model_files(directory: Path, config: MobileBertConfig, weights: StateDict, metadata: dict) -> None:
    config.save_pretrained(directory)
    atomic_write_safetensors(directory / WEIGHTS_NAME, weights, metadata)


def check_destination(destination: Path, source: Path | None = None) -> None:
    """Fail before any work if `destination` cannot be (or must not be) replaced.

    atomic_directory swaps the whole directory, so only an empty directory or a model
    directory (one with config.json) may be replaced, never the source, a directory inside
    it or one holding it; the nearest existing ancestor must be a writable directory (probed,
    nothing left behind)."""
    if source is not None:
        check_separate_dirs(source, destination, "the destination")
    if destination.exists():
        if not destination.is_dir():
            raise UserInputError(f"{destination}: exists and is not a directory; refusing to replace it")
        if any(destination.iterdir()) and not (destination / CONFIG_NAME).is_file():
            raise UserInputError(f"{destination}: exists, is not empty and holds no {CONFIG_NAME}; "
                                 "refusing to replace a directory that is not a model directory")
    ancestor = next(path for path in destination.absolute().parents if path.exists())
    if not ancestor.is_dir():
        raise UserInputError(f"{destination}: cannot create it, {ancestor} is a file")
    ensure_writable_dir(ancestor)


# ----------------------------------------------------------------------------------------
# HF layout <-> Paddle layout: the weights of every nn.Linear are transposed (found from the
# model's own sublayers, not from a list of names); tied or derived copies are dropped.
# ----------------------------------------------------------------------------------------

def is_linear_weight(key: str, config: MobileBertConfig, model_class) -> bool:
    _, names = one_layer_structure(config, model_class)
    key = LAYER_KEY.sub(r"\g<1>0.", key)
    return key in names or f"mobilebert.{key}" in names


def hf_to_paddle(hf_state: StateDict, config: MobileBertConfig, model_class) -> StateDict:
    """HF layout -> Paddle layout: drop tied/derived copies, transpose Linear weights."""
    state = {}
    for key, value in hf_state.items():
        if key.endswith(TIED_OR_DERIVED_KEYS):
            continue
        state[key] = np.ascontiguousarray(value.T) if is_linear_weight(key, config, model_class) else value
    return state


def paddle_to_hf(state: StateDict, config: MobileBertConfig, model_class) -> StateDict:
    """Paddle layout -> HF layout (the exact inverse of hf_to_paddle on what it keeps)."""
    return {key: np.ascontiguousarray(value.T) if is_linear_weight(key, config, model_class) else value
            for key, value in state.items()}
