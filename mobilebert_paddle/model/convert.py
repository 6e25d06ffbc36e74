"""HuggingFace MobileBERT <-> Paddle layout: the name and orientation mapping, and `mobilebert convert`.

Because model.py copies HF's module tree, the two state dicts have the same keys. The only
layout difference is that Paddle's `nn.Linear` stores its weight as [in, out] where PyTorch
stores [out, in]; which weights are Linear weights is read off the Paddle model itself (every
head, built lazily without allocating), never from a list of names. Tied copies (the MLM
decoder, which *is* the word-embedding matrix and the LM bias) are not stored, as
transformers itself does not store them.

Reading and writing model directories (every source layout, every check) is modeldir.py's.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from .config import MobileBertConfig
from .errors import UserInputError
from .files import atomic_directory
from .modeldir import (HF_FORMAT, PADDLE_FORMAT, TIED_OR_DERIVED_KEYS, StateDict, build_model, check_destination,
                       copy_tokenizer_files, load_pretrained, match_state_dict, resolve_source, write_model_files)

logger = logging.getLogger(__name__)


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
# The command
# ----------------------------------------------------------------------------------------

def convert(source: str | os.PathLike, destination: str | os.PathLike, to: str = "paddle") -> dict:
    """HF (dir or hub id) -> Paddle model dir, or Paddle model dir -> HF dir with to="hf".

    Every check (destination, source, config against weights) runs before anything is
    written; the destination then appears complete in one rename, or not at all."""
    destination = Path(destination)
    local = Path(source) if Path(source).exists() else None
    check_destination(destination, local)         # never the source, inside it, or holding it
    directory = resolve_source(source)
    check_destination(destination, directory)     # (a hub id's download too)
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
        raise UserInputError(f"{destination}: cannot write ({error.strerror or error}); nothing was written") from None
    summary = {"source": str(source), "destination": str(destination), "format": to,
               "architecture": config.architectures[0], "tensors": len(loadable),
               "parameters": int(sum(value.size for value in loadable.values())), "tokenizer_files": tokenizer_files}
    incompatibility = config.transformers_incompatibility()
    if incompatibility:   # IB-BERT: HF names and layout, written all the same (this project reads it back)
        logger.warning("%s: %s", destination, incompatibility)
        summary["note"] = incompatibility
    return summary


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
