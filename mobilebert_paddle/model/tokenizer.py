"""MobileBERT's WordPiece tokenizer, built on HuggingFace `tokenizers` (Rust, with offsets).

google/mobilebert-uncased uses the BERT uncased vocabulary and BERT's text pipeline:
  BertNormalizer (clean control characters, space out CJK characters, strip accents,
  lower-case) -> BertPreTokenizer (split on whitespace and punctuation) -> WordPiece
  (greedy longest match, `##` continuation, words over 100 characters become [UNK])
  -> "[CLS] A [SEP]" / "[CLS] A [SEP] B [SEP]" with token types 0 / 1.
That is exactly the pipeline of transformers' BertTokenizerFast, so ids, offsets and
overflowing windows equal HF's (tests/test_tokenizer.py checks it on all of SQuAD dev).

On disk a tokenizer is a directory with `vocab.txt`, `tokenizer.json` and
`tokenizer_config.json`, as transformers writes them; AutoTokenizer loads what we save.
The Rust tokenizer is exposed as `.backend`; it is kept without truncation or padding
(every method here sets what it needs for the call and restores it afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import (
    AddedToken,
    Encoding,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import WordPiece

from ..core.errors import UserInputError
from ..core.files import (
    SMALL_FILE_BYTES,
    atomic_write_json,
    atomic_write_text,
    read_bounded_text,
    read_json,
)

VOCAB_NAME = "vocab.txt"
TOKENIZER_JSON_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKEN_NAMES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                          "sep_token": "[SEP]", "mask_token": "[MASK]"}
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
MAX_INPUT_CHARS_PER_WORD = 100          # longer words become [UNK], as in BERT
MAX_VOCAB_BYTES = 64 << 20              # the largest WordPiece vocabularies are a few MB


def read_vocab_file(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt -> {token: line number}, read the way BERT reads it (strip only the newline)."""
    path = Path(path)
    lines = read_bounded_text(path, "vocabulary file", MAX_VOCAB_BYTES).split("\n")
    if lines and lines[-1] == "":
        lines.pop()                     # the final newline does not start another token
    if not lines:
        raise UserInputError(f"{path}: vocabulary file is empty")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if token in vocab:   # BERT would keep the last id, leaving a hole no vocab.txt can write back
            raise UserInputError(f"{path} line {index + 1}: token {token!r} repeats line {vocab[token] + 1}; "
                                 "each token must occur once")
        vocab[token] = index
    return vocab


def build_wordpiece_backend(vocab: Mapping[str, int], *, do_lower_case: bool = True,
                            tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                            special_tokens: Mapping[str, str] = DEFAULT_SPECIAL_TOKENS,
                            source: str = "vocabulary") -> Tokenizer:
    """The BERT pipeline as a `tokenizers.Tokenizer` (the one BertTokenizerFast builds)."""
    missing = [token for token in special_tokens.values() if token not in vocab]
    if missing:
        raise UserInputError(f"{source}: vocabulary lacks the special token(s) {', '.join(missing)}")
    backend = Tokenizer(WordPiece(dict(vocab), unk_token=special_tokens["unk_token"],
                                  max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents, lowercase=do_lower_case)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls_token, sep_token = special_tokens["cls_token"], special_tokens["sep_token"]
    backend.post_processor = processors.BertProcessing((sep_token, vocab[sep_token]), (cls_token, vocab[cls_token]))
    # Special tokens in the text stay whole and are never lower-cased ("[MASK]" -> 103).
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token in special_tokens.values()])
    return backend


class MobileBertTokenizer:
    """BERT WordPiece tokenizer with HF-compatible files and HF-equal ids and offsets.

    Build it from a vocabulary (`MobileBertTokenizer("vocab.txt")` or a {token: id} dict),
    from a `tokenizer.json` (`from_tokenizer_json`), or from a directory (`from_pretrained`).
    """

    def __init__(self, vocab: str | os.PathLike | Mapping[str, int], *, do_lower_case: bool = True,
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                 model_max_length: int = 512, special_tokens: Mapping[str, str] | None = None):
        special_tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
        if isinstance(vocab, Mapping):
            source, vocab_dict = "vocabulary", dict(vocab)
            if not vocab_dict:
                raise UserInputError("vocabulary: the vocabulary is empty")
        else:
            source, vocab_dict = str(vocab), read_vocab_file(vocab)
        backend = build_wordpiece_backend(
            vocab_dict, do_lower_case=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents, special_tokens=special_tokens, source=source)
        self._attach(backend, do_lower_case=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars,
                     strip_accents=strip_accents, model_max_length=model_max_length,
                     special_tokens=special_tokens, source=source)

    def _attach(self, backend: Tokenizer, *, do_lower_case: bool, tokenize_chinese_chars: bool,
                strip_accents: bool | None, model_max_length: int, special_tokens: Mapping[str, str],
                source: str) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.model_max_length = model_max_length
        self.special_tokens = dict(special_tokens)
        for name, token in self.special_tokens.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise UserInputError(f"{source}: vocabulary lacks the special token {token}")
            setattr(self, name, token)
            setattr(self, f"{name}_id", token_id)

    # ----- construction from files -------------------------------------------------------

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, *, model_max_length: int = 512,
                            special_tokens: Mapping[str, str] | None = None) -> "MobileBertTokenizer":
        """Load a `tokenizer.json`; lower-casing etc. are read from its BertNormalizer."""
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: tokenizer file not found")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers reports parse errors as plain Exception
            raise UserInputError(f"{path}: not a valid tokenizer.json ({str(error).splitlines()[0]})") from None
        if backend.get_vocab_size(with_added_tokens=True) == 0:
            raise UserInputError(f"{path}: the vocabulary is empty")
        check_contiguous_ids(backend.get_vocab(with_added_tokens=True), path)
        normalizer = json.loads(backend.to_str()).get("normalizer") or {}
        tokenizer = cls.__new__(cls)
        tokenizer._attach(
            backend, do_lower_case=bool(normalizer.get("lowercase", True)),
            tokenize_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
            strip_accents=normalizer.get("strip_accents"), model_max_length=model_max_length,
            special_tokens={**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}, source=str(path))
        return tokenizer

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MobileBertTokenizer":
        """Load a tokenizer directory: tokenizer.json if present, else vocab.txt + tokenizer_config.json."""
        directory = Path(directory)
        config_path = directory / TOKENIZER_CONFIG_NAME
        config = (read_json(config_path, "tokenizer config", max_bytes=SMALL_FILE_BYTES)
                  if config_path.is_file() else {})
        if not isinstance(config, dict):
            raise UserInputError(f"{config_path}: expected a JSON object")
        special_tokens = {name: _token_content(config.get(name, default), f"{config_path}: {name}")
                          for name, default in DEFAULT_SPECIAL_TOKENS.items()}
        max_length = config.get("model_max_length", 512)
        # HF writes a huge sentinel when the length is unknown; MobileBERT has 512 positions.
        model_max_length = max_length if isinstance(max_length, int) and max_length <= 1_000_000 else 512
        if (directory / TOKENIZER_JSON_NAME).is_file():
            return cls.from_tokenizer_json(directory / TOKENIZER_JSON_NAME, model_max_length=model_max_length,
                                           special_tokens=special_tokens)
        if not (directory / VOCAB_NAME).is_file():
            raise UserInputError(f"{directory}: no {TOKENIZER_JSON_NAME} or {VOCAB_NAME} found "
                                 "(not a tokenizer directory)")
        return cls(directory / VOCAB_NAME, do_lower_case=bool(config.get("do_lower_case", True)),
                   tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
                   strip_accents=config.get("strip_accents"), model_max_length=model_max_length,
                   special_tokens=special_tokens)

    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write vocab.txt, tokenizer.json and tokenizer_config.json (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        id_to_token = {index: token for token, index in self.get_vocab().items()}
        if sorted(id_to_token) != list(range(len(id_to_token))):
            raise ValueError("vocabulary ids are not contiguous from 0; vocab.txt cannot represent them")
        atomic_write_text(directory / VOCAB_NAME, "".join(f"{id_to_token[i]}\n" for i in range(len(id_to_token))))
        atomic_write_text(directory / TOKENIZER_JSON_NAME, self.backend.to_str(pretty=True))
        atomic_write_json(directory / TOKENIZER_CONFIG_NAME, {
            "tokenizer_class": "BertTokenizer",     # what AutoTokenizer instantiates
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": True,
            **self.special_tokens,
        })
        return [directory / name for name in (VOCAB_NAME, TOKENIZER_JSON_NAME, TOKENIZER_CONFIG_NAME)]

    # ----- vocabulary ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text`, without [CLS]/[SEP]."""
        with self._settings():
            return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self._token_id(token) for token in tokens]

    def _token_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        return self.unk_token_id if token_id is None else token_id

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(int(i)) or self.unk_token for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text ("##" pieces joined; lower-cased if the tokenizer lower-cases)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch_ids: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch_ids]

    # ----- encoding ------------------------------------------------------------------------

    def encode_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *,
                     add_special_tokens: bool = True, max_length: int | None = None,
                     truncation: bool | str = False, stride: int = 0, padding: bool | str = False,
                     return_offsets_mapping: bool = False, return_overflowing_tokens: bool = False,
                     return_tensors: str | None = None) -> dict[str, Any]:
        """Encode texts (or text pairs) like HF's fast tokenizer `__call__` on a list.

        truncation: False | True ("longest_first") | "only_first" | "only_second";
        padding: False | True / "longest" (to the longest row) | "max_length";
        stride: tokens shared by consecutive overflowing windows.
        Returns {"input_ids", "token_type_ids", "attention_mask"[, "offset_mapping"]
        [, "overflow_to_sample_mapping"]}: lists of rows, or numpy arrays if return_tensors="np".
        With overflowing tokens every window is a row and the mapping gives its text's index.
        """
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        strategy = _truncation_strategy(truncation)
        if max_length is None and (strategy or padding == "max_length"):
            max_length = self.model_max_length
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        with self._settings(strategy, max_length, stride, padding):
            try:
                encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # noqa: B036 - a Rust panic (stride >= room left) is a BaseException
                raise ValueError(f"cannot encode: {str(error).splitlines()[0]}") from None
        windows, window_text_index = _flatten_windows(encodings, return_overflowing_tokens)
        result: dict[str, Any] = {
            "input_ids": [window.ids for window in windows],
            "token_type_ids": [window.type_ids for window in windows],
            "attention_mask": [window.attention_mask for window in windows],
        }
        if return_offsets_mapping:
            result["offset_mapping"] = [window.offsets for window in windows]
        if return_overflowing_tokens:
            result["overflow_to_sample_mapping"] = window_text_index
        if return_tensors == "np":
            result = {key: np.asarray(value, dtype=np.int64) for key, value in result.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be None or 'np', not {return_tensors!r}")
        return result

    def encode(self, text: str, text_pair: str | None = None, **options: Any) -> dict[str, Any]:
        """Encode one text (or pair): one row per key; with overflowing tokens, one row per window."""
        batch = self.encode_batch([text], None if text_pair is None else [text_pair], **options)
        if options.get("return_overflowing_tokens"):
            return batch
        return {key: value[0] for key, value in batch.items()}

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                 **options: Any) -> dict[str, Any]:
        """HF-style entry point: a string encodes one input, a list encodes a batch."""
        if isinstance(text, str):
            return self.encode(text, text_pair, **options)
        return self.encode_batch(text, text_pair, **options)

    def encode_plain_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """Rust encodings of texts without special tokens, truncation or padding (ids, offsets)."""
        with self._settings():
            return self.backend.encode_batch(list(texts), add_special_tokens=False)

    @contextlib.contextmanager
    def _settings(self, truncation: str | None = None, max_length: int | None = None, stride: int = 0,
                  padding: bool | str = False) -> Iterator[None]:
        """Set the backend's truncation/padding for one call, then leave it plain again."""
        backend = self.backend
        try:
            if truncation:
                backend.enable_truncation(max_length, stride=stride, strategy=truncation)
            else:
                backend.no_truncation()
            if padding in (True, "longest"):
                backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
            elif padding == "max_length":
                backend.enable_padding(length=max_length, pad_id=self.pad_token_id, pad_token=self.pad_token)
            elif padding not in (False, None, "do_not_pad"):
                raise ValueError(f"padding must be False, True, 'longest' or 'max_length', not {padding!r}")
            else:
                backend.no_padding()
            yield
        finally:
            backend.no_truncation()
            backend.no_padding()

    def __repr__(self) -> str:
        return (f"MobileBertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars})")


def check_contiguous_ids(vocab: Mapping[str, int], path: Path) -> None:
    """Ids 0..N-1, one a token: what vocab.txt, the embeddings and the shards' dtype assume (a gap
    or a huge id would overflow the shards' ids, or fail only once a whole corpus is written)."""
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        first = next((index for index, value in enumerate(ids) if value != index), len(ids))
        found = ids[first] if first < len(ids) else None
        raise UserInputError(f"{path}: token ids must be 0..{len(ids) - 1}, one a token; id {first} is missing"
                             + (f" (the next id is {found})" if found is not None else ""))


def _token_content(token: Any, where: str) -> str:
    """tokenizer_config.json stores a special token as a string or as an AddedToken dict."""
    content = token.get("content") if isinstance(token, dict) else token
    if not isinstance(content, str) or not content:
        raise UserInputError(f"{where} must be a token string or an object with a 'content' string, got {token!r:.80}")
    return content


def _truncation_strategy(truncation: bool | str | None) -> str | None:
    if truncation in (False, None, "do_not_truncate"):
        return None
    if truncation is True:
        return "longest_first"
    if truncation in TRUNCATION_STRATEGIES:
        return truncation
    raise ValueError(f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, not {truncation!r}")


def _flatten_windows(encodings: list[Encoding], keep_overflow: bool) -> tuple[list[Encoding], list[int]]:
    """Each encoding followed by its overflowing windows (HF's order), with each window's text index."""
    windows, text_index = [], []
    for index, encoding in enumerate(encodings):
        parts = [encoding, *encoding.overflowing] if keep_overflow else [encoding]
        windows.extend(parts)
        text_index.extend([index] * len(parts))
    return windows, text_index
