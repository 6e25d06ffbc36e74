"""A model for inference from a path: a Paddle model dir (run eagerly, or exported on the fly
with `fuse`) or an export dir (Paddle Inference, ONNX Runtime, OpenVINO, LiteRT), behind one call
signature. `evaluate`, `predict` and `bench` load through here."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.errors import UserInputError
from ..model.config import MobileBertConfig
from ..model.modeldir import infer_architecture, load_tokenizer, resolve_source
from .evaluation import PredictFunction, eager_predictor
from .export import write_export
from .litert import require_converter
from .predictors import (
    BACKENDS,
    FORMAT_BACKENDS,
    EagerPredictor,
    Predictor,
    litert_interpreter,
    load_eager_model,
    load_exported,
    openvino_core,
    read_manifest,
)

logger = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    predictor: PredictFunction
    config: Any          # MobileBertConfig
    tokenizer: Any       # MobileBertTokenizer
    directory: Path
    architecture: str


def model_architecture(config, state: dict | None, source: Path) -> str:
    from ..model.network import HEADS  # Paddle: imported when a model is loaded, not with the CLI

    named = [name for name in (config.architectures or []) if name in HEADS]
    if named:
        return named[0]
    if state is None:
        raise UserInputError(f"{source}: config.json names no architecture; cannot tell which head the model has")
    return infer_architecture(state)


def load_inference_model(source: str, head: str, backend: str = "eager") -> InferenceModel:
    """A fine-tuned model dir (Paddle or HF, or a hub id) with the head `head`, ready to predict."""
    from ..model.loading import load_pretrained
    from ..model.network import HEADS

    directory = resolve_source(source)
    if not (directory / "config.json").is_file():
        raise UserInputError(f"{directory}: no config.json; not a MobileBERT model directory")
    state = None
    if backend == "eager":
        config, state = load_pretrained(directory)
    else:
        config = MobileBertConfig.from_pretrained(directory)
    architecture = model_architecture(config, state, directory)
    if architecture != head:
        raise UserInputError(f"{directory}: the model is a {architecture}; this needs a fine-tuned {head}")
    tokenizer = load_tokenizer(directory, config)
    if backend == "eager":
        config.architectures = [architecture]
        model = HEADS[architecture](config)
        model.load_converted_state_dict(state, source=str(directory))
        model.eval()
        predictor = eager_predictor(model)
    else:
        predictor = load_predictor(directory, backend)
    return InferenceModel(predictor, config, tokenizer, directory, architecture)


def load_predictor(model_dir: "str | os.PathLike", backend: str = "eager", *, fuse: bool = False,
                   threads: Optional[int] = None) -> Predictor:
    """A predictor for `model_dir` on `backend` ("eager", "paddle", "onnx", "openvino" or "litert").

    `model_dir` is an export dir (from `mobilebert export`) or a model dir with weights. An
    export dir runs on the backend of its format (an ONNX export on "onnx" or "openvino"); a
    model dir runs eagerly or is exported in memory first to the backend's own format (with
    `fuse` if asked), so evaluating a trained model on another backend needs no export step.
    """
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "openvino":
        openvino_core()                      # not installed: one line before any work
    if backend == "litert":
        litert_interpreter()
    directory = Path(model_dir)
    manifest = read_manifest(directory)
    if backend == "litert" and manifest is None:
        require_converter("--backend litert on a model directory (converted in memory first)")
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
