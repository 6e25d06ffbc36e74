"""A model of the right head from a model dir: the head named by config.json's `architectures`
(or, failing that, the one the weights have), with its weights checked and converted.

network.py's `from_pretrained` loads into a class the caller names; this is for callers that
learn the head from the directory (convert, evaluate, export, bench, compare).
"""

from __future__ import annotations

import os
from typing import Tuple

from .config import MobileBertConfig
from .modeldir import (
    StateDict,
    checked_paddle_state,
    infer_architecture,
    read_model_dir,
)
from .network import HEADS


def architecture_of(config: MobileBertConfig, state: StateDict | None = None) -> str:
    """The head named by config.architectures, else the one the weights have."""
    named = next((name for name in (config.architectures or []) if name in HEADS), None)
    return named or infer_architecture(state or {})


def build_model(config: MobileBertConfig, state: StateDict | None = None):
    """The Paddle model named by config.architectures (inferred from the weights if absent)."""
    return HEADS[architecture_of(config, state)](config)


def load_pretrained(source: str | os.PathLike) -> Tuple[MobileBertConfig, StateDict]:
    """(config, state dict in Paddle layout) from any supported source, for the head the
    directory holds; checked: the config's sizes equal the weights' shapes."""
    directory, config, state, layout = read_model_dir(source)
    return checked_paddle_state(HEADS[architecture_of(config, state)], directory, config, state, layout)
