"""The one reader of a DATA_DIR (what `mobilebert pretrain-data` writes, corpus.py), used by
pretrain, distill and `evaluate pretraining`, and the check that a model and a DATA_DIR agree.
The shards are read memory-mapped, so a corpus larger than memory costs nothing to open.

DATA_DIR holds, per shard k, fixed-width arrays readable with np.load(mmap_mode="r"):
  shard-{k:05d}.input_ids.npy           (N, T) uint16 (uint32 if the vocabulary has > 65536 ids), [PAD]-padded
  shard-{k:05d}.lengths.npy             (N,) uint16  real tokens: [CLS] A [SEP] B [SEP]
  shard-{k:05d}.segment_a_lengths.npy   (N,) uint16  tokens of type 0: [CLS] A [SEP]
  shard-{k:05d}.next_sentence_labels.npy (N,) uint8  1 = B is from another document
plus meta.json (counts, settings, special ids, shards) and the tokenizer (vocab.txt,
tokenizer.json, tokenizer_config.json), so DATA_DIR alone says which vocabulary its ids are in.


A DATA_DIR is untrusted input, like a model dir: before any work, `PretrainingData` checks
  * meta.json: every field's type and bounds (num_rows, max_seq_length, vocab_size, dtype,
    special_ids, shards), and that the shards' rows add up to num_rows;
  * the vocabulary: vocab.txt is UTF-8, one token a line, exactly vocab_size tokens, and every
    special id is one of them;
  * each shard: its name stays inside the directory (no '..', no absolute path, no symlink out:
    modeldir.inside, as for weight indexes and export manifests), its four .npy files have the
    dtypes and shapes meta.json implies (no float ids cast silently), and, scanned in blocks of
    SCAN_ROWS rows (memory bounded whatever the corpus size), token ids < vocab_size, lengths in
    [MIN_ROW_TOKENS, max_seq_length], segment A within the row, next-sentence labels 0 or 1.
A bad DATA_DIR is one UserInputError naming the file and what is wrong.

`check_model_fits_data` is what a model must share with the data it trains or is scored on:
the data's ids inside the model's vocabulary (the same vocabulary, token for token, when the
model has one), rows no longer than its position table, masked predictions that fit a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import UserInputError
from ..core.files import SMALL_FILE_BYTES, read_json
from ..model.modeldir import inside
from ..model.tokenizer import VOCAB_NAME, read_vocab_file
from .masking import default_max_predictions, mask_tokens

FORMAT_NAME = "mobilebert-pretraining-data"
FORMAT_VERSION = 1
META_NAME = "meta.json"
SHARD_ARRAYS = ("input_ids", "lengths", "segment_a_lengths", "next_sentence_labels")
MIN_PRETRAINING_SEQ_LENGTH = 8    # [CLS] A [SEP] B [SEP] with room for a few tokens each
MAX_SEQ_LENGTH = 65535            # lengths are stored as uint16
SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")
ID_DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32}     # dtype name -> ids it can hold
ARRAY_DTYPES = {"lengths": np.uint16, "segment_a_lengths": np.uint16, "next_sentence_labels": np.uint8}
MIN_ROW_TOKENS = 5                # [CLS] A [SEP] B [SEP] with a token in each segment
MAX_SHARDS = 1 << 20
SCAN_ROWS = 1 << 16               # rows a block of the content scan reads (8 MB at 64 uint16 tokens)


class PretrainingData:
    """A DATA_DIR, validated (see the module docstring) and then read memory-mapped: `rows(indices)`
    touches only those rows.

    Rows are in corpus order (consecutive rows come from the same document): draw indices at
    random. Attributes: num_rows, max_seq_length, vocab_size, special ids (pad_token_id, ...,
    special_ids: every special id, none of which masking may pick), tokenizer_dir (DATA_DIR
    itself), vocabulary (token -> id, from vocab.txt), continuation ((vocab_size,) bool: the
    token is a "##" piece), meta (meta.json). `flag` names the flag it came from in messages.
    """

    def __init__(self, directory: str | Path, flag: str = "--data"):
        self.directory, self.flag = Path(directory), flag
        self.meta = read_meta(self.directory, flag)
        self.num_rows = self.meta["num_rows"]
        self.max_seq_length = self.meta["max_seq_length"]
        self.vocab_size = self.meta["vocab_size"]
        self.vocabulary = read_data_vocabulary(self.directory, self.vocab_size)
        special = self.meta["special_ids"]
        self.pad_token_id, self.unk_token_id = special["pad"], special["unk"]
        self.cls_token_id, self.sep_token_id, self.mask_token_id = special["cls"], special["sep"], special["mask"]
        self.special_ids = np.array(sorted(set(special.values())), dtype=np.int64)
        self.tokenizer_dir = self.directory
        self.continuation = np.array([token.startswith("##") for token in self.vocabulary], dtype=bool)
        self.shards = [open_shard(self.directory, shard, self.meta) for shard in self.meta["shards"]]
        for shard, arrays in zip(self.meta["shards"], self.shards):
            check_shard_contents(self.directory, shard["name"], arrays, self.max_seq_length, self.vocab_size)
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

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the rows (for --resume): meta.json's counts and settings, not its paths."""
        return {key: value for key, value in self.meta.items() if key != "sources"}


# --------------------------------------------------------------------------------------------
# meta.json and vocab.txt
# --------------------------------------------------------------------------------------------

def read_meta(directory: Path, flag: str = "--data") -> dict:
    if not directory.is_dir():
        raise UserInputError(f"{flag} {directory}: no such pretraining data directory")
    path = directory / META_NAME
    if not path.is_file():
        raise UserInputError(f"{flag} {directory}: not a pretraining data directory (no {META_NAME}; "
                             "make one with `mobilebert pretrain-data`)")
    meta = read_json(path, "pretraining data meta.json", max_bytes=SMALL_FILE_BYTES, allow_nan=False)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserInputError(f"{path}: not a pretraining data meta.json (format is not {FORMAT_NAME!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserInputError(f"{path}: format_version {meta.get('format_version')!r:.40} is not supported "
                             f"(this version reads {FORMAT_VERSION})")
    missing = [key for key in ("num_rows", "max_seq_length", "vocab_size", "special_ids", "shards") if key not in meta]
    if missing:
        raise UserInputError(f"{path}: missing {', '.join(missing)}")
    check_integer(meta, "num_rows", path, 1, 1 << 48)
    check_integer(meta, "max_seq_length", path, MIN_PRETRAINING_SEQ_LENGTH, MAX_SEQ_LENGTH)
    check_integer(meta, "vocab_size", path, len(SPECIAL_NAMES), 1 << 32)
    dtype = meta.setdefault("dtype", "uint16" if meta["vocab_size"] <= ID_DTYPES["uint16"] else "uint32")
    if dtype not in ID_DTYPES or meta["vocab_size"] > ID_DTYPES[dtype]:
        raise UserInputError(f"{path}: dtype {dtype!r:.40} cannot hold a vocabulary of {meta['vocab_size']} ids "
                             f"(expected {' or '.join(ID_DTYPES)})")
    check_special_ids(meta["special_ids"], meta["vocab_size"], path)
    check_shard_list(meta["shards"], meta["num_rows"], path)
    return meta


def check_integer(meta: dict, key: str, path: Path, minimum: int, maximum: int) -> None:
    value = meta[key]
    if type(value) is not int or not minimum <= value <= maximum:
        raise UserInputError(f"{path}: {key} must be an integer from {minimum} to {maximum}, got {value!r:.40}")


def check_special_ids(special: Any, vocab_size: int, path: Path) -> None:
    if not isinstance(special, dict) or set(special) != set(SPECIAL_NAMES):
        raise UserInputError(f"{path}: special_ids must be an object with exactly {', '.join(SPECIAL_NAMES)}, "
                             f"got {special!r:.80}")
    for name, value in special.items():
        if type(value) is not int or not 0 <= value < vocab_size:
            raise UserInputError(f"{path}: special_ids.{name} must be an id of the vocabulary (0 to "
                                 f"{vocab_size - 1}), got {value!r:.40}")


def check_shard_list(shards: Any, num_rows: int, path: Path) -> None:
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise UserInputError(f"{path}: shards must be a list of 1 to {MAX_SHARDS} shards, got {shards!r:.80}")
    for number, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str) or not shard["name"]:
            raise UserInputError(f"{path}: shards[{number}] must be an object with a name (a string), "
                                 f"got {shard!r:.80}")
        rows = shard.get("rows")
        if type(rows) is not int or not 1 <= rows <= num_rows:
            raise UserInputError(f"{path}: shards[{number}] ({shard['name']!r:.60}) rows must be an integer from "
                                 f"1 to num_rows ({num_rows}), got {rows!r:.40}")
    total = sum(shard["rows"] for shard in shards)
    if total != num_rows:
        raise UserInputError(f"{path}: num_rows {num_rows} is not the sum of the shards' rows ({total})")


def read_data_vocabulary(directory: Path, vocab_size: int) -> list[str]:
    """vocab.txt's tokens in id order; it must hold exactly vocab_size tokens (meta.json)."""
    path = directory / VOCAB_NAME
    if not path.is_file():
        raise UserInputError(f"{path}: missing (pretraining data keeps its tokenizer's vocabulary)")
    tokens = list(read_vocab_file(path))          # UTF-8, bounded, no repeated token: one line
    if len(tokens) != vocab_size:
        raise UserInputError(f"{path}: holds {len(tokens)} tokens but {directory / META_NAME} says vocab_size "
                             f"{vocab_size}")
    return tokens


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------

def open_shard(directory: Path, shard: dict, meta: dict) -> dict[str, np.ndarray]:
    """One shard's arrays as read-only memory maps, their files inside DATA_DIR and their dtypes
    and shapes as meta.json says."""
    where = f"{directory / META_NAME}: shard {shard['name']!r:.60}"
    arrays = {}
    for array_name in SHARD_ARRAYS:
        path = inside(directory, f"{shard['name']}.{array_name}.npy", where)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise UserInputError(f"{path}: shard file missing") from None
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path}: unreadable shard file ({error})") from None
        if not isinstance(array, np.ndarray):
            raise UserInputError(f"{path}: not a single array")
        expected_dtype = np.dtype(meta["dtype"] if array_name == "input_ids" else ARRAY_DTYPES[array_name])
        if array.dtype != expected_dtype:
            raise UserInputError(f"{path}: holds {array.dtype} values, expected {expected_dtype} "
                                 f"(token ids and lengths are unsigned integers)")
        expected = (shard["rows"], meta["max_seq_length"]) if array_name == "input_ids" else (shard["rows"],)
        if array.shape != expected:
            raise UserInputError(f"{path}: shape {array.shape}, but meta.json says {expected} (num_rows "
                                 f"{meta['num_rows']}); the shard or meta.json is damaged")
        arrays[array_name] = array
    return arrays


def check_shard_contents(directory: Path, name: str, arrays: dict, max_seq_length: int, vocab_size: int) -> None:
    """Every value in range, read SCAN_ROWS rows at a time (memory bounded by the block)."""
    rows = len(arrays["lengths"])
    for start in range(0, rows, SCAN_ROWS):
        block = {array_name: array[start:start + SCAN_ROWS] for array_name, array in arrays.items()}
        problem = block_problem(block, max_seq_length, vocab_size)
        if problem is not None:
            array_name, row, what = problem
            raise UserInputError(f"{directory / f'{name}.{array_name}.npy'}: row {start + row}: {what}")


def block_problem(block: dict, max_seq_length: int, vocab_size: int) -> tuple[str, int, str] | None:
    """(array, row in the block, what is wrong) of the first bad value of a block of rows, or None."""
    ids, labels = block["input_ids"], block["next_sentence_labels"]
    lengths, a_lengths = block["lengths"].astype(np.int64), block["segment_a_lengths"].astype(np.int64)
    problems = (
        ("input_ids", (ids >= vocab_size).any(axis=1),
         lambda row: f"token id {int(ids[row].max())} is not in the vocabulary of {vocab_size} ids (0 to "
                     f"{vocab_size - 1}); the shards and vocab.txt disagree"),
        ("lengths", (lengths < MIN_ROW_TOKENS) | (lengths > max_seq_length),
         lambda row: f"length {int(lengths[row])} is not from {MIN_ROW_TOKENS} to the rows' {max_seq_length} tokens"),
        ("segment_a_lengths", (a_lengths < 2) | (a_lengths > lengths - 2),
         lambda row: f"segment A of {int(a_lengths[row])} tokens does not fit a row of {int(lengths[row])} "
                     "([CLS] A [SEP] B [SEP])"),
        ("next_sentence_labels", labels > 1, lambda row: f"label {int(labels[row])} is not 0 or 1"),
    )
    for array_name, bad_rows, describe in problems:
        if bad_rows.any():
            row = int(np.flatnonzero(bad_rows)[0])
            return array_name, row, describe(row)
    return None


# --------------------------------------------------------------------------------------------
# A model and a DATA_DIR agree
# --------------------------------------------------------------------------------------------

def check_model_fits_data(config, vocabulary: Optional[dict[str, int]], data: PretrainingData, model_name: str,
                          max_predictions: Optional[int] = None) -> None:
    """The data's ids mean what the model's embeddings and MLM output mean, its rows fit the
    position table, and `max_predictions` masked tokens fit a row. `vocabulary` is the model's
    token -> id (None: the model takes the data's, e.g. a new model)."""
    where = f"{data.flag} {data.directory}"
    if data.vocab_size > config.vocab_size:
        raise UserInputError(f"{where}: its vocabulary has more ids than {model_name}'s vocab_size "
                             f"{config.vocab_size} ({data.vocab_size}): the data was made with another tokenizer")
    if vocabulary is not None:
        theirs = {token: index for index, token in enumerate(data.vocabulary)}
        if theirs != vocabulary:
            differing = next((token for token, index in theirs.items() if vocabulary.get(token) != index), None)
            detail = f"first difference: {differing!r}" if differing is not None else \
                f"{len(vocabulary)} tokens vs {len(theirs)}"
            raise UserInputError(f"{where}: its vocabulary differs from {model_name}'s ({detail}): the data was "
                                 f"made with another tokenizer")
    if data.max_seq_length > config.max_position_embeddings:
        raise UserInputError(f"{where}: rows of {data.max_seq_length} tokens are longer than {model_name}'s "
                             f"max_position_embeddings {config.max_position_embeddings}")
    if max_predictions is not None and max_predictions > data.max_seq_length - 3:
        raise UserInputError(f"--max-predictions-per-seq {max_predictions} is more than a row of {where} can "
                             f"hold (rows of {data.max_seq_length} tokens, 3 of them [CLS]/[SEP])")


def model_vocabulary(directory: Path) -> Optional[dict[str, int]]:
    """token -> id of a model dir's vocab.txt (None when it has none)."""
    path = Path(directory) / VOCAB_NAME
    return read_vocab_file(path) if path.is_file() else None
