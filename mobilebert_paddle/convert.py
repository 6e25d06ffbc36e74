"""Checkpoints in and out: HuggingFace MobileBERT <-> the Paddle model directory.

Because model.py copies HF's module tree, the two state dicts have the same keys. The only
layout difference is that Paddle's `nn.Linear` stores its weight as [in, out] where PyTorch
stores [out, in]; which weights are Linear weights is read off the Paddle model itself (every
head, built lazily without allocating), never from a list of names. Tied copies (the MLM
decoder, which *is* the word-embedding matrix and the LM bias) are not stored, as
transformers itself does not store them.

Sources that `load_pretrained` reads:
  * a Paddle model dir: config.json + model.safetensors with metadata {"format": "paddle"},
    or the MobileBert_paddle layout model_state.pdparams (HF names, Paddle orientation);
  * a HuggingFace dir: config.json + model.safetensors, sharded safetensors with an index,
    or pytorch_model.bin (needs torch; read with weights_only=True);
  * a hub id such as google/mobilebert-uncased, fetched with huggingface_hub.
"""

from __future__ import annotations

import argparse
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

from .config import CONFIG_NAME, MobileBertConfig
from .errors import UserInputError
from .files import atomic_directory, atomic_write_safetensors, ensure_writable_dir, read_json

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


# ----------------------------------------------------------------------------------------
# Which weights are Linear weights (and so transposed)
# ----------------------------------------------------------------------------------------

# Every encoder layer has the same structure: names are collected from a one-layer model and
# any layer index is read as layer 0 (24x less to build for the real checkpoint).
LAYER_INDEX = re.compile(r"(encoder\.layer\.)\d+\.")


def _config_key(config: MobileBertConfig) -> str:
    return config.replace(num_hidden_layers=1).to_json_string()


@functools.lru_cache(maxsize=8)
def _linear_weight_names(config_json: str) -> frozenset:
    import paddle

    from .model import HEADS

    config = MobileBertConfig.from_dict(json.loads(config_json))
    names = set()
    with paddle.LazyGuard():  # structure only: no parameter memory, no initialisation
        for head in HEADS.values():
            model = head(config)
            for layer_name, layer in model.named_sublayers():
                if isinstance(layer, paddle.nn.Linear):
                    names.add(f"{layer_name}.weight")
    return frozenset(names)


def is_linear_weight(key: str, config: MobileBertConfig) -> bool:
    names = _linear_weight_names(_config_key(config))
    key = LAYER_INDEX.sub(r"\g<1>0.", key)
    return key in names or f"mobilebert.{key}" in names


def hf_to_paddle(hf_state: StateDict, config: MobileBertConfig) -> StateDict:
    """HF layout -> Paddle layout: drop tied/derived copies, transpose Linear weights."""
    state = {}
    for key, value in hf_state.items():
        if key.endswith(TIED_OR_DERIVED_KEYS):
            continue
        state[key] = np.ascontiguousarray(value.T) if is_linear_weight(key, config) else value
    return state


def paddle_to_hf(state: StateDict, config: MobileBertConfig) -> StateDict:
    """Paddle layout -> HF layout (the exact inverse of hf_to_paddle on what it keeps)."""
    return {key: np.ascontiguousarray(value.T) if is_linear_weight(key, config) else value
            for key, value in state.items()}


# ----------------------------------------------------------------------------------------
# Reading weight files
# ----------------------------------------------------------------------------------------

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
        raise UserInputError(f"{path}: unreadable PyTorch weights ({torch_load_reason(error)})") from None
    return {key: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            for key, value in state.items()}


def torch_load_reason(error: Exception) -> str:
    """torch.load's multi-line error as one short clause (without its advice to drop weights_only)."""
    text = " ".join(str(error).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].split(" Check the documentation")[0].strip()
        return f"holds more than tensors, refused by weights_only loading: {detail[:200]}"
    return f"{type(error).__name__}: {text[:200]}"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles a .pdparams state dict (a dict of numpy arrays) and nothing else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("collections", "OrderedDict"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pdparams(path: Path) -> StateDict:
    try:
        with open(path, "rb") as handle:
            state = _ArraysOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise UserInputError(f"{path}: not a plain Paddle state dict ({error})") from None
    state.pop("StructuredToParameterName@@", None)
    return {key: np.asarray(value) for key, value in state.items() if isinstance(value, np.ndarray)}


def _read_sharded(directory: Path, index_name: str, reader) -> StateDict:
    index = read_json(directory / index_name, "weights index")
    try:
        shard_names = sorted(set(index["weight_map"].values()))
    except (KeyError, AttributeError, TypeError):
        raise UserInputError(f"{directory / index_name}: no 'weight_map' object") from None
    state: StateDict = {}
    for shard in shard_names:
        part = reader(directory / shard)
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
# Resolving a source (local dir or hub id) and loading it
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
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

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


def load_pretrained(source: str | os.PathLike) -> Tuple[MobileBertConfig, StateDict]:
    """(config, state dict in Paddle layout) from any supported source."""
    directory = resolve_source(source)
    if not (directory / CONFIG_NAME).is_file():
        raise UserInputError(f"{directory}: no {CONFIG_NAME}; not a MobileBERT model directory")
    config = MobileBertConfig.from_pretrained(directory)
    state, layout = read_weights(directory)
    if layout == "hf":
        check_decoder_tied(state, config, directory)
        state = hf_to_paddle(state, config)
    return config, state


def check_decoder_tied(hf_state: StateDict, config: MobileBertConfig, directory: Path) -> None:
    """The Paddle MLM head always uses the word embeddings (and cls.predictions.bias) as its
    decoder, as HF does when tie_word_embeddings is true (stored decoder copies are then
    ignored by HF too). An untied checkpoint carries its own decoder, which would be lost."""
    stored = [key for key in hf_state if key.endswith(TIED_OR_DERIVED_KEYS[:2])]
    if stored and not config.tie_word_embeddings:
        raise UserInputError(f"{directory}: tie_word_embeddings is false and the checkpoint has its own MLM "
                             f"decoder ({', '.join(sorted(stored))}); only tied decoders are supported")


def tokenizer_source(source: str | os.PathLike) -> Path:
    """The directory holding the tokenizer files of a model source (resolving hub ids)."""
    return resolve_source(source)


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
        raise UserInputError(f"{source}: config.json and the weights disagree; " + "; ".join(problems))
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


def build_model(config: MobileBertConfig, state: StateDict | None = None):
    """The Paddle model named by config.architectures (inferred from the weights if absent)."""
    from .model import HEADS

    architecture = next((name for name in (config.architectures or []) if name in HEADS), None)
    if architecture is None:
        architecture = infer_architecture(state or {})
    return HEADS[architecture](config)


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


def check_destination(destination: Path) -> None:
    """Fail before any work if `destination` cannot be (or must not be) replaced.

    atomic_directory swaps the whole directory, so only an empty directory or a model
    directory (one with config.json) may be replaced; the nearest existing ancestor must be
    a writable directory (probed, nothing left behind)."""
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


def convert(source: str | os.PathLike, destination: str | os.PathLike, to: str = "paddle") -> dict:
    """HF (dir or hub id) -> Paddle model dir, or Paddle model dir -> HF dir with to="hf".

    Every check (destination, source, config against weights) runs before anything is
    written; the destination then appears complete in one rename, or not at all."""
    destination = Path(destination)
    check_destination(destination)
    directory = resolve_source(source)
    config, state = load_pretrained(directory)
    import paddle

    with paddle.LazyGuard():  # only names, shapes and dtypes are needed: skip allocation and init
        model = build_model(config, state)
    loadable, _ = match_state_dict(model, state, str(directory), strict=True)
    config.architectures = [type(model).architecture]
    weights = paddle_to_hf(loadable, config) if to == "hf" else loadable
    try:
        with atomic_directory(destination) as staging:
            write_model_files(staging, config, weights, HF_FORMAT if to == "hf" else PADDLE_FORMAT)
            tokenizer_files = copy_tokenizer_files(directory, staging)
    except OSError as error:  # disk full, permissions changed under us: the staging dir is gone
        raise UserInputError(f"{destination}: cannot write ({error.strerror or error})") from None
    summary = {"source": str(source), "destination": str(destination), "format": to,
               "architecture": config.architectures[0], "tensors": len(loadable),
               "parameters": int(sum(value.size for value in loadable.values())), "tokenizer_files": tokenizer_files}
    incompatibility = config.transformers_incompatibility()
    if incompatibility:   # IB-BERT: HF names and layout, written all the same (this project reads it back)
        logger.warning("%s: %s", destination, incompatibility)
        summary["note"] = incompatibility
    return summary


def write_model_files(directory: Path, config: MobileBertConfig, weights: StateDict, metadata: dict) -> None:
    config.save_pretrained(directory)
    atomic_write_safetensors(directory / WEIGHTS_NAME, weights, metadata)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="HF model dir or hub id (with --to hf: a Paddle model dir)")
    parser.add_argument("destination", help="directory to write (replaced atomically)")
    parser.add_argument("--to", choices=("paddle", "hf"), default="paddle",
                        help="paddle: HF -> Paddle model dir; hf: Paddle model dir -> HF dir transformers loads")


def run(args: argparse.Namespace) -> dict:
    return convert(args.source, args.destination, to=args.to)
