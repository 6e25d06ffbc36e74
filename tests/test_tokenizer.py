"""MobileBertTokenizer against transformers' BERT tokenizers: same ids, offsets, windows, files.

The references are built in-process: the tokenizers-backed `BertTokenizerFast` and the pure
Python BERT tokenizer (`BertTokenizerLegacy` in transformers 5.x, `BertTokenizer` in 4.x).
A ~30-token vocabulary written to a temp file runs everywhere; the real BERT uncased
vocabulary and SQuAD dev texts come from ../shared/data when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

transformers = pytest.importorskip("transformers")
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jump", "##s",
              "##ed", "over", "lazy", "dog", "un", "##aff", "##able", "want", "##ing", ",", ".", "!", "a",
              "##b", "naive", "cafe", "中", "hello", "world", "Hello", "A"]

# Strings where BERT's text pipeline does something: accents, CJK, control and zero-width
# characters, emoji, a word longer than 100 characters ([UNK]), special tokens in the text.
TRICKY_STRINGS = [
    "Héllo Wörld, naïve café",
    "中文字符 and 日本語 かな 한국어",
    "tab\tnew\nline\r\x00null \x07bell \u200bzero\ufeffwidth \x7f del",
    "emoji 😀👍🏽 here",
    "a" * 300,
    "x" * 100,
    "y" * 101,
    "",
    "Ünïcödé Straße İstanbul ǅ ﬁne",
    "don't stop—the U.S.A.'s 3.14 $100 #hash @at",
    "[MASK] token and [CLS] inside [mask]",
    "cafe\u0301 e\u0301",
    "  leading and trailing  ",
    "\u00a0non-breaking\u3000ideographic space",
    "Ｆｕｌｌｗｉｄｔｈ ①②",
]
# Python's str.lower() applies the Greek final-sigma rule, Rust lower-cases char by char:
# the slow and fast HF tokenizers disagree here; we follow the fast one.
FAST_ONLY_STRINGS = ["ǆemal ΣΑΣ σας"]


def hf_fast(vocab_file: Path, do_lower_case: bool = True):
    """transformers' fast BERT tokenizer (5.x ignores `vocab_file=`: it wants `vocab=`)."""
    keyword = "vocab" if TRANSFORMERS_MAJOR >= 5 else "vocab_file"
    reference = transformers.BertTokenizerFast(**{keyword: str(vocab_file)}, do_lower_case=do_lower_case)
    assert len(reference) == len(Path(vocab_file).read_text(encoding="utf-8").splitlines())
    return reference


def hf_slow(vocab_file: Path, do_lower_case: bool = True):
    """transformers' pure-Python BERT tokenizer (in 5.x `BertTokenizer` is the fast one)."""
    if TRANSFORMERS_MAJOR >= 5:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowTokenizer
    else:
        SlowTokenizer = transformers.BertTokenizer
    return SlowTokenizer(vocab_file=str(vocab_file), do_lower_case=do_lower_case)


@pytest.fixture(scope="module")
def tiny_vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert_tokenizer(bert_vocab_file) -> MobileBertTokenizer:
    return MobileBertTokenizer(bert_vocab_file)


# ----- the temp vocabulary (offline, always runs) ---------------------------------------------------

TINY_TEXTS = ["The quick brown fox jumped over the lazy dog!", "unaffable wanting", "Hello, world.",
              "naïve café 中", "a ab abb", "unknownword jumps", "", "A [MASK] fox"]


@pytest.mark.parametrize("do_lower_case", [True, False])
@pytest.mark.parametrize("text", TINY_TEXTS)
def test_tiny_vocab_matches_transformers(tiny_vocab_file, text, do_lower_case):
    ours = MobileBertTokenizer(tiny_vocab_file, do_lower_case=do_lower_case)
    fast, slow = hf_fast(tiny_vocab_file, do_lower_case), hf_slow(tiny_vocab_file, do_lower_case)
    encoded = ours.encode(text, return_offsets_mapping=True)
    expected = fast(text, return_offsets_mapping=True)
    assert encoded["input_ids"] == expected["input_ids"] == slow(text)["input_ids"]
    assert [tuple(span) for span in encoded["offset_mapping"]] == [tuple(span) for span in expected["offset_mapping"]]
    assert ours.tokenize(text) == fast.tokenize(text)


def test_tiny_vocab_worked_example(tiny_vocab_file):
    """Hand-checked: lower-case, split punctuation, greedy longest-match word pieces."""
    tokenizer = MobileBertTokenizer(tiny_vocab_file)
    assert tokenizer.tokenize("UNaffable, wantING!") == ["un", "##aff", "##able", ",", "want", "##ing", "!"]
    assert tokenizer.encode("fox", "dog") == {"input_ids": [2, 8, 3, 14, 3], "token_type_ids": [0, 0, 0, 1, 1],
                                              "attention_mask": [1, 1, 1, 1, 1]}
    assert tokenizer.decode([2, 6, 8, 9, 10, 3]) == "quick fox jumps"
    assert tokenizer.decode([2, 6, 3], skip_special_tokens=False) == "[CLS] quick [SEP]"


def test_special_token_attributes(tiny_vocab_file):
    tokenizer = MobileBertTokenizer(tiny_vocab_file)
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert tokenizer.vocab_size == len(tokenizer) == len(TINY_VOCAB)
    assert tokenizer.do_lower_case is True
    assert isinstance(tokenizer.backend, tokenizers.Tokenizer)
    assert tokenizer.convert_tokens_to_ids(["fox", "nope"]) == [8, 1]
    assert tokenizer.convert_ids_to_tokens([8, 10]) == ["fox", "##s"]


WINDOW_OPTIONS = [
    dict(truncation="only_second", max_length=14, stride=2, return_overflowing_tokens=True,
         return_offsets_mapping=True, padding="max_length"),
    dict(truncation="only_second", max_length=12, stride=0, return_overflowing_tokens=True, padding="longest"),
    dict(truncation=True, max_length=7),
    dict(truncation="only_first", max_length=38, padding="max_length"),
    dict(padding=True, return_offsets_mapping=True),
]


@pytest.mark.parametrize("options", WINDOW_OPTIONS)
def test_batch_pairs_match_fast_tokenizer(tiny_vocab_file, options):
    """Truncation strategies, stride windows, offsets and padding equal BertTokenizerFast's."""
    ours, fast = MobileBertTokenizer(tiny_vocab_file), hf_fast(tiny_vocab_file)
    questions = ["quick fox?", "the lazy dog jumps over", "a"]
    contexts = ["The quick brown fox jumped over the lazy dog. " * 3, "hello world", "unaffable " * 9]
    encoded = ours.encode_batch(questions, contexts, **options)
    expected = fast(questions, contexts, **options)
    assert set(encoded) == set(expected.keys())
    for key in encoded:
        if key == "offset_mapping":
            as_tuples = [[[tuple(span) for span in row] for row in rows] for rows in (encoded[key], expected[key])]
            assert as_tuples[0] == as_tuples[1]
        else:
            assert encoded[key] == list(expected[key]), key


def test_numpy_output_and_backend_left_plain(tiny_vocab_file):
    tokenizer = MobileBertTokenizer(tiny_vocab_file)
    batch = tokenizer(["fox", "the quick brown fox"], padding="max_length", max_length=8, return_tensors="np")
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == np.int64
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
    assert tokenizer.backend.truncation is None and tokenizer.backend.padding is None


def test_stride_too_large_is_a_clear_error(tiny_vocab_file):
    tokenizer = MobileBertTokenizer(tiny_vocab_file)
    with pytest.raises(ValueError, match="stride"):
        tokenizer.encode("the quick fox", "the lazy dog jumps over " * 4, truncation="only_second",
                         max_length=8, stride=6, return_overflowing_tokens=True)


# ----- files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("do_lower_case", [True, False])
def test_save_pretrained_loads_in_transformers(tiny_vocab_file, tmp_path, do_lower_case):
    ours = MobileBertTokenizer(tiny_vocab_file, do_lower_case=do_lower_case)
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"vocab.txt", "tokenizer.json", "tokenizer_config.json"}
    assert (tmp_path / "vocab.txt").read_bytes() == tiny_vocab_file.read_bytes()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["do_lower_case"] is do_lower_case
    loaded = [transformers.AutoTokenizer.from_pretrained(tmp_path),
              transformers.BertTokenizerFast.from_pretrained(tmp_path),
              type(hf_slow(tiny_vocab_file)).from_pretrained(tmp_path)]
    for text, pair in [("The quick Fox!", "Hello, world."), ("naïve café 中", "A [MASK] dog")]:
        expected = ours.encode(text, pair)["input_ids"]
        assert expected == hf_fast(tiny_vocab_file, do_lower_case)(text, pair)["input_ids"]
        for reference in loaded:
            assert reference(text, pair)["input_ids"] == expected, type(reference).__name__


def test_from_pretrained_round_trip(tiny_vocab_file, tmp_path):
    MobileBertTokenizer(tiny_vocab_file, do_lower_case=False).save_pretrained(tmp_path)
    from_json = MobileBertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    from_vocab = MobileBertTokenizer.from_pretrained(tmp_path)     # vocab.txt + tokenizer_config.json
    for tokenizer in (from_json, from_vocab):
        assert tokenizer.do_lower_case is False
        assert tokenizer.encode("Hello hello")["input_ids"] == [2, 30, 28, 3]   # "Hello" keeps its capital


def test_reads_a_directory_written_by_transformers(tiny_vocab_file, tmp_path):
    hf_fast(tiny_vocab_file, do_lower_case=False).save_pretrained(tmp_path)
    tokenizer = MobileBertTokenizer.from_pretrained(tmp_path)
    assert tokenizer.do_lower_case is False
    assert tokenizer.encode("Hello hello fox")["input_ids"] == [2, 30, 28, 8, 3]


@pytest.mark.parametrize("case, message", [
    ("missing", "vocabulary file not found"),
    ("empty", "vocabulary file is empty"),
    ("no_cls", r"lacks the special token\(s\) \[CLS\]"),
])
def test_bad_vocabulary_is_user_input_error(tmp_path, case, message):
    path = tmp_path / "vocab.txt"
    if case == "empty":
        path.write_text("", encoding="utf-8")
    elif case == "no_cls":
        path.write_text("\n".join(t for t in TINY_VOCAB if t != "[CLS]") + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=message) as caught:
        MobileBertTokenizer(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_bad_tokenizer_directory_is_user_input_error(tmp_path):
    with pytest.raises(UserInputError, match="not a tokenizer directory"):
        MobileBertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserInputError, match="not a valid tokenizer.json"):
        MobileBertTokenizer.from_pretrained(tmp_path)


# ----- the real BERT uncased vocabulary ------------------------------------------------------------

def test_real_vocab_special_ids(bert_tokenizer):
    assert bert_tokenizer.vocab_size == 30522
    assert (bert_tokenizer.pad_token_id, bert_tokenizer.unk_token_id, bert_tokenizer.cls_token_id,
            bert_tokenizer.sep_token_id, bert_tokenizer.mask_token_id) == (0, 100, 101, 102, 103)


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_tricky_strings_match_transformers(bert_vocab_file, do_lower_case):
    ours = MobileBertTokenizer(bert_vocab_file, do_lower_case=do_lower_case)
    fast, slow = hf_fast(bert_vocab_file, do_lower_case), hf_slow(bert_vocab_file, do_lower_case)
    for text in TRICKY_STRINGS + FAST_ONLY_STRINGS:
        encoded = ours.encode(text, return_offsets_mapping=True)
        expected = fast(text, return_offsets_mapping=True)
        assert encoded["input_ids"] == expected["input_ids"], repr(text)
        assert [tuple(s) for s in encoded["offset_mapping"]] == [tuple(s) for s in expected["offset_mapping"]]
        if text not in FAST_ONLY_STRINGS:
            assert encoded["input_ids"] == slow(text)["input_ids"], repr(text)
    assert ours.encode("a" * 300)["input_ids"] == [101, 100, 102]      # > 100 characters: one [UNK]
    assert ours.encode("")["input_ids"] == [101, 102]


@pytest.mark.slow
def test_every_squad_dev_text_matches_transformers(bert_tokenizer, bert_vocab_file, shared_data):
    """All 10,570 questions and 2,067 contexts of SQuAD v1.1 dev: ids equal to fast and slow HF."""
    dataset = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    texts = []
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"])
            texts.extend(qa["question"] for qa in paragraph["qas"])
    assert len(texts) == 10570 + 2067
    ours = bert_tokenizer.encode_batch(texts)["input_ids"]
    assert ours == hf_fast(bert_vocab_file)(texts)["input_ids"]
    assert ours == hf_slow(bert_vocab_file)(texts)["input_ids"]
