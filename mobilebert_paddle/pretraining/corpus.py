"""`mobilebert pretrain-data`: raw text -> the token shards of DATA_DIR (read by shards.py, masked
per batch by masking.py).

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

DATA_DIR's layout is described in shards.py; it is written atomically.
The same seed and input give the same bytes.
"""


from __future__ import annotations

import argparse
import codecs
import gzip
import itertools
import logging
import os
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import atomic_directory, atomic_write_json, check_creatable_dir, check_separate_dirs
from ..core.progress import progress_bar
from ..model.tokenizer import MobileBertTokenizer
from .shards import FORMAT_NAME, FORMAT_VERSION, MAX_SEQ_LENGTH, META_NAME, MIN_PRETRAINING_SEQ_LENGTH

logger = logging.getLogger(__name__)
POOL_DOCUMENTS = 1000             # documents B may come from: 500 before the current one, 500 after
POOL_TOKENS = 1 << 22             # ...and at most 4M tokens among them (8-16 MB)
MAX_DOCUMENT_CHARS = 1 << 22      # a longer document is cut into consecutive documents
MAX_LINE_BYTES = 1 << 18          # one sentence a line: a 256 KiB line is not a sentence
TOKENIZE_BATCH_CHARS = 1 << 16    # text per tokenizer call: Rust Encodings cost ~300 B a token
SHARD_BYTES = 1 << 28             # input_ids bytes per shard (256 MiB)
WRITE_ROWS = 1024                 # rows the writer gathers before appending them to the shard files
NPY_HEADER_BYTES = 128            # .npy header, reserved when a shard opens and written when it closes
SNIFF_BYTES = 1 << 16             # each file's start is checked before any work
GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------------------------
# Reading text: files -> documents (lists of sentence strings), streamed
# --------------------------------------------------------------------------------------------

def check_input_files(paths: Sequence[str]) -> list[Path]:
    """Every input exists, is a file and starts as UTF-8 text (read fully later, as it streams)."""
    checked = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise UserInputError(f"{path}: no such file")
        if not path.is_file():
            raise UserInputError(f"{path}: not a file")
        for _ in read_lines(path, max_bytes=SNIFF_BYTES):
            pass
        checked.append(path)
    return checked


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def open_binary(path: Path):
    """The file's bytes, decompressed if it starts with gzip's magic bytes."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[str]:
    """Lines of a UTF-8 text file (plain or gzip), stripped; a bad byte names file, line and offset."""
    offset = 0
    try:
        with open_binary(path) as handle:
            for line_number in itertools.count(1):
                if max_bytes is not None and offset >= max_bytes:
                    return
                raw = handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                yield decode_line(raw, path, line_number, offset)
                offset += len(raw)
    except (OSError, EOFError, zlib.error) as error:    # gzip.BadGzipFile is an OSError
        raise UserInputError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None


def decode_line(raw: bytes, path: Path, line_number: int, offset: int) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raise UserInputError(f"{path}: line {line_number} is longer than {MAX_LINE_BYTES} bytes "
                             "(expected one sentence a line)")
    if b"\x00" in raw:
        raise UserInputError(f"{path}: binary data, not text (NUL byte at line {line_number}, "
                             f"byte {offset + raw.index(0)})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: not UTF-8 text ({error.reason} at line {line_number}, "
                             f"byte {offset + error.start})") from None
    if line_number == 1:
        text = text.removeprefix(codecs.BOM_UTF8.decode("utf-8"))
    return text.strip()


def read_documents(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Documents as lists of sentences: blank lines and file ends separate them; empty ones vanish."""
    for path in paths:
        document: list[str] = []
        characters = 0
        for line in read_lines(path):
            if line:
                document.append(line)
                characters += len(line)
            if document and (not line or characters >= MAX_DOCUMENT_CHARS):
                yield document
                document, characters = [], 0
        if document:
            yield document


# --------------------------------------------------------------------------------------------
# Tokenizing: documents -> token arrays, through the Rust tokenizer's batch encoder
# --------------------------------------------------------------------------------------------

@dataclass
class Document:
    """A tokenized document: all its tokens in one array, sentence k is ids[starts[k]:starts[k+1]]."""

    ids: np.ndarray       # (tokens,) uint16/uint32
    starts: np.ndarray    # (sentences + 1,) int64, starts[0] == 0, starts[-1] == len(ids)
    bytes_read: int       # UTF-8 size of its text (progress)

    @property
    def num_sentences(self) -> int:
        return len(self.starts) - 1


def tokenized_documents(documents: Iterable[list[str]], tokenizer: MobileBertTokenizer,
                        dtype: np.dtype) -> Iterator[Document]:
    """Documents tokenized in batches of ~TOKENIZE_BATCH_CHARS characters, order kept.

    Sentences without tokens are dropped, then documents without sentences (as BERT does)."""
    batch: list[list[str]] = []
    characters = 0
    for document in documents:
        batch.append(document)
        characters += sum(map(len, document))
        if characters >= TOKENIZE_BATCH_CHARS:
            yield from encode_documents(batch, tokenizer, dtype)
            batch, characters = [], 0
    yield from encode_documents(batch, tokenizer, dtype)


def encode_documents(batch: list[list[str]], tokenizer: MobileBertTokenizer, dtype: np.dtype) -> Iterator[Document]:
    sentences = [sentence for document in batch for sentence in document]
    sentence_ids = encode_sentences(sentences, tokenizer, dtype)
    first = 0
    for document in batch:
        pieces = [ids for ids in sentence_ids[first:first + len(document)] if len(ids)]
        first += len(document)
        if pieces:
            starts = np.zeros(len(pieces) + 1, dtype=np.int64)
            np.cumsum([len(ids) for ids in pieces], out=starts[1:])
            yield Document(np.concatenate(pieces), starts, sum(len(s.encode("utf-8")) + 1 for s in document))


def encode_sentences(sentences: list[str], tokenizer: MobileBertTokenizer, dtype: np.dtype) -> list[np.ndarray]:
    """Token ids per sentence (no [CLS]/[SEP]); the Rust encoder runs on ~64K characters at a time
    (its Encoding objects are large), on all cores. `encode_batch_fast` skips the offsets."""
    result: list[np.ndarray] = []
    start = 0
    while start < len(sentences):
        end, characters = start, 0
        while end < len(sentences) and (end == start or characters + len(sentences[end]) <= TOKENIZE_BATCH_CHARS):
            characters += len(sentences[end])
            end += 1
        encodings = tokenizer.backend.encode_batch_fast(sentences[start:end], add_special_tokens=False)
        result.extend(np.array(encoding.ids, dtype=dtype) for encoding in encodings)
        start = end
    return result


# --------------------------------------------------------------------------------------------
# Instances: BERT's sentence-pair rules over a streamed window of documents
# --------------------------------------------------------------------------------------------

class DocumentWindow:
    """The documents around the current one, from which a random-next segment B is drawn."""

    def __init__(self, max_documents: int = POOL_DOCUMENTS, max_tokens: int = POOL_TOKENS):
        self.before: deque[Document] = deque()
        self.after: deque[Document] = deque()
        self.side_documents, self.side_tokens = max_documents // 2, max_tokens // 2
        self.before_tokens = self.after_tokens = 0

    def stream(self, documents: Iterable[Document]) -> Iterator[Document]:
        """Yield each document once the window after it is full (or the input has ended); while
        the caller works on it, the window holds the documents around it but not it."""
        for document in documents:
            self.after.append(document)
            self.after_tokens += len(document.ids)
            while len(self.after) > 1 and (len(self.after) > self.side_documents + 1
                                           or self.after_tokens > self.side_tokens):
                yield from self._advance()
        while self.after:
            yield from self._advance()

    def _advance(self) -> Iterator[Document]:
        current = self.after.popleft()
        self.after_tokens -= len(current.ids)
        yield current
        self.before.append(current)
        self.before_tokens += len(current.ids)
        while len(self.before) > self.side_documents or (len(self.before) > 1 and self.before_tokens > self.side_tokens):
            self.before_tokens -= len(self.before.popleft().ids)

    def random_other(self, current: Document, rng: random.Random) -> Document:
        """A document drawn uniformly from the window; the current one only if it is alone (as BERT)."""
        count = len(self.before) + len(self.after)
        if count == 0:
            return current
        index = rng.randrange(count)
        return self.before[index] if index < len(self.before) else self.after[index - len(self.before)]


@dataclass
class Instance:
    segment_a: np.ndarray     # (la,) token ids
    segment_b: np.ndarray     # (lb,)
    is_random_next: bool
    forced: bool = False      # the chunk was one sentence, so B had to come from another document


def document_instances(document: Document, window: DocumentWindow, rng: random.Random,
                       max_num_tokens: int, short_seq_prob: float) -> Iterator[Instance]:
    """BERT's create_instances_from_document over sentence index ranges of one document."""
    target_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_length = rng.randint(2, max_num_tokens)
    starts = document.starts
    chunk_start, index = 0, 0
    while index < document.num_sentences:
        chunk_end = index + 1                    # the chunk is sentences [chunk_start, chunk_end)
        if chunk_end == document.num_sentences or starts[chunk_end] - starts[chunk_start] >= target_length:
            sentences = chunk_end - chunk_start
            a_end = chunk_start + (rng.randint(1, sentences - 1) if sentences >= 2 else 1)
            segment_a = document.ids[starts[chunk_start]:starts[a_end]]
            if sentences == 1 or rng.random() < 0.5:
                other = window.random_other(document, rng)
                segment_b = random_segment(other, target_length - len(segment_a), rng)
                is_random_next, index = True, a_end - 1      # put the unused sentences back
            else:
                segment_b = document.ids[starts[a_end]:starts[chunk_end]]
                is_random_next = False
            yield Instance(*truncate_pair(segment_a, segment_b, max_num_tokens, rng), is_random_next,
                           forced=sentences == 1)
            chunk_start = index + 1
        index += 1


def random_segment(document: Document, target_length: int, rng: random.Random) -> np.ndarray:
    """Sentences of `document` from a random one on, until `target_length` tokens (at least one sentence)."""
    first = rng.randint(0, document.num_sentences - 1)
    starts = document.starts
    end = int(np.searchsorted(starts, starts[first] + target_length, side="left"))
    end = min(max(end, first + 1), document.num_sentences)
    return document.ids[starts[first]:starts[end]]


def truncation_counts(length_a: int, length_b: int, max_num_tokens: int) -> tuple[int, int]:
    """Tokens BERT's truncate_seq_pair removes from A and from B: one at a time from the longer
    side (B on a tie) until the pair fits. E.g. (7, 3, 4) -> (5, 1): A loses 4 to tie at 3-3,
    then B, A alternate."""
    excess = length_a + length_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    first = min(excess, abs(length_a - length_b))     # the longer side, down to the other's length
    from_a, from_b = (first, 0) if length_a > length_b else (0, first)
    rest = excess - first                            # then alternately, B first (a tie cuts B)
    return from_a + rest // 2, from_b + (rest + 1) // 2


def truncate_pair(segment_a: np.ndarray, segment_b: np.ndarray, max_num_tokens: int,
                  rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Cut the pair to max_num_tokens as BERT does; each removed token is the side's first or
    last with probability 1/2, so a side loses Binomial(removed, 1/2) tokens at its front."""
    from_a, from_b = truncation_counts(len(segment_a), len(segment_b), max_num_tokens)
    return _cut(segment_a, from_a, rng), _cut(segment_b, from_b, rng)


def _cut(segment: np.ndarray, count: int, rng: random.Random) -> np.ndarray:
    front = rng.getrandbits(count).bit_count() if count else 0
    return segment[front:len(segment) - (count - front)]


def corpus_instances(paths: Sequence[Path], tokenizer: MobileBertTokenizer, dtype: np.dtype,
                     settings: "CorpusSettings", statistics: dict, progress) -> Iterator[Instance]:
    """All instances of all passes over the corpus, in order (pass p reads the files again)."""
    for pass_index in range(settings.dupe_factor):
        rng = random.Random(f"pretrain-data:{settings.seed}:{pass_index}")
        window = DocumentWindow()
        documents = tokenized_documents(read_documents(paths), tokenizer, dtype)
        for document in window.stream(documents):
            if pass_index == 0:             # the corpus's own counts
                statistics["documents"] += 1
                statistics["sentences"] += document.num_sentences
                statistics["tokens"] += len(document.ids)
            progress.update(document.bytes_read)
            yield from document_instances(document, window, rng, settings.max_seq_length - 3,
                                          settings.short_seq_prob)


# --------------------------------------------------------------------------------------------
# Writing DATA_DIR
# --------------------------------------------------------------------------------------------

@dataclass
class CorpusSettings:
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    seed: int = 42
    shard_rows: int | None = None     # None: SHARD_BYTES of input_ids per shard


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """Rows are appended to the open shard files in blocks of WRITE_ROWS; a shard's .npy headers
    are written when it is closed (they were reserved, NPY_HEADER_BYTES each, at its opening)."""

    def __init__(self, directory: Path, max_seq_length: int, dtype: np.dtype, special_ids: dict, shard_rows: int):
        self.directory, self.special_ids, self.shard_rows = directory, special_ids, shard_rows
        self.block = {"input_ids": np.full((WRITE_ROWS, max_seq_length), special_ids["pad"], dtype=dtype),  # (n, T)
                      "lengths": np.zeros(WRITE_ROWS, dtype=np.uint16),
                      "segment_a_lengths": np.zeros(WRITE_ROWS, dtype=np.uint16),
                      "next_sentence_labels": np.zeros(WRITE_ROWS, dtype=np.uint8)}
        self.in_block = self.in_shard = self.tokens = 0
        self.random_next = self.forced_random_next = 0
        self.files: dict = {}
        self.shards: list[dict] = []

    def add(self, instance: Instance) -> None:
        row, la, lb = self.in_block, len(instance.segment_a), len(instance.segment_b)
        ids = self.block["input_ids"][row]
        ids[0], ids[la + 1], ids[la + lb + 2] = self.special_ids["cls"], self.special_ids["sep"], self.special_ids["sep"]
        ids[1:la + 1] = instance.segment_a
        ids[la + 2:la + lb + 2] = instance.segment_b
        self.block["lengths"][row], self.block["segment_a_lengths"][row] = la + lb + 3, la + 2
        self.block["next_sentence_labels"][row] = instance.is_random_next
        self.in_block += 1
        self.tokens += la + lb + 3
        self.random_next += instance.is_random_next
        self.forced_random_next += instance.forced
        if self.in_block == WRITE_ROWS or self.in_shard + self.in_block == self.shard_rows:
            self.write_block()

    def write_block(self) -> None:
        if not self.in_block:
            return
        if not self.files:
            self.open_shard()
        for name, array in self.block.items():
            self.files[name].write(array[:self.in_block].tobytes())
        self.block["input_ids"][:self.in_block] = self.special_ids["pad"]
        self.in_shard += self.in_block
        self.in_block = 0
        if self.in_shard == self.shard_rows:
            self.close_shard()

    def open_shard(self) -> None:
        name = f"shard-{len(self.shards):05d}"
        self.files = {array_name: open(self.directory / f"{name}.{array_name}.npy", "wb") for array_name in self.block}
        for handle in self.files.values():
            handle.write(b"\0" * NPY_HEADER_BYTES)

    def close_shard(self) -> None:
        for array_name, handle in self.files.items():
            handle.seek(0)
            handle.write(npy_header(self.block[array_name].dtype, (self.in_shard, *self.block[array_name].shape[1:])))
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.shards.append({"name": f"shard-{len(self.shards):05d}", "rows": self.in_shard})
        self.files, self.in_shard = {}, 0

    def finish(self) -> None:
        self.write_block()
        if self.files:
            self.close_shard()

    def abandon(self) -> None:
        """Close the open files of a run that failed (its staging directory is then deleted)."""
        for handle in self.files.values():
            handle.close()


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A .npy (format 1.0) header padded to exactly NPY_HEADER_BYTES, so it can be written after the
    data, once the row count is known (numpy allows any space padding before the final newline)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.ljust(NPY_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def special_token_ids(tokenizer: MobileBertTokenizer) -> dict[str, int]:
    return {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id, "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}


def write_pretraining_data(paths: Sequence[Path], tokenizer: MobileBertTokenizer, output: Path,
                           settings: CorpusSettings) -> dict:
    """Stream the corpus into DATA_DIR (atomically); returns meta.json's content."""
    dtype = ids_dtype(tokenizer.vocab_size)
    shard_rows = settings.shard_rows or max(1, SHARD_BYTES // (settings.max_seq_length * dtype.itemsize))
    special_ids = special_token_ids(tokenizer)
    statistics = {"documents": 0, "sentences": 0, "tokens": 0}
    # Progress counts text bytes; the size of a gzip file says little about its text's.
    total_bytes = None if any(map(is_gzip, paths)) else sum(path.stat().st_size for path in paths) * settings.dupe_factor
    with atomic_directory(output) as staging:
        writer = ShardWriter(staging, settings.max_seq_length, dtype, special_ids, shard_rows)
        try:
            with progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="pretrain-data", leave=False) as bar:
                for instance in corpus_instances(paths, tokenizer, dtype, settings, statistics, bar):
                    writer.add(instance)
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
        if statistics["documents"] == 1:
            logger.warning("the corpus is one document: random-next segments B come from that same document "
                           "(as BERT does); separate documents with blank lines")
        if not writer.shards:
            raise UserInputError(f"{', '.join(map(str, paths))}: no instance can be made "
                                 f"({statistics['documents']} documents with tokens): the corpus is empty")
        meta = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "num_rows": sum(shard["rows"] for shard in writer.shards), "num_tokens": writer.tokens,
            "num_documents": statistics["documents"], "num_sentences": statistics["sentences"],
            "corpus_tokens": statistics["tokens"],
            # Label 1 comes with probability 1/2, and always for a chunk of one sentence ("forced").
            "num_random_next": writer.random_next, "num_forced_random_next": writer.forced_random_next,
            "max_seq_length": settings.max_seq_length, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name, "special_ids": special_ids, "shards": writer.shards,
            "next_sentence_label": "1 = segment B comes from another document (BERT's is_random_next)",
            "settings": {**vars(settings), "shard_rows": shard_rows, "pool_documents": POOL_DOCUMENTS,
                         "pool_tokens": POOL_TOKENS},
            "sources": [str(path) for path in paths],
        }
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / META_NAME, meta)
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILES",
                        help="text files (plain or .gz): one sentence a line, a blank line between documents")
    parser.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="tokenizer directory (vocab.txt or tokenizer.json), e.g. a model directory")
    parser.add_argument("--output", required=True, metavar="DATA_DIR", help="directory to write the shards to")
    parser.add_argument("--max-seq-length", type=flags.integer(minimum=MIN_PRETRAINING_SEQ_LENGTH, maximum=MAX_SEQ_LENGTH),
                        default=128, help="tokens a row, [CLS] and [SEP]s included")
    parser.add_argument("--short-seq-prob", type=flags.number(minimum=0, maximum=1), default=0.1,
                        help="probability that a document's instances aim at a random shorter length")
    parser.add_argument("--dupe-factor", type=flags.integer(minimum=1), default=1,
                        help="passes over the corpus, each with new A/B splits (masks are drawn in training)")
    parser.add_argument("--shard-rows", type=flags.integer(minimum=1), default=None,
                        help=f"rows a shard (default: {SHARD_BYTES >> 20} MiB of input_ids)")
    parser.add_argument("--seed", type=flags.seed(), default=42, help="seed of the A/B splits and random-next draws")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pretraining DATA_DIR")


def check_output(output: Path, overwrite: bool) -> None:
    """DATA_DIR must be new or empty; --overwrite replaces only an earlier pretraining DATA_DIR."""
    check_creatable_dir(output)
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        raise UserInputError(f"{output}: exists and is not empty (pass --overwrite to replace it, or another --output)")
    if not (output / META_NAME).is_file():
        raise UserInputError(f"{output}: refusing to replace a directory that is not pretraining data (no {META_NAME})")


def open_tokenizer_dir(directory: str) -> MobileBertTokenizer:
    path = Path(directory)
    if not path.is_dir():
        raise UserInputError(f"{path}: --tokenizer must be a tokenizer directory (no such directory)")
    return MobileBertTokenizer.from_pretrained(path)


def run(args: argparse.Namespace) -> dict:
    output = Path(args.output)
    check_separate_dirs([*(("the input file", path) for path in args.files), ("--tokenizer", args.tokenizer)],
                        output, "--output", output_may_be_inside=True)
    check_output(output, args.overwrite)
    paths = check_input_files(args.files)
    tokenizer = open_tokenizer_dir(args.tokenizer)
    settings = CorpusSettings(args.max_seq_length, args.short_seq_prob, args.dupe_factor, args.seed, args.shard_rows)
    began = time.perf_counter()
    existed = output.exists()
    try:
        meta = write_pretraining_data(paths, tokenizer, output, settings)
    except OSError as error:      # a full disk: the staging dir is gone, DATA_DIR as it was
        kept = "the earlier data is kept" if existed else "nothing was written"
        raise UserInputError(f"{output}: cannot write the pretraining data ({error.strerror or error}); "
                             f"{kept}") from None
    seconds = time.perf_counter() - began
    return {"output": str(output), "rows": meta["num_rows"], "row_tokens": meta["num_tokens"],
            "documents": meta["num_documents"], "shards": len(meta["shards"]), "seconds": round(seconds, 2),
            "corpus_tokens": meta["corpus_tokens"],
            "corpus_tokens_per_second": round(meta["corpus_tokens"] * args.dupe_factor / max(seconds, 1e-9))}
