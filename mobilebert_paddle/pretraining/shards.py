"""Reading DATA_DIR (what `mobilebert pretrain-data` writes, corpus.py): meta.json and the token
shards, memory-mapped, so a corpus larger than memory costs nothing to open.

DATA_DIR holds, per shard k, fixed-width arrays readable with np.load(mmap_mode="r"):
  shard-{k:05d}.input_ids.npy           (N, T) uint16 (uint32 if the vocabulary has > 65536 ids), [PAD]-padded
  shard-{k:05d}.lengths.npy             (N,) uint16  real tokens: [CLS] A [SEP] B [SEP]
  shard-{k:05d}.segment_a_lengths.npy   (N,) uint16  tokens of type 0: [CLS] A [SEP]
  shard-{k:05d}.next_sentence_labels.npy (N,) uint8  1 = B is from another document
plus meta.json (counts, settings, special ids, shards) and the tokenizer (vocab.txt,
tokenizer.json, tokenizer_config.json), so DATA_DIR alone says which vocabulary its ids are in.
"""


from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserInputError
from ..core.files import read_json
from ..model.tokenizer import VOCAB_NAME
from .masking import default_max_predictions, mask_tokens

FORMAT_NAME = "mobilebert-pretraining-data"
FORMAT_VERSION = 1
META_NAME = "meta.json"
SHARD_ARRAYS = ("input_ids", "lengths", "segment_a_lengths", "next_sentence_labels")


# --------------------------------------------------------------------------------------------
# Reading DATA_DIR
# --------------------------------------------------------------------------------------------

class PretrainingData:
    """A pretrain-data directory, read memory-mapped: `rows(indices)` touches only those rows.

    Rows are in corpus order (consecutive rows come from the same document): draw indices at
    random. Attributes: num_rows, max_seq_length, vocab_size, special ids (pad_token_id, ...,
    special_ids: every special id, none of which masking may pick), tokenizer_dir (DATA_DIR
    itself), continuation ((vocab_size,) bool: the token is a "##" piece), meta (meta.json).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self.num_rows = int(self.meta["num_rows"])
        self.max_seq_length = int(self.meta["max_seq_length"])
        self.vocab_size = int(self.meta["vocab_size"])
        special = self.meta["special_ids"]
        self.pad_token_id, self.unk_token_id = special["pad"], special["unk"]
        self.cls_token_id, self.sep_token_id, self.mask_token_id = special["cls"], special["sep"], special["mask"]
        self.special_ids = np.array(sorted(set(special.values())), dtype=np.int64)
        self.tokenizer_dir = self.directory
        self.continuation = read_continuation(self.directory / VOCAB_NAME, self.vocab_size)
        self.shards = [open_shard(self.directory, shard, self.max_seq_length) for shard in self.meta["shards"]]
        self.shard_starts = np.cumsum([0] + [shard["rows"] for shard in self.meta["shards"]])   # (shards + 1,)

    def __len__(self) -> int:
        return self.num_rows

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` (b,), in that order: input_ids (b, T) int32, token_type_ids and
        attention_mask (b, T) int8, next_sentence_label (b,) int64. Ids are not masked."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise IndexError(f"row indices must be in [0, {self.num_rows}), got {indices.min()}..{indices.max()}")
        input_ids = np.empty((len(indices), self.max_seq_length), dtype=np.int32)
        lengths = np.empty(len(indices), dtype=np.int64)
        a_lengths = np.empty(len(indices), dtype=np.int64)
        labels = np.empty(len(indices), dtype=np.int64)
        shard_of_row = np.searchsorted(self.shard_starts, indices, side="right") - 1
        for shard_index in np.unique(shard_of_row):
            where = np.flatnonzero(shard_of_row == shard_index)
            local = indices[where] - self.shard_starts[shard_index]
            shard = self.shards[shard_index]
            input_ids[where] = shard["input_ids"][local]
            lengths[where], a_lengths[where] = shard["lengths"][local], shard["segment_a_lengths"][local]
            labels[where] = shard["next_sentence_labels"][local]
        positions = np.arange(self.max_seq_length)
        attention_mask = positions < lengths[:, None]                            # (b, T)
        token_type_ids = attention_mask & (positions >= a_lengths[:, None])     # B [SEP] are type 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids.astype(np.int8),
                "attention_mask": attention_mask.astype(np.int8), "next_sentence_label": labels}

    def masked_rows(self, indices: np.ndarray, seed: int, step: int, *, max_predictions: int | None = None,
                    masked_lm_prob: float = 0.15, whole_word: bool = False) -> dict[str, np.ndarray]:
        """rows(indices) with input_ids masked by mask_tokens (row ids = indices), plus
        masked_positions, masked_labels, masked_weights."""
        batch = self.rows(indices)
        masked = mask_tokens(batch["input_ids"], batch["attention_mask"], np.asarray(indices), seed, step,
                             vocab_size=self.vocab_size, mask_token_id=self.mask_token_id,
                             special_ids=self.special_ids,
                             max_predictions=max_predictions or default_max_predictions(self.max_seq_length, masked_lm_prob),
                             masked_lm_prob=masked_lm_prob, whole_word=whole_word, continuation=self.continuation)
        return {**batch, **masked}


def read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise UserInputError(f"{directory}: no such pretraining data directory")
    if not (directory / META_NAME).is_file():
        raise UserInputError(f"{directory}: not a pretraining data directory (no {META_NAME}; "
                             "make one with `mobilebert pretrain-data`)")
    meta = read_json(directory / META_NAME, "pretraining data meta.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserInputError(f"{directory / META_NAME}: not a pretraining data meta.json (format is not {FORMAT_NAME!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserInputError(f"{directory / META_NAME}: format_version {meta.get('format_version')!r} "
                             f"is not supported (this version reads {FORMAT_VERSION})")
    missing = [key for key in ("num_rows", "max_seq_length", "vocab_size", "special_ids", "shards") if key not in meta]
    if missing:
        raise UserInputError(f"{directory / META_NAME}: missing {', '.join(missing)}")
    return meta


def open_shard(directory: Path, shard: dict, max_seq_length: int) -> dict[str, np.ndarray]:
    """One shard's arrays as read-only memory maps, shapes checked against meta.json."""
    arrays = {}
    for array_name in SHARD_ARRAYS:
        path = directory / f"{shard['name']}.{array_name}.npy"
        try:
            arrays[array_name] = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise UserInputError(f"{path}: shard file missing") from None
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path}: unreadable shard file ({error})") from None
        expected = (shard["rows"], max_seq_length) if array_name == "input_ids" else (shard["rows"],)
        if arrays[array_name].shape != expected:
            raise UserInputError(f"{path}: shape {arrays[array_name].shape}, meta.json says {expected}")
    return arrays


def read_continuation(vocab_path: Path, vocab_size: int) -> np.ndarray:
    """(vocab_size,) bool: True for "##" word pieces (they continue the word before them)."""
    if not vocab_path.is_file():
        raise UserInputError(f"{vocab_path}: missing (pretraining data keeps its tokenizer's vocabulary)")
    tokens = vocab_path.read_text(encoding="utf-8").split("\n")[:vocab_size]
    continuation = np.zeros(vocab_size, dtype=bool)
    continuation[:len(tokens)] = [token.startswith("##") for token in tokens]
    return continuation
