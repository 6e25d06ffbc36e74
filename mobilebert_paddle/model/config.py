"""MobileBERT configuration: a dataclass whose fields are the keys of HF's config.json.

Defaults are those of google/mobilebert-uncased (24 layers, 512-wide inter-block
hidden states, 128-wide bottlenecks inside each block, 4 stacked FFNs, NoNorm, trigram
input embeddings). Keys this class does not know are kept in `extra` and written back
unchanged, so a config read from any HF checkpoint round-trips.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserInputError
from ..core.files import SMALL_FILE_BYTES, atomic_write_text, read_json

CONFIG_NAME = "config.json"
# What every head's forward takes, in this order (and every export's inputs, int64 (B, T)).
MODEL_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "tanh", "silu", "swish")
NORMALIZATIONS = ("no_norm", "layer_norm")
# Sizes no checkpoint can have: Paddle indexes a dimension with int32, and a stack of more
# layers or FFNs than this is no MobileBERT (the real model has 24 and 4). A config asking
# for more is refused before anything is built (it would hang, or allocate terabytes).
MAX_DIMENSION = 2**31 - 1
MAX_TENSOR_ELEMENTS = 2**32            # 16 GiB of float32 in one matrix
MAX_STACK = 4096                       # num_hidden_layers, num_feedforward_networks, heads
MAX_LABELS = 1 << 20
NON_NEGATIVE_INTS = ("pad_token_id",)  # an index, may be 0; every other int is a size (> 0)
POSITIVE_FLOATS = ("layer_norm_eps",)  # other floats may be 0 (initializer_range, dropouts)


@dataclass
class MobileBertConfig:
    vocab_size: int = 30522
    hidden_size: int = 512                  # width between blocks (the "inter-block" size)
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512            # FFN inner width
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    embedding_size: int = 128               # word-embedding width (before the trigram projection)
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128        # width inside each block when use_bottleneck
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = True
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    # Not an HF key (transformers ignores it). The trigram input lets the last real token see
    # the [PAD] embedding after it, so in HF (and the TF original) a sequence's outputs depend
    # on how much padding its batch has. True zeroes the embeddings of masked positions first:
    # outputs then equal the unpadded sequence's, whatever the padding. False = the reference.
    trigram_ignores_padding: bool = False
    # Head bookkeeping, as HF keeps it.
    architectures: list[str] | None = None
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str | None = None
    # Any other key of the file (transformers_version, torch_dtype, task params, ...).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        try:
            self.id2label = {int(key): str(value) for key, value in self.id2label.items()}
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"id2label must map integer label ids to names, got {self.id2label!r:.80}") from None
        self.validate()

    # -- derived values -------------------------------------------------------------
    @property
    def true_hidden_size(self) -> int:
        """Width of the attention / FFN stack inside a block (HF derives it the same way)."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, count: int) -> None:
        if count != self.num_labels:
            self.id2label = {index: f"LABEL_{index}" for index in range(count)}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in self.id2label.items()}

    @property
    def classifier_dropout_prob(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    def validate(self) -> None:
        problems = self.type_and_range_problems()
        if problems:   # the structural checks below assume well-typed sizes
            raise ValueError("; ".join(problems))
        problems = self.size_problems()
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.normalization_type not in NORMALIZATIONS:
            problems.append(f"normalization_type {self.normalization_type!r} is not one of {', '.join(NORMALIZATIONS)}")
        if self.num_attention_heads <= 0 or self.true_hidden_size % self.num_attention_heads:
            problems.append(f"true_hidden_size {self.true_hidden_size} is not divisible by "
                            f"num_attention_heads {self.num_attention_heads}")
        if self.num_feedforward_networks < 1:
            problems.append(f"num_feedforward_networks must be >= 1, got {self.num_feedforward_networks}")
        if self.hidden_size < self.embedding_size and self.tie_word_embeddings:
            problems.append(f"hidden_size {self.hidden_size} < embedding_size {self.embedding_size}: "
                            "the tied MLM decoder cannot be built")
        if problems:
            raise ValueError("; ".join(problems))

    def type_and_range_problems(self) -> list[str]:
        """Every field checked by its declared type: ints are ints (not bools) and positive
        (indices non-negative), floats finite, dropout probabilities in [0, 1], bools bools."""
        problems = []
        for spec in dataclasses.fields(self):
            value, kind = getattr(self, spec.name), spec.type
            if spec.name == "extra" or (value is None and "None" in kind):
                continue
            if kind == "int":
                if type(value) is not int:
                    problems.append(f"{spec.name} must be an integer, got {value!r}")
                elif value < 0 or (value == 0 and spec.name not in NON_NEGATIVE_INTS):
                    problems.append(f"{spec.name} must be {'>= 0' if spec.name in NON_NEGATIVE_INTS else '> 0'}, "
                                    f"got {value}")
                elif value > MAX_DIMENSION:
                    problems.append(f"{spec.name} {value} is beyond any checkpoint (at most {MAX_DIMENSION})")
            elif kind.startswith("float"):
                if type(value) not in (int, float) or not math.isfinite(value):
                    problems.append(f"{spec.name} must be a finite number, got {value!r}")
                elif is_probability(spec.name) and not 0 <= value <= 1:
                    problems.append(f"{spec.name} is a probability, must be in [0, 1], got {value}")
                elif value < 0 or (value == 0 and spec.name in POSITIVE_FLOATS):
                    problems.append(f"{spec.name} must be {'> 0' if spec.name in POSITIVE_FLOATS else '>= 0'}, "
                                    f"got {value}")
            elif kind == "bool" and type(value) is not bool:
                problems.append(f"{spec.name} must be true or false, got {value!r}")
            elif kind.startswith("str") and not isinstance(value, str):
                problems.append(f"{spec.name} must be a string, got {value!r}")
            elif kind.startswith("list[str]") and not (isinstance(value, list)
                                                      and all(isinstance(item, str) for item in value)):
                problems.append(f"{spec.name} must be a list of strings, got {value!r:.80}")
        if not 1 <= len(self.id2label) <= MAX_LABELS:
            problems.append(f"id2label / num_labels: {len(self.id2label)} labels, expected 1 to {MAX_LABELS}")
        return problems

    def size_problems(self) -> list[str]:
        """Sizes no checkpoint can have, refused before a model is built (names key and shape)."""
        problems = [f"{name} {getattr(self, name)} is beyond any checkpoint (at most {MAX_STACK})"
                    for name in ("num_hidden_layers", "num_feedforward_networks", "num_attention_heads")
                    if getattr(self, name) > MAX_STACK]
        matrices = {"vocab_size": (self.vocab_size, max(self.embedding_size, self.hidden_size)),
                    "intermediate_size": (self.intermediate_size, self.true_hidden_size),
                    "max_position_embeddings": (self.max_position_embeddings, self.hidden_size),
                    "type_vocab_size": (self.type_vocab_size, self.hidden_size),
                    "num_labels": (self.num_labels, self.hidden_size)}
        for name, (rows, columns) in matrices.items():
            if rows * columns > MAX_TENSOR_ELEMENTS:
                problems.append(f"{name} {rows} makes a ({rows}, {columns}) weight, beyond any checkpoint "
                                f"(at most {MAX_TENSOR_ELEMENTS} elements)")
        return problems

    # -- (de)serialisation ----------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "MobileBertConfig":
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            if key in known:
                kwargs[key] = value
            elif key in ("true_hidden_size", "num_labels", "label2id"):
                continue  # derived; recomputed from the fields above
            else:
                extra[key] = value
        if values.get("model_type", "mobilebert") != "mobilebert":
            raise UserInputError(f"{source}: model_type is {values['model_type']!r}, not 'mobilebert'")
        if "id2label" not in kwargs and "num_labels" in values:
            kwargs["id2label"] = labels_from_count(values["num_labels"], source)
        if not isinstance(kwargs.get("id2label", {}), dict):
            raise UserInputError(f"{source}: id2label must be an object of label id -> name, "
                                 f"got {kwargs['id2label']!r:.80}")
        for key, value in kwargs.items():
            expected = known[key].type
            if expected in ("int", "bool") and not isinstance(value, (int, bool)):
                raise UserInputError(f"{source}: {key} must be {expected}, got {value!r:.80}")
        try:
            return cls(**kwargs, extra=extra)
        except (ValueError, TypeError, AttributeError) as error:
            raise UserInputError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in self.extra.items()}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                values[f.name] = getattr(self, f.name)
        values["model_type"] = "mobilebert"
        values["true_hidden_size"] = self.true_hidden_size
        values["id2label"] = {str(index): label for index, label in sorted(self.id2label.items())}
        values["label2id"] = {label: index for index, label in sorted(self.id2label.items())}
        if values["architectures"] is None:
            del values["architectures"]
        return dict(sorted(values.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MobileBertConfig":
        values = read_json(path, "config.json", max_bytes=SMALL_FILE_BYTES, allow_nan=False)
        if not isinstance(values, dict):
            raise UserInputError(f"{path}: config.json must hold a JSON object")
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MobileBertConfig":
        return cls.from_json_file(Path(directory) / CONFIG_NAME)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(directory) / CONFIG_NAME, self.to_json_string())

    def replace(self, **changes: Any) -> "MobileBertConfig":
        return dataclasses.replace(self, **changes)

    def transformers_incompatibility(self) -> str | None:
        """Why HF transformers cannot build this layout, or None. IB-BERT's (use_bottleneck without
        bottleneck attention or a shared query/key bottleneck) has queries and keys reading the
        H-wide block input, as Google's layer defines it; HF's MobileBERT builds them I wide."""
        if (self.use_bottleneck and not self.use_bottleneck_attention and not self.key_query_shared_bottleneck
                and self.hidden_size != self.intra_bottleneck_size):
            return (f"transformers' MobileBERT cannot load this layout: its query/key layers read "
                    f"intra_bottleneck_size ({self.intra_bottleneck_size}) inputs, Google's IB-BERT layout reads "
                    f"hidden_size ({self.hidden_size}); mobilebert-paddle and Google's TF code run it")
        return None


# Google's three released configs (google-research mobilebert/config/*.json), complete: keys a
# JSON there leaves out take Google's BertConfig defaults (layer_norm, one FFN, a tanh pooler, no
# shared query/key bottleneck), which differ from this class's MobileBERT defaults.
_GOOGLE_COMMON = dict(vocab_size=30522, hidden_size=512, num_hidden_layers=24, num_attention_heads=4,
                      max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, embedding_size=128,
                      trigram_input=True, use_bottleneck=True, attention_probs_dropout_prob=0.1)
PRESETS: dict[str, dict[str, Any]] = {
    # uncased_L-24_H-128_B-512_A-4_F-4_OPT: MobileBERT (the released google/mobilebert-uncased)
    "mobilebert": dict(_GOOGLE_COMMON, hidden_act="relu", hidden_dropout_prob=0.0, intermediate_size=512,
                       intra_bottleneck_size=128, use_bottleneck_attention=False, key_query_shared_bottleneck=True,
                       num_feedforward_networks=4, normalization_type="no_norm", classifier_activation=False),
    # uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT: MobileBERT-TINY
    "mobilebert-tiny": dict(_GOOGLE_COMMON, hidden_act="relu", hidden_dropout_prob=0.0, intermediate_size=512,
                            intra_bottleneck_size=128, use_bottleneck_attention=True,
                            key_query_shared_bottleneck=False, num_feedforward_networks=2,
                            normalization_type="no_norm", classifier_activation=False),
    # uncased_L-24_H-1024_B-512_A-4: IB-BERT, the teacher. Google's "gelu" is the tanh form (gelu_new).
    "ib-bert": dict(_GOOGLE_COMMON, hidden_act="gelu_new", hidden_dropout_prob=0.1, intermediate_size=4096,
                    intra_bottleneck_size=1024, use_bottleneck_attention=False, key_query_shared_bottleneck=False,
                    num_feedforward_networks=1, normalization_type="layer_norm", classifier_activation=True),
}


def load_config(spec: str | os.PathLike) -> MobileBertConfig:
    """A preset name (PRESETS), a config.json file, or a model directory holding one."""
    if str(spec) in PRESETS:
        return MobileBertConfig(**PRESETS[str(spec)])
    path = Path(spec)
    if path.is_dir():
        return MobileBertConfig.from_pretrained(path)
    if path.is_file():
        return MobileBertConfig.from_json_file(path)
    raise UserInputError(f"{spec}: neither a preset ({', '.join(PRESETS)}) nor a config.json file or model directory")

def is_probability(name: str) -> bool:
    return name.endswith("_prob") or "dropout" in name


def labels_from_count(count: Any, source: str) -> dict[int, str]:
    """num_labels without id2label: LABEL_0 .. LABEL_{n-1}, once the count is sane."""
    if type(count) is not int or not 1 <= count <= MAX_LABELS:
        raise UserInputError(f"{source}: num_labels must be an integer from 1 to {MAX_LABELS}, got {count!r:.80}")
    return {index: f"LABEL_{index}" for index in range(count)}
