"""`mobilebert compare HF_SRC PADDLE_DIR`: the Paddle model against HF's PyTorch MobileBERT.

Both models read the same padded batch of real text (attention mask and token types set).
MobileBERT's activations reach ~1e7, so an absolute difference says little; per output
the report gives the relative error (ARCHITECTURE.md, Parity)

    rel = max|paddle - torch| / max|torch|

over the real (unpadded) tokens, and separately at [CLS] (position 0), for per-token
outputs; over the whole tensor for per-sequence outputs. With --layers the same is done
for the embedding output and every layer's hidden states. Exit code 1 when any error is
above the tolerance (or not finite).

`relative_error`, `paired_outputs` and `output_errors` are also what the parity tests use
(tests/reference.py delegates here), so the command and the tests measure the same thing.
"""


from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from ..core import flags
from ..core.errors import UserInputError
from ..core.numerics import relative_error
from ..model.config import MobileBertConfig
from ..model.modeldir import _first, match_state_dict, read_safetensors_metadata, resolve_source

logger = logging.getLogger(__name__)

PAIR_SEPARATOR = " ||| "  # --text "question ||| context" is a sentence pair (token types 0 / 1)
# Real English of different lengths: single sentences and question/context pairs.
DEFAULT_TEXTS = (
    "What does MobileBERT compress? ||| MobileBERT is a thin version of BERT-large with bottleneck "
    "structures, trained by transferring knowledge from a specially designed teacher model.",
    "The quick brown fox jumps over the lazy dog.",
    "When was the Eiffel Tower completed? ||| The Eiffel Tower in Paris was completed in 1889 and was "
    "the tallest structure in the world for 41 years.",
    "Hello, world!",
    "A model that runs on a phone must be small and fast, yet it should still answer questions well.",
)
# Per-sequence outputs have no token axis to mask; every other output is (B, T, ...).
PER_TOKEN_OUTPUTS = {"sequence_output", "prediction_logits", "start_logits", "end_logits"}
PER_TOKEN_HEADS = ("MobileBertForMaskedLM", "MobileBertForTokenClassification")


class OutputPair(NamedTuple):
    name: str
    paddle: np.ndarray
    torch: np.ndarray
    per_token: bool  # (B, T, ...): measured over real tokens and at [CLS] separately


def to_numpy(value) -> np.ndarray:
    """A torch or Paddle tensor (both have detach / cpu / numpy) as a numpy array."""
    return np.asarray(value.detach().cpu().numpy())


def paired_outputs(architecture: str, torch_output, paddle_output) -> list[OutputPair]:
    """Every output of a head, as (name, Paddle value, torch value, per-token?)."""
    def pair(name, paddle_value, torch_value, per_token=None):
        per_token = name in PER_TOKEN_OUTPUTS if per_token is None else per_token
        return OutputPair(name, to_numpy(paddle_value), to_numpy(torch_value), per_token)

    if architecture == "MobileBertModel":
        return [pair("sequence_output", paddle_output.sequence_output, torch_output.last_hidden_state),
                pair("pooled_output", paddle_output.pooled_output, torch_output.pooler_output)]
    if architecture == "MobileBertForPreTraining":
        return [pair("prediction_logits", paddle_output.prediction_logits, torch_output.prediction_logits),
                pair("seq_relationship_logits", paddle_output.seq_relationship_logits,
                     torch_output.seq_relationship_logits)]
    if architecture == "MobileBertForQuestionAnswering":
        return [pair("start_logits", paddle_output.start_logits, torch_output.start_logits),
                pair("end_logits", paddle_output.end_logits, torch_output.end_logits)]
    return [pair("logits", paddle_output, torch_output.logits, architecture in PER_TOKEN_HEADS)]


def hidden_state_pairs(torch_hidden_states: Sequence, paddle_hidden_states: Sequence) -> list[OutputPair]:
    """Embedding output and each layer's output, (B, T, H) each."""
    if len(torch_hidden_states) != len(paddle_hidden_states):
        raise ValueError(f"{len(torch_hidden_states)} torch vs {len(paddle_hidden_states)} Paddle hidden states")
    names = ["embeddings"] + [f"layer.{index}" for index in range(1, len(torch_hidden_states))]
    return [OutputPair(name, to_numpy(paddle_value), to_numpy(torch_value), True)
            for name, paddle_value, torch_value in zip(names, paddle_hidden_states, torch_hidden_states)]


def output_errors(pair: OutputPair, token_mask: np.ndarray) -> dict[str, Optional[float]]:
    """{"all": error over real tokens (whole tensor if per sequence), "cls": at position 0 or None}.

    token_mask: (B, T) bool, True on real tokens; it must match a per-token output's first two axes."""
    if pair.paddle.shape != pair.torch.shape:
        raise ValueError(f"{pair.name}: Paddle shape {pair.paddle.shape} vs torch shape {pair.torch.shape}")
    if not pair.per_token:
        return {"all": relative_error(pair.paddle, pair.torch), "cls": None}
    return {"all": relative_error(pair.paddle, pair.torch, token_mask),
            "cls": relative_error(pair.paddle[:, 0], pair.torch[:, 0])}


def within(error: Optional[float], tolerance: float) -> bool:
    """None (not measured) passes; NaN or inf never does."""
    return error is None or (math.isfinite(error) and error <= tolerance)


# ----------------------------------------------------------------------------------------
# Inputs: real text through the model dir's tokenizer, padded into one batch
# ----------------------------------------------------------------------------------------

def split_pair(text: str) -> tuple[str, Optional[str]]:
    first, separator, second = text.partition(PAIR_SEPARATOR.strip())
    return (first.strip(), second.strip()) if separator else (text, None)


def load_encoder(directories: Sequence[Path]) -> tuple[Callable, int]:
    """(encode(text, pair, max_length) -> (ids, token types), pad id) from the first directory
    with tokenizer files."""
    directory = next((path for path in directories
                      if (path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file()), None)
    if directory is None:
        raise UserInputError(f"{', '.join(map(str, directories))}: no tokenizer files (vocab.txt or tokenizer.json)")
    from ..model.tokenizer import MobileBertTokenizer

    tokenizer = MobileBertTokenizer.from_pretrained(directory)

    def encode(text: str, pair: Optional[str], max_length: int):
        encoded = tokenizer.encode(text, pair, truncation=True, max_length=max_length)
        return encoded["input_ids"], encoded["token_type_ids"]

    return encode, tokenizer.pad_token_id


def build_batch(encode: Callable, pad_id: int, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """input_ids, token_type_ids, attention_mask: (B, T) int64, right-padded to the longest text."""
    rows = [encode(*split_pair(text), max_length) for text in texts]
    width = max(len(ids) for ids, _ in rows)
    batch = {name: np.zeros((len(rows), width), dtype=np.int64)
             for name in ("input_ids", "token_type_ids", "attention_mask")}
    batch["input_ids"][:] = pad_id
    for row, (ids, token_types) in enumerate(rows):
        batch["input_ids"][row, :len(ids)] = ids
        batch["token_type_ids"][row, :len(ids)] = token_types
        batch["attention_mask"][row, :len(ids)] = 1
    return batch


# ----------------------------------------------------------------------------------------
# The two models
# ----------------------------------------------------------------------------------------

def import_reference():
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UserInputError(f"compare needs PyTorch and transformers ({error}); "
                             "pip install 'mobilebert-paddle[torch]'") from None
    return torch, transformers


@contextlib.contextmanager
def quiet_transformers(transformers):
    """No "Loading weights" bar and no warnings from transformers while it loads the reference:
    a missing weight is reported here as an error, and stderr keeps the comparison table only."""
    verbosity, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()


def check_hf_layout(directory: Path) -> None:
    """A Paddle model dir passed as HF_SRC would fail deep inside transformers: say so first."""
    weights = directory / "model.safetensors"
    if weights.is_file():

        if read_safetensors_metadata(weights).get("format") == "paddle":
            raise UserInputError(f"{weights}: a Paddle model dir; HF_SRC must be the HuggingFace checkpoint")


def load_reference_model(directory: Path):
    """(HF model of the architecture its config names, architecture name), every weight loaded."""
    from ..model.network import HEADS

    check_hf_layout(directory)
    _, transformers = import_reference()
    try:
        with quiet_transformers(transformers):
            hf_config = transformers.AutoConfig.from_pretrained(directory)
            architecture = next((name for name in hf_config.architectures or [] if name in HEADS), "MobileBertModel")
            model, info = getattr(transformers, architecture).from_pretrained(directory, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserInputError(f"{directory}: transformers cannot load it ({reason.strip()[:200]})") from None
    if info["missing_keys"]:
        raise UserInputError(f"{directory}: no weights for {', '.join(sorted(info['missing_keys'])[:4])} "
                             f"in the HF checkpoint; transformers would initialise them at random")
    return model.eval(), architecture


def load_paddle_model(source: str, architecture: str, checkpoint: tuple | None = None):
    """The Paddle head `architecture` from a model dir (or its already read `checkpoint`,
    (config, state) from load_pretrained); every one of its weights must be stored."""
    from ..model.loading import load_pretrained
    from ..model.network import HEADS

    config, state = checkpoint or load_pretrained(source)
    model = HEADS[architecture](config)
    loadable, missing = match_state_dict(model, state, str(source))
    if missing:
        raise UserInputError(f"{source}: no weights for {_first(missing)} ({architecture}); "
                             "a comparison with newly initialised weights means nothing")
    model.set_state_dict(loadable)
    model.eval()
    return model


def config_differences(paddle_config: MobileBertConfig, hf_config) -> dict[str, list]:
    """Model keys whose values differ between the two config.json files: {key: [paddle, hf]}."""
    skip = {"architectures", "id2label", "problem_type", "extra"}
    differences = {}
    for field in dataclasses.fields(paddle_config):
        if field.name in skip:
            continue
        ours, theirs = getattr(paddle_config, field.name), getattr(hf_config, field.name, None)
        if ours != theirs and not (field.name == "trigram_ignores_padding" and not ours):
            differences[field.name] = [ours, theirs]
    return differences


def base_model(model):
    from ..model.network import MobileBertModel

    return model if isinstance(model, MobileBertModel) else model.mobilebert


def run_both(hf_model, paddle_model, batch: dict[str, np.ndarray], layers: bool):
    """(torch output, Paddle head output, Paddle hidden states or None) on the same batch."""
    import paddle
    import torch

    with torch.no_grad():
        torch_output = hf_model(**{key: torch.from_numpy(value) for key, value in batch.items()},
                                output_hidden_states=layers)
    with paddle.no_grad():
        inputs = {key: paddle.to_tensor(value) for key, value in batch.items()}
        paddle_output = paddle_model(**inputs)
        hidden_states = None
        if layers:  # the base model alone, (B * C, T) for multiple choice as HF flattens it
            flat = {key: value.reshape([-1, value.shape[-1]]) for key, value in inputs.items()}
            hidden_states = base_model(paddle_model)(**flat, output_hidden_states=True).hidden_states
    return torch_output, paddle_output, hidden_states


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------

def measure(pairs: list[OutputPair], token_mask: np.ndarray) -> dict[str, dict]:
    return {pair.name: {"shape": list(pair.torch.shape), **output_errors(pair, token_mask)} for pair in pairs}


def print_table(title: str, rows: dict[str, dict], tolerance: float, stream=None) -> None:
    stream = stream or sys.stderr
    width = max([len(title)] + [len(name) for name in rows]) + 2
    stream.write(f"{title:<{width}}{'shape':<20}{'all tokens':>12}{'[CLS]':>12}  status\n")
    for name, row in rows.items():
        cells = [f"{row[key]:.3g}" if row[key] is not None else "-" for key in ("all", "cls")]
        status = "ok" if all(within(row[key], tolerance) for key in ("all", "cls")) else "ABOVE TOLERANCE"
        shape = "x".join(map(str, row["shape"]))
        stream.write(f"{name:<{width}}{shape:<20}{cells[0]:>12}{cells[1]:>12}  {status}\n")


def worst(rows: dict[str, dict]) -> float:
    errors = [row[key] for row in rows.values() for key in ("all", "cls") if row[key] is not None]
    finite = [error for error in errors if math.isfinite(error)]
    return float("inf") if len(finite) < len(errors) else max(finite, default=0.0)


def compare(hf_source: str, paddle_source: str, texts: Sequence[str] = DEFAULT_TEXTS, tolerance: float = 1e-5,
            layers: bool = False) -> dict[str, Any]:
    """Run both models on `texts` and measure every output (and layer); returns the summary."""
    from ..model.loading import load_pretrained

    hf_directory = resolve_source(hf_source)
    paddle_directory = resolve_source(paddle_source)
    paddle_checkpoint = load_pretrained(paddle_directory)   # read first: a bad dir fails before torch loads
    check_hf_layout(hf_directory)
    load_pretrained(hf_directory)     # the reference's files pass the same checks (a hostile .bin: one line)
    hf_model, architecture = load_reference_model(hf_directory)
    paddle_model = load_paddle_model(paddle_source, architecture, paddle_checkpoint)
    encode, pad_id = load_encoder([paddle_directory, hf_directory])
    batch = build_batch(encode, pad_id, texts, paddle_model.config.max_position_embeddings)
    if batch["input_ids"].max() >= paddle_model.config.vocab_size:
        raise UserInputError(f"{paddle_directory}: the tokenizer yields id {batch['input_ids'].max()}, beyond the "
                             f"model's vocab_size {paddle_model.config.vocab_size}")
    token_mask = batch["attention_mask"].astype(bool)                             # (B, T)
    if architecture == "MobileBertForMultipleChoice":  # the texts become the choices of one example
        batch = {key: value[None] for key, value in batch.items()}                # (1, C, T)
    torch_output, paddle_output, paddle_hidden = run_both(hf_model, paddle_model, batch, layers)
    outputs = measure(paired_outputs(architecture, torch_output, paddle_output), token_mask)
    layer_rows = measure(hidden_state_pairs(torch_output.hidden_states, paddle_hidden), token_mask) if layers else {}
    max_error = max(worst(outputs), worst(layer_rows))
    summary = {"hf_source": str(hf_source), "paddle_dir": str(paddle_source), "architecture": architecture,
               "texts": len(texts), "batch_shape": list(token_mask.shape), "real_tokens": int(token_mask.sum()),
               "tolerance": tolerance, "outputs": outputs}
    if layers:
        summary["layers"] = layer_rows
    differences = config_differences(paddle_model.config, hf_model.config)
    if differences:
        logger.warning("config.json values differ (paddle, hf): %s", differences)
        summary["config_differences"] = differences
    summary["max_relative_error"] = max_error if math.isfinite(max_error) else None
    summary["passed"] = within(max_error, tolerance)
    return summary


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_source", metavar="HF_SRC", help="HuggingFace checkpoint: model dir or hub id")
    parser.add_argument("paddle_dir", metavar="PADDLE_DIR", help="Paddle model dir (e.g. from `mobilebert convert`)")
    parser.add_argument("--text", action="append", metavar="T", default=argparse.SUPPRESS,
                        help=f"text to run, repeatable; 'question{PAIR_SEPARATOR}context' is a pair "
                             f"(default: {len(DEFAULT_TEXTS)} built-in English texts and question/context pairs)")
    parser.add_argument("--tolerance", type=flags.number(minimum=0), default=1e-5,
                        help="largest relative error max|paddle - torch| / max|torch| that passes")
    parser.add_argument("--layers", action="store_true", help="also compare the hidden states of every layer")


def run(args: argparse.Namespace) -> tuple[dict, int]:
    texts = getattr(args, "text", None) or list(DEFAULT_TEXTS)  # SUPPRESS: absent unless given
    if any(not text.strip() for text in texts):
        raise UserInputError("--text: empty text")
    summary = compare(args.hf_source, args.paddle_dir, texts, args.tolerance, args.layers)
    print_table("output", summary["outputs"], args.tolerance)
    if args.layers:
        print_table("hidden states", summary["layers"], args.tolerance)
    verdict = "PASS" if summary["passed"] else "FAIL"
    sys.stderr.write(f"{verdict}: largest relative error {summary['max_relative_error']} "
                     f"(tolerance {args.tolerance:g})\n")
    return summary, 0 if summary["passed"] else 1
