"""The corpus module: raw text -> token shards (`mobilebert pretrain-data`), their memory-mapped
reader (`PretrainingData`) and masked-LM masking drawn per batch (`mask_tokens`).

Input is BERT's pretraining format: one sentence a line, a blank line between documents, plain
or gzip (recognised by its magic bytes). Instances are built as google-research/bert's
create_pretraining_data.py builds them (MobileBERT's data are BERT's):
  * a document's target length is max_seq_length - 3, or with probability short_seq_prob a
    random length in [2, max_seq_length - 3] (drawn once per document, as BERT does);
  * sentences accumulate into a chunk until it reaches the target (or the document ends); a
    random number of its leading sentences is segment A;
  * with probability 0.5 (always, if the chunk is one sentence) segment B is taken from another
    document, from a random sentence on, up to the target; label 1 (BERT's is_random_next), and
    the chunk's unused sentences are put back for the next instance; else B is the rest of the
    chunk, label 0;
  * the pair is cut to max_seq_length - 3 tokens by removing tokens from the longer side, each
    from its front or back at random; the row is [CLS] A [SEP] B [SEP], token types 0 then 1.

Deviations from BERT, for memory bounded by settings, never by corpus size:
  * BERT holds every document and draws B's document from all of them. Here the text streams
    and B's document is drawn uniformly from a window of up to POOL_DOCUMENTS documents around
    the current one (500 read before it, 500 after; POOL_TOKENS = 4M tokens at most, 8 MB as
    uint16). Next-sentence prediction only needs B from *another* document: 1000 candidates
    make the same (A document, B document) pair rare (BERT's Wikipedia + BookCorpus has millions
    of documents, so there too a pair hardly ever repeats), and B's document stays a uniform
    draw from the window, not the neighbour. In a corpus sorted by topic the window's documents
    are closer in topic than random ones: shuffle the document order of such files first.
  * BERT shuffles documents and instances and writes static masks dupe_factor (10) times. Here
    rows stay in corpus order (the trainer draws row indices at random) and masks are drawn when
    batches are drawn (`mask_tokens`), so --dupe-factor defaults to 1.
  * A document of more than MAX_DOCUMENT_CHARS characters is cut into consecutive documents, and
    a line over MAX_LINE_BYTES is refused (a line is one sentence).

Masking (`mask_tokens`) follows BERT's create_masked_lm_predictions and is drawn when a batch is
drawn, from a counter-based generator keyed by (seed, step, row id, position): a row's mask does
not depend on the batch split, the process count or what came before, so resume is exact.

DATA_DIR (written atomically) holds, per shard k, fixed-width arrays readable with
np.load(mmap_mode="r"):
  shard-{k:05d}.input_ids.npy           (N, T) uint16 (uint32 if the vocabulary has > 65536 ids), [PAD]-padded
  shard-{k:05d}.lengths.npy             (N,) uint16  real tokens: [CLS] A [SEP] B [SEP]
  shard-{k:05d}.segment_a_lengths.npy   (N,) uint16  tokens of type 0: [CLS] A [SEP]
  shard-{k:05d}.next_sentence_labels.npy (N,) uint8  1 = B is from another document
plus meta.json (counts, settings, special ids, shards) and the tokenizer (vocab.txt,
tokenizer.json, tokenizer_config.json), so DATA_DIR alone says which vocabulary its ids are in.
The same seed and input give the same bytes.
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
