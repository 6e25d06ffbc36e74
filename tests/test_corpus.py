"""pretrain-data, PretrainingData and mask_tokens (mobilebert_paddle/corpus.py).

Real text: the SQuAD v1.1 dev contexts (Wikipedia paragraphs), one paragraph a document, split
into one sentence a line at ". ", "! ", "? "; real vocabulary: BERT uncased. Statistical checks
use bounds of about 4.5 standard deviations, so they fail when a rule is broken, not by chance.
"""

from __future__ import annotations

import gzip
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mobilebert_paddle.cli import parse_command_args
from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.pretraining.corpus import run, truncation_counts
from mobilebert_paddle.pretraining.masking import default_max_predictions, mask_tokens
from mobilebert_paddle.pretraining.shards import PretrainingData

SIGMAS = 4.5


def squad_documents(articles: list[dict]) -> list[str]:
    """Each SQuAD dev context as a document: one sentence a line."""
    contexts = [paragraph["context"] for article in articles for paragraph in article["paragraphs"]]
    return ["\n".join(s for s in re.split(r"(?<=[.!?])\s+", context.strip()) if s) for context in contexts]


@pytest.fixture(scope="module")
def corpus(squad_articles, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "squad.txt"
    path.write_text("\n\n".join(squad_documents(squad_articles)) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(bert_vocab_file, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "vocab.txt").write_bytes(bert_vocab_file.read_bytes())
    return directory


def pretrain_data(*argv) -> dict:
    """`mobilebert pretrain-data ARGV`, in-process (flags parsed as the CLI parses them)."""
    return run(parse_command_args("pretrain-data", [str(arg) for arg in argv]))


@pytest.fixture(scope="module")
def data_dir(corpus, tokenizer_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("data") / "squad"
    pretrain_data(corpus, "--tokenizer", tokenizer_dir, "--output", output, "--shard-rows", 1000)
    return output


@pytest.fixture(scope="module")
def data(data_dir) -> PretrainingData:
    return PretrainingData(data_dir)


def within(observed: float, expected: float, count: int) -> bool:
    """observed, a proportion of `count` draws, is within SIGMAS standard deviations of expected."""
    return abs(observed - expected) <= SIGMAS * np.sqrt(expected * (1 - expected) / count)


# ----- instances ---------------------------------------------------------------------------

def test_rows_are_cls_a_sep_b_sep_with_token_types(data):
    batch = data.rows(np.arange(data.num_rows))
    ids, types, attention = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    lengths = attention.sum(1)
    assert data.num_rows > 4000 and len(data.meta["shards"]) > 4       # several shards, read as one
    assert lengths.max() <= data.max_seq_length == 128
    assert (attention == (np.arange(128) < lengths[:, None])).all()    # real tokens first, then padding
    assert (ids[attention == 0] == data.pad_token_id).all()
    rows = np.arange(data.num_rows)
    a_lengths = (types == 0).sum(1) - (128 - lengths)                   # type-0 real tokens: [CLS] A [SEP]
    assert (ids[:, 0] == data.cls_token_id).all()
    assert (ids[rows, a_lengths - 1] == data.sep_token_id).all()
    assert (ids[rows, lengths - 1] == data.sep_token_id).all()
    assert ((ids == data.sep_token_id).sum(1) == 2).all() and ((ids == data.cls_token_id).sum(1) == 1).all()
    assert (types == ((np.arange(128) >= a_lengths[:, None]) & (attention == 1))).all()
    assert (a_lengths >= 3).all() and (lengths - a_lengths >= 2).all()  # A and B hold a token at least


def test_about_half_the_pairs_take_b_from_another_document(data):
    labels = data.rows(np.arange(data.num_rows))["next_sentence_label"]
    random_next, forced = int(labels.sum()), data.meta["num_forced_random_next"]
    assert random_next == data.meta["num_random_next"] and 0 < forced < random_next
    # A chunk of one sentence must take B elsewhere; every other chunk does so with probability 1/2.
    assert within((random_next - forced) / (data.num_rows - forced), 0.5, data.num_rows - forced)


def test_random_next_segments_come_from_another_document(data, corpus):
    """Label 0: A and B are spans of one document. Label 1: B is a span of another document
    (the window around each document holds ~1000 of the 2067)."""
    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    tokenizer = MobileBertTokenizer.from_pretrained(data.tokenizer_dir)
    documents = [np.concatenate(tokenizer.encode_batch(text.split("\n"), add_special_tokens=False,
                                                       return_tensors=None)["input_ids"]).astype(np.uint16).tobytes()
                 for text in corpus.read_text().strip().split("\n\n")]

    def holding(span: np.ndarray) -> set[int]:
        needle = span.astype(np.uint16).tobytes()
        return {index for index, document in enumerate(documents) if needle in document}

    batch = data.rows(np.arange(0, data.num_rows, 17))
    checked = {0: 0, 1: 0}
    for ids, types, length, label in zip(batch["input_ids"], batch["token_type_ids"],
                                         batch["attention_mask"].sum(1), batch["next_sentence_label"]):
        a_length = int((types[:length] == 0).sum())
        segment_a, segment_b = ids[1:a_length - 1], ids[a_length:length - 1]
        if min(len(segment_a), len(segment_b)) < 8:    # short spans occur in many documents
            continue
        in_a, in_b = holding(segment_a), holding(segment_b)
        assert in_a and in_b
        assert bool(in_a & in_b) == (label == 0), (label, in_a, in_b)
        checked[int(label)] += 1
    assert min(checked.values()) > 50, checked


def test_short_seq_prob_shows_in_the_length_histogram(corpus, tokenizer_dir, tmp_path):
    """A share short_seq_prob of documents aims at a random length in [2, 125] instead of 125, so
    fewer rows are full (128 tokens). Measured: 59% full at 0, 51% at 0.1, 12% at 1 (4.4-6.8k
    rows; one standard deviation is < 0.8%)."""
    full_share = {}
    for probability in (0.0, 0.1, 1.0):
        output = tmp_path / f"short-{probability}"
        pretrain_data(corpus, "--tokenizer", tokenizer_dir, "--output", output, "--short-seq-prob", probability)
        data = PretrainingData(output)
        full_share[probability] = float(np.mean(data.rows(np.arange(data.num_rows))["attention_mask"].sum(1) == 128))
    assert full_share[0.0] - 0.03 > full_share[0.1] > full_share[1.0] + 0.3, full_share


def test_truncation_counts_equal_berts_one_token_at_a_time_loop():
    for length_a in range(0, 12):
        for length_b in range(0, 12):
            for max_tokens in range(2, 14):
                a, b = length_a, length_b
                while a + b > max_tokens:       # truncate_seq_pair: the longer side, B on a tie
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert truncation_counts(length_a, length_b, max_tokens) == (length_a - a, length_b - b)


def test_gzip_input_gives_the_same_rows(corpus, tokenizer_dir, data_dir, tmp_path):
    compressed = tmp_path / "squad.txt.gz"     # recognised by its magic bytes, not its name
    compressed.write_bytes(gzip.compress(corpus.read_bytes()))
    renamed = tmp_path / "squad-gzip.txt"
    renamed.write_bytes(compressed.read_bytes())
    output = tmp_path / "from-gzip"
    pretrain_data(renamed, "--tokenizer", tokenizer_dir, "--output", output, "--shard-rows", 1000)
    shards = sorted(path.name for path in data_dir.glob("shard-*"))
    assert shards and all((output / name).read_bytes() == (data_dir / name).read_bytes() for name in shards)


def test_dupe_factor_passes_over_the_corpus_with_new_splits(corpus, tokenizer_dir, tmp_path):
    part = tmp_path / "part.txt"
    part.write_text("\n\n".join(corpus.read_text().split("\n\n")[:300]) + "\n")
    once, twice = (PretrainingData(tmp_path / name) for name in ("once", "twice")
                   if pretrain_data(part, "--tokenizer", tokenizer_dir, "--output", tmp_path / name,
                                    "--dupe-factor", 1 if name == "once" else 2))
    assert once.meta["num_documents"] == twice.meta["num_documents"] == 300
    assert abs(twice.num_rows - 2 * once.num_rows) < 0.1 * once.num_rows
    first_pass = twice.rows(np.arange(once.num_rows))["input_ids"]
    assert (first_pass == once.rows(np.arange(once.num_rows))["input_ids"]).all()
    shared = min(once.num_rows, twice.num_rows - once.num_rows)
    second_pass = twice.rows(np.arange(once.num_rows, once.num_rows + shared))["input_ids"]
    assert not (second_pass == first_pass[:shared]).all()


def test_data_dir_says_which_vocabulary_its_ids_are_in(data, data_dir, bert_vocab_file):
    assert (data_dir / "vocab.txt").read_bytes() == bert_vocab_file.read_bytes()
    assert (data_dir / "tokenizer_config.json").is_file() and data.tokenizer_dir == data_dir
    assert data.vocab_size == 30522 and data.meta["dtype"] == "uint16"
    assert np.load(data_dir / "shard-00000.input_ids.npy", mmap_mode="r").dtype == np.uint16
    assert data.continuation.sum() == 5828 and data.continuation[-1]          # the "##" lines of vocab.txt
    assert not data.continuation[data.special_ids].any()
    assert data.meta["settings"]["seed"] == 42 and data.meta["sources"]


# ----- determinism -------------------------------------------------------------------------

def test_same_seed_same_bytes_another_seed_differs(corpus, tokenizer_dir, data_dir, tmp_path):
    """Through the real CLI, as a user runs it; the module fixture made data_dir in-process."""
    outputs = {}
    for name, seed in (("again", 42), ("other", 7)):
        outputs[name] = tmp_path / name
        completed = subprocess.run([sys.executable, "-m", "mobilebert_paddle", "pretrain-data", str(corpus),
                                    "--tokenizer", str(tokenizer_dir), "--output", str(outputs[name]),
                                    "--shard-rows", "1000", "--seed", str(seed)],
                                   capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr
    names = sorted(path.name for path in data_dir.iterdir())
    assert sorted(path.name for path in outputs["again"].iterdir()) == names
    assert all((outputs["again"] / name).read_bytes() == (data_dir / name).read_bytes() for name in names)
    assert (outputs["other"] / "shard-00000.input_ids.npy").read_bytes() != (data_dir / "shard-00000.input_ids.npy").read_bytes()


# ----- bounded memory ----------------------------------------------------------------------

PEAK_RSS_PROBE = """
import runpy, sys
sys.argv = ["mobilebert", *sys.argv[2:]]
try:
    runpy.run_module("mobilebert_paddle", run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(PEAK_FILE, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""


def peak_rss_mb(argv: list[str], tmp_path: Path) -> float:
    """Run `python -m mobilebert_paddle ARGV`; the peak resident memory of that program alone.

    Read from VmHWM in /proc at its exit, not from getrusage: Linux carries ru_maxrss across
    fork + exec, so a child of a large pytest process (Paddle and torch loaded by earlier tests)
    would report the parent's size."""
    peak_file = tmp_path / "peak-kib.txt"
    probe = PEAK_RSS_PROBE.replace("PEAK_FILE", repr(str(peak_file)))
    result = subprocess.run([sys.executable, "-c", probe, "--", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(peak_file.read_text()) / 1024


@pytest.mark.slow
def test_memory_does_not_grow_with_the_corpus(squad_articles, tokenizer_dir, tmp_path):
    """A 16 MB corpus (~3.3M tokens) costs no more memory than a 1.6 MB one, within a 4 MB cap
    that is a quarter of the corpus: holding its token ids alone would take 6.6 MB, its text
    16 MB. (The process itself, Python + numpy + the Rust tokenizer, is ~50-60 MB whatever the
    corpus; at ~0.1-0.3M tokens/s on this shared machine a corpus several times that would take
    minutes, so the cap is on memory above that floor, which is what a corpus could make grow.)"""
    documents = squad_documents(squad_articles)
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("\n\n".join(documents) + "\n")
    rng = random.Random(0)
    with open(large, "w") as handle:
        while handle.tell() < 16e6:
            rng.shuffle(documents)
            handle.write("\n\n".join(documents) + "\n\n")
    cap_mb = 4.0
    assert large.stat().st_size / 1e6 >= 4 * cap_mb
    peaks = {name: peak_rss_mb(["pretrain-data", str(path), "--tokenizer", str(tokenizer_dir),
                                "--output", str(tmp_path / f"data-{name}")], tmp_path)
             for name, path in (("small", small), ("large", large))}
    assert peaks["large"] - peaks["small"] < cap_mb, peaks
    assert peaks["large"] < 150, peaks
    assert PretrainingData(tmp_path / "data-large").num_rows > 10 * PretrainingData(tmp_path / "data-small").num_rows


# ----- masking -----------------------------------------------------------------------------

def masked(data: PretrainingData, rows: np.ndarray, seed: int = 0, step: int = 0, **options) -> dict:
    return data.masked_rows(rows, seed, step, **options)


def test_masking_follows_berts_rules(data):
    rows = np.arange(data.num_rows)
    batch = masked(data, rows)
    original, lengths = data.rows(rows)["input_ids"], batch["attention_mask"].sum(1)
    weights, positions, labels = batch["masked_weights"], batch["masked_positions"], batch["masked_labels"]
    predictions = default_max_predictions(128)
    assert predictions == 19 and weights.shape == (len(rows), 19)
    # BERT's count rule, exactly (SQuAD has no row without a maskable token).
    assert (weights.sum(1) == np.minimum(predictions, np.maximum(1, np.rint(lengths * 0.15)))).all()
    assert abs(weights.sum() / lengths.sum() - 0.15) < 0.01
    # The gather format: chosen positions in order, then padding slots (0, 0, 0).
    real = weights == 1
    assert (np.diff(np.where(real, positions, 10**6 + np.arange(19)), axis=1) > 0).all()
    assert (positions[~real] == 0).all() and (labels[~real] == 0).all()
    assert (labels[real] == original[np.nonzero(real)[0], positions[real]]).all()
    # Never a special token, never padding; nothing changes outside the chosen positions.
    chosen = np.zeros_like(original, dtype=bool)
    chosen[np.nonzero(real)[0], positions[real]] = True
    assert not np.isin(original[chosen], data.special_ids).any()
    assert (batch["attention_mask"][chosen] == 1).all()
    assert (batch["input_ids"][~chosen] == original[~chosen]).all()
    # 80% [MASK], 10% a random token, 10% unchanged.
    new, old, count = batch["input_ids"][chosen], original[chosen], int(chosen.sum())
    assert within(np.mean(new == data.mask_token_id), 0.8, count)
    assert within(np.mean(new == old), 0.1 + 0.1 / data.vocab_size, count)
    assert within(np.mean((new != old) & (new != data.mask_token_id)), 0.1, count)


def test_mask_depends_on_seed_step_and_row_only(data):
    rows = np.arange(200, 264)
    whole = masked(data, rows, seed=3, step=11)
    reordered = np.concatenate([rows[40:], rows[:40]])
    pieces = [masked(data, part, seed=3, step=11) for part in (reordered[:7], reordered[7:50], reordered[50:])]
    joined = {key: np.concatenate([piece[key] for piece in pieces]) for key in whole}
    order = np.argsort(reordered)
    for key in whole:
        assert (joined[key][order] == whole[key]).all(), key
    assert not (masked(data, rows, seed=3, step=12)["masked_positions"] == whole["masked_positions"]).all()
    assert not (masked(data, rows, seed=4, step=11)["masked_positions"] == whole["masked_positions"]).all()


def test_whole_word_masking_masks_pieces_with_their_word(data):
    rows = np.arange(0, data.num_rows, 3)
    batch = masked(data, rows, whole_word=True)
    ids = data.rows(rows)["input_ids"]
    weights, positions = batch["masked_weights"], batch["masked_positions"]
    chosen = np.zeros_like(ids, dtype=bool)
    chosen[np.nonzero(weights == 1)[0], positions[weights == 1]] = True
    # A "##" piece after a word token (not after [CLS]/[SEP], where a cut segment may begin with
    # one) is chosen exactly when the token before it, its word, is.
    special = np.isin(ids, data.special_ids)
    piece = data.continuation[ids] & ~special
    piece[:, 1:] &= ~special[:, :-1]
    piece[:, 0] = False
    assert (chosen[:, 1:][piece[:, 1:]] == chosen[:, :-1][piece[:, 1:]]).all()
    assert chosen[:, 1:][piece[:, 1:]].sum() > 100                      # many words of several pieces
    lengths = batch["attention_mask"].sum(1)
    assert (weights.sum(1) <= np.minimum(19, np.maximum(1, np.rint(lengths * 0.15)))).all()
    assert abs(weights.sum() / lengths.sum() - 0.15) < 0.01
    # Without whole-word masking, pieces are chosen on their own.
    single = masked(data, rows)
    alone = np.zeros_like(ids, dtype=bool)
    alone[np.nonzero(single["masked_weights"] == 1)[0], single["masked_positions"][single["masked_weights"] == 1]] = True
    assert (alone[:, 1:][piece[:, 1:]] != alone[:, :-1][piece[:, 1:]]).any()


def test_whole_word_masking_skips_a_word_that_does_not_fit():
    """BERT: a word that would pass the row's count is skipped and later words still count."""
    continuation = np.zeros(20, dtype=bool)
    continuation[10:] = True                                    # ids 10.. are "##" pieces
    ids = np.array([[2, 5, 10, 11, 12, 13, 6, 7, 8, 9, 3]])     # [CLS] w(5 pieces) w w w w [SEP]
    attention = np.ones_like(ids)
    for row in range(50):
        result = mask_tokens(ids, attention, np.array([row]), seed=0, step=0, vocab_size=20, mask_token_id=4,
                             special_ids=[0, 1, 2, 3, 4], max_predictions=3, masked_lm_prob=0.25,
                             whole_word=True, continuation=continuation)
        chosen = set(result["masked_positions"][0][result["masked_weights"][0] == 1].tolist())
        assert len(chosen) == 3 and not chosen & {1, 2, 3, 4, 5}   # round(11 * 0.25) = 3; the long word never fits


# ----- bad input ---------------------------------------------------------------------------

def test_a_directory_that_is_not_pretraining_data_is_refused(tmp_path, data_dir):
    with pytest.raises(UserInputError, match="not a pretraining data directory"):
        PretrainingData(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in data_dir.iterdir():
        if path.name != "shard-00001.lengths.npy":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(UserInputError, match="shard-00001.lengths.npy: shard file missing"):
        PretrainingData(broken)


BAD_INPUTS = [
    # (id, argv after "pretrain-data", fragment of the one stderr line)
    ("empty-corpus", "{blank} --tokenizer {tokenizer} --output {out}", "no instance can be made"),
    ("binary-file", "{corpus} {binary} --tokenizer {tokenizer} --output {out}", "binary.bin: not UTF-8 text"),
    ("nul-bytes", "{nul} --tokenizer {tokenizer} --output {out}", "NUL byte at line 2"),
    ("corrupt-gzip", "{bad_gzip} --tokenizer {tokenizer} --output {out}", "bad.gz: cannot read"),
    ("missing-file", "{missing} --tokenizer {tokenizer} --output {out}", "missing.txt: no such file"),
    ("tokenizer-without-vocabulary", "{corpus} --tokenizer {empty_dir} --output {out}", "not a tokenizer directory"),
    ("tokenizer-missing", "{corpus} --tokenizer {missing} --output {out}", "no such directory"),
    ("max-seq-length-too-small", "{corpus} --tokenizer {tokenizer} --output {out} --max-seq-length 5",
     "--max-seq-length: must be an integer >= 8"),
    ("short-seq-prob-above-1", "{corpus} --tokenizer {tokenizer} --output {out} --short-seq-prob 1.5",
     "--short-seq-prob: must be a finite number >= 0 and <= 1"),
    ("output-not-empty", "{corpus} --tokenizer {tokenizer} --output {full_dir}", "exists and is not empty"),
    ("overwrite-other-directory", "{corpus} --tokenizer {tokenizer} --output {full_dir} --overwrite",
     "is not pretraining data"),
]


@pytest.fixture(scope="module")
def bad_input_outcomes(corpus, tokenizer_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    paths = {"corpus": corpus, "tokenizer": tokenizer_dir, "blank": root / "blank.txt", "binary": root / "binary.bin",
             "nul": root / "nul.txt", "bad_gzip": root / "bad.gz", "missing": root / "missing.txt",
             "empty_dir": root / "empty", "full_dir": root / "full"}
    paths["blank"].write_text("\n  \n\n\t\n")
    paths["binary"].write_bytes(b"a sentence.\n" + bytes(range(128, 256)) * 4)
    paths["nul"].write_bytes(b"a sentence.\nand \x00 another\n")
    paths["bad_gzip"].write_bytes(gzip.compress(b"one sentence.\n" * 1000)[:60])
    paths["empty_dir"].mkdir()
    paths["full_dir"].mkdir()
    (paths["full_dir"] / "keep.txt").write_text("the user's file\n")

    def run_case(case):
        name, template, _ = case
        output = root / f"out-{name}"
        argv = template.format(out=output, **paths).split(" ")
        completed = subprocess.run([sys.executable, "-m", "mobilebert_paddle", "pretrain-data", *argv],
                                   capture_output=True, text=True, timeout=120)
        return name, (completed, output)

    with ThreadPoolExecutor(4) as pool:
        outcomes = dict(pool.map(run_case, BAD_INPUTS))
    outcomes["full_dir"] = paths["full_dir"]
    return outcomes


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, bad_input_outcomes):
    name, _, fragment = case
    completed, output = bad_input_outcomes[name]
    lines = completed.stderr.splitlines()
    assert "Traceback" not in completed.stderr, completed.stderr
    assert len(lines) == 1 and lines[0].startswith("mobilebert pretrain-data: error: "), completed.stderr
    assert fragment in lines[0], lines[0]
    assert completed.returncode == 2 and completed.stdout == ""
    assert not output.exists()
    full_dir = bad_input_outcomes["full_dir"]
    assert sorted(path.name for path in full_dir.iterdir()) == ["keep.txt"]
    assert not any(path.name.startswith(".") for path in full_dir.parent.iterdir())   # no staging left
