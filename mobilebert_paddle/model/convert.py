"""`mobilebert convert`: a HuggingFace MobileBERT (dir or hub id) -> a Paddle model dir, and back.

Because network.py copies HF's module tree, the two state dicts have the same keys. The only
layout difference is that Paddle's `nn.Linear` stores its weight as [in, out] where PyTorch
stores [out, in]; which weights are Linear weights is read off the Paddle model itself (built
lazily without allocating), never from a list of names (modeldir.hf_to_paddle / paddle_to_hf).
Tied copies (the MLM decoder, which *is* the word-embedding matrix and the LM bias) are not
stored, as transformers itself does not store them. `hf_twin` does the same conversion in memory,
into transformers' PyTorch model.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..core.errors import UserInputError
from ..core.files import atomic_directory
from .loading import build_model, load_pretrained
from .modeldir import (
    HF_FORMAT,
    PADDLE_FORMAT,
    check_destination,
    copy_tokenizer_files,
    match_state_dict,
    model_state_numpy,
    paddle_to_hf,
    resolve_source,
    write_model_files,
)

logger = logging.getLogger(__name__)


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
    weights = paddle_to_hf(loadable, config, type(model)) if to == "hf" else loadable
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


def hf_twin(model, config, threads: int | None = None):
    """HF's PyTorch model (eval mode) with the Paddle model's weights, converted in memory the way
    `convert --to hf` writes them (bit-exact): `bench`'s reference and the LiteRT export's source."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UserInputError(f"the PyTorch twin of the model needs torch and transformers: {error}; "
                             "pip install 'mobilebert-paddle[torch]'") from None

    if threads:
        torch.set_num_threads(threads)
    architecture = config.architectures[0]
    values = {key: value for key, value in config.to_dict().items() if key != "trigram_ignores_padding"}
    hf_model = getattr(transformers, architecture)(transformers.MobileBertConfig(**values)).eval()
    state = {key: torch.from_numpy(value)
             for key, value in paddle_to_hf(model_state_numpy(model), config, type(model)).items()}
    result = hf_model.load_state_dict(state, strict=False)
    tied_or_buffers = ("position_ids", "decoder.weight", "decoder.bias")
    missing = [key for key in result.missing_keys if not key.endswith(tied_or_buffers)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"PyTorch twin: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    return hf_model


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
