"""SQuAD v1.1 / v2.0: read the official JSON, cut question+context windows, turn logits into answers.

Windows are those of HF's run_qa (`prepare_train_features` / `prepare_validation_features`):
"[CLS] question [SEP] context-window [SEP] [PAD]...", `max_seq_length` tokens, the question
left-stripped, the context cut into windows that overlap by `doc_stride` tokens
(tokenizers' `truncation="only_second"` with `stride`). On SQuAD v1.1 dev with the uncased
vocabulary that is 10,784 windows for 10,570 questions. Two differences, both deliberate:
  * a question longer than `max_query_length` tokens keeps only its first `max_query_length`
    tokens (run_qa never truncates questions, and a long one can leave no room for context);
  * a training answer that starts in the window's last context token is labelled there
    (run_qa's search runs past the closing [SEP] into the padding in that case).

Speed: every distinct question and context is tokenized once with the Rust batch API
(SQuAD has ~5 questions per context); windows and labels are then cut with numpy.

Post-processing follows run_qa's `postprocess_qa_predictions`: the n-best start and end
tokens of each window, spans inside the context, end >= start, at most `max_answer_length`
tokens; the null score is the smallest [CLS] start+end logit over the example's windows;
SQuAD v2 predicts "" when null score - best span score > `null_score_diff_threshold`.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..core.files import atomic_write_json, ensure_writable_dir, read_json
from ..model.config import MODEL_INPUT_NAMES
from ..model.tokenizer import MobileBertTokenizer

logger = logging.getLogger(__name__)

NOT_CONTEXT = -1                    # offset_mapping value of [CLS], question, [SEP] and padding tokens
SPECIAL_TOKENS_PER_WINDOW = 3       # [CLS] question [SEP] context [SEP]
ASSEMBLY_CHUNK = 4096               # windows built per numpy pass (bounds temporary memory)


# ----- reading the official JSON ---------------------------------------------------------------

@dataclass
class SquadExample:
    id: str
    question: str
    context: str
    answers: list[dict[str, Any]] = field(default_factory=list)   # [{"text": str, "answer_start": int}]
    is_impossible: bool = False


class SquadExamples(list):
    """The examples of one file (a list), plus where they came from and what training skipped."""

    def __init__(self, examples: Iterable[SquadExample], path: Path, skipped_ids: Sequence[str] = ()):
        super().__init__(examples)
        self.path = path
        self.skipped_ids = list(skipped_ids)


def read_squad(path: str | os.PathLike, training: bool = False) -> SquadExamples:
    """Read an official SQuAD v1.1 / v2.0 JSON file into examples.

    Structural problems (invalid JSON, a missing key, a wrong type, an empty context or
    question, a repeated id) raise UserInputError naming the file and the question.
    With `training=True` a question whose first answer is not found at its `answer_start`
    is skipped; the count and the first ids are logged and kept in `.skipped_ids`.
    Evaluation does not need `answer_start` (the official metric compares texts only).
    """
    path = Path(path)
    dataset = read_json(path, "SQuAD file")
    articles = _field(dataset, "data", list, path, "top level")
    examples: list[SquadExample] = []
    skipped: list[str] = []
    seen_ids: set[str] = set()
    for article_number, article in enumerate(articles):
        place = f"data[{article_number}]"
        for paragraph_number, paragraph in enumerate(_field(article, "paragraphs", list, path, place)):
            for example in _read_paragraph(paragraph, path, f"{place}.paragraphs[{paragraph_number}]"):
                if example.id in seen_ids:
                    raise UserInputError(f"{path}: question {example.id}: the id occurs more than once")
                seen_ids.add(example.id)
                if training and not _answer_is_aligned(example):
                    skipped.append(example.id)
                else:
                    examples.append(example)
    if not examples and not skipped:
        raise UserInputError(f"{path}: the file contains no questions")
    if skipped:
        _report_skipped(path, skipped, len(skipped) + len(examples))
        if not examples:
            raise UserInputError(f"{path}: no training question has its answer at answer_start "
                                 f"(all {len(skipped)} skipped, first: {skipped[0]})")
    return SquadExamples(examples, path, skipped)


def _read_paragraph(paragraph: Any, path: Path, place: str) -> Iterator[SquadExample]:
    questions = _field(paragraph, "qas", list, path, place)
    paragraph_place = place
    if questions and isinstance(questions[0], dict) and "id" in questions[0]:
        paragraph_place = f"question {questions[0]['id']} ({place})"   # name paragraph problems by a question
    context = _field(paragraph, "context", str, path, paragraph_place)
    if not context.strip():
        raise UserInputError(f"{path}: {paragraph_place}: empty context")
    for question_number, qa in enumerate(questions):
        question_place = f"{place}.qas[{question_number}]"
        question_id = str(_field(qa, "id", (str, int), path, question_place))
        question_place = f"question {question_id}"
        question = _field(qa, "question", str, path, question_place)
        if not question.strip():
            raise UserInputError(f"{path}: {question_place}: empty question")
        is_impossible = _field(qa, "is_impossible", bool, path, question_place, default=False)
        answers = [_read_answer(answer, path, question_place)
                   for answer in _field(qa, "answers", list, path, question_place)]
        yield SquadExample(question_id, question, context, answers, is_impossible)


def _read_answer(answer: Any, path: Path, place: str) -> dict[str, Any]:
    text = _field(answer, "text", str, path, place + " answer")
    start = _field(answer, "answer_start", int, path, place + " answer")
    return {"text": text, "answer_start": start}


def _field(record: Any, key: str, kind: type | tuple[type, ...], path: Path, place: str, default: Any = ...) -> Any:
    """record[key], checked: a missing key or a value of the wrong type is a UserInputError."""
    if not isinstance(record, dict):
        raise UserInputError(f"{path}: {place}: expected a JSON object, found {type(record).__name__}")
    if key not in record:
        if default is not ...:
            return default
        raise UserInputError(f"{path}: {place}: missing key '{key}'")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise UserInputError(f"{path}: {place}: '{key}' should be {names}, found {type(value).__name__}")
    return value


def _answer_is_aligned(example: SquadExample) -> bool:
    """Training uses the first answer: it must be non-empty text found at its answer_start."""
    if example.is_impossible:
        return True
    if not example.answers:
        return False
    answer = example.answers[0]
    start, text = answer["answer_start"], answer["text"]
    return bool(text) and 0 <= start and example.context[start:start + len(text)] == text


def _report_skipped(path: Path, skipped: list[str], total: int) -> None:
    shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    logger.warning("%s: skipped %d of %d training questions whose answer is not at its answer_start (%s)",
                   path, len(skipped), total, shown)


# ----- features (model windows) -------------------------------------------------------------------

class SquadFeatures:
    """Windows as numpy arrays, one row per window; by key, by attribute, or a batch by index.

    Keys: input_ids, token_type_ids, attention_mask (B, T) int64; offset_mapping (B, T, 2)
    int32 character spans into the example's context, -1 for tokens outside the context;
    example_index (B,) the example each window came from; start_positions / end_positions
    (B,) int64 when built for training. `features[i]` is one window as a dict (a dataset
    item), `features[a:b]` or `features[index_array]` is a SquadFeatures of those windows.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __len__(self) -> int:
        return len(self._arrays["input_ids"])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._arrays[key]
        if isinstance(key, (int, np.integer)):
            return {name: array[key] for name, array in self._arrays.items()}
        return SquadFeatures({name: array[key] for name, array in self._arrays.items()})

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._arrays[name]
        except KeyError:
            raise AttributeError(f"SquadFeatures has no {name!r} (it has {', '.join(self._arrays)})") from None

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def keys(self) -> list[str]:
        return list(self._arrays)

    def items(self):
        return self._arrays.items()

    def model_inputs(self) -> dict[str, np.ndarray]:
        return {name: self._arrays[name] for name in MODEL_INPUT_NAMES}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(array.shape)}" for name, array in self._arrays.items())
        return f"SquadFeatures({len(self)} windows: {shapes})"


def build_features(examples: Sequence[SquadExample], tokenizer: MobileBertTokenizer, max_seq_length: int = 384,
                   doc_stride: int = 128, max_query_length: int = 64, training: bool = False) -> SquadFeatures:
    """Cut every example into model windows (HF run_qa's windows); labels when `training`."""
    _check_window_sizes(max_seq_length, doc_stride, max_query_length)
    if not examples:
        raise ValueError("build_features needs at least one example")
    context_index, contexts = _distinct(example.context for example in examples)
    questions = _TokenTable(tokenizer.encode_plain_batch([example.question.lstrip() for example in examples]),
                            limit=max_query_length)
    if questions.cut_count:
        logger.info("%d question(s) longer than max_query_length=%d tokens keep their first %d tokens",
                    questions.cut_count, max_query_length, max_query_length)
    context_tokens = _TokenTable(tokenizer.encode_plain_batch(contexts), with_offsets=True)
    windows = _plan_windows(questions.lengths, context_tokens.lengths[context_index], max_seq_length, doc_stride)
    window_context = context_index[windows["example_index"]]                        # (N,)
    windows["context_token_start"] = context_tokens.starts[window_context] + windows["context_offset"]
    arrays = _assemble_windows(windows, questions, context_tokens, tokenizer, max_seq_length)
    arrays["example_index"] = windows["example_index"]
    if training:
        arrays["start_positions"], arrays["end_positions"] = _label_windows(
            examples, context_index, context_tokens, windows)
    return SquadFeatures(arrays)


def _check_window_sizes(max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    """The context room left beside the longest question must exceed the overlap, or windows cannot advance."""
    room = max_seq_length - SPECIAL_TOKENS_PER_WINDOW - max_query_length
    if min(max_seq_length, max_query_length) < 1 or doc_stride < 0 or room <= doc_stride:
        raise UserInputError(
            f"window sizes: need max_seq_length - {SPECIAL_TOKENS_PER_WINDOW} - max_query_length > doc_stride >= 0 "
            f"(got max_seq_length={max_seq_length}, max_query_length={max_query_length}, doc_stride={doc_stride})")


def _distinct(texts: Iterable[str]) -> tuple[np.ndarray, list[str]]:
    """(index of each text in the distinct list, distinct texts in first-seen order)."""
    position: dict[str, int] = {}
    index = [position.setdefault(text, len(position)) for text in texts]
    return np.asarray(index, dtype=np.int64), list(position)


class _TokenTable:
    """Token ids (and offsets) of many texts concatenated: text i is tokens[starts[i]:starts[i] + lengths[i]]."""

    def __init__(self, encodings: list, limit: int | None = None, with_offsets: bool = False):
        id_lists = [encoding.ids for encoding in encodings]
        self.cut_count = sum(len(ids) > limit for ids in id_lists) if limit is not None else 0
        id_lists = [ids[:limit] for ids in id_lists] if self.cut_count else id_lists
        self.lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        total = int(self.lengths.sum())
        self.ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=total)
        if with_offsets:
            flat = itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings))
            self.offsets = np.fromiter(flat, dtype=np.int32, count=2 * total).reshape(total, 2)


def _plan_windows(question_lengths: np.ndarray, context_lengths: np.ndarray, max_seq_length: int,
                  doc_stride: int) -> dict[str, np.ndarray]:
    """Where each window starts in its context and how many context tokens it holds (all (N,)).

    Per example (E,): room = tokens left beside the question; consecutive windows start
    room - doc_stride tokens apart and the last one ends at the context's end -- the
    `Encoding.truncate(room, stride)` rule of tokenizers.
    """
    room = max_seq_length - SPECIAL_TOKENS_PER_WINDOW - question_lengths            # (E,)
    step = room - doc_stride                                                         # (E,) > 0
    extra = np.maximum(context_lengths - room, 0)
    window_counts = 1 + (extra + step - 1) // step                                   # (E,)
    example_index = np.repeat(np.arange(len(room)), window_counts)                   # (N,)
    first_window = np.repeat(np.cumsum(window_counts) - window_counts, window_counts)
    window_number = np.arange(len(example_index)) - first_window                     # (N,) 0, 1, ... per example
    context_offset = window_number * step[example_index]
    context_length = np.minimum(room[example_index], context_lengths[example_index] - context_offset)
    return {"example_index": example_index, "question_length": question_lengths[example_index],
            "context_offset": context_offset, "context_length": context_length}


def _assemble_windows(windows: dict[str, np.ndarray], questions: _TokenTable, contexts: _TokenTable,
                      tokenizer: MobileBertTokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
    """Fill (N, T) arrays: [CLS] q [SEP] c-window [SEP] then padding, plus context offsets."""
    count = len(windows["example_index"])
    input_ids = np.full((count, max_seq_length), tokenizer.pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((count, max_seq_length), dtype=np.int64)
    attention_mask = np.zeros((count, max_seq_length), dtype=np.int64)
    offsets = np.full((count, max_seq_length, 2), NOT_CONTEXT, dtype=np.int32)
    position = np.arange(max_seq_length)[None, :]                                    # (1, T)
    question_start = questions.starts[windows["example_index"]]
    for begin in range(0, count, ASSEMBLY_CHUNK):
        rows = slice(begin, begin + ASSEMBLY_CHUNK)
        q_len = windows["question_length"][rows, None]                               # (n, 1)
        c_len = windows["context_length"][rows, None]
        context_begin = q_len + 2                                                    # after [CLS] q [SEP]
        in_question = (position >= 1) & (position <= q_len)                          # (n, T)
        in_context = (position >= context_begin) & (position < context_begin + c_len)
        question_token = question_start[rows, None] + position - 1
        context_token = windows["context_token_start"][rows, None] + position - context_begin
        ids = input_ids[rows]
        ids[:, 0] = tokenizer.cls_token_id
        ids[in_question] = questions.ids[question_token[in_question]]
        ids[(position == q_len + 1) | (position == context_begin + c_len)] = tokenizer.sep_token_id
        ids[in_context] = contexts.ids[context_token[in_context]]
        token_type_ids[rows] = position <= context_begin + c_len
        token_type_ids[rows] &= position >= context_begin                            # context and its [SEP]
        attention_mask[rows] = position <= context_begin + c_len
        offsets[rows][in_context] = contexts.offsets[context_token[in_context]]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "offset_mapping": offsets}


def _label_windows(examples: Sequence[SquadExample], context_index: np.ndarray, contexts: _TokenTable,
                   windows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start/end token of the first answer in each window (N,), or 0 ([CLS]) when it is not all inside.

    The answer's first token is the last context token starting at or before its first
    character; its last token is the first one ending at or after its end -- found once
    per example with a search over all context tokens, then moved into each window.
    """
    has_answer = np.array([not ex.is_impossible and bool(ex.answers) for ex in examples])
    start_char = np.array([ex.answers[0]["answer_start"] if ex.answers else 0 for ex in examples], dtype=np.int64)
    end_char = start_char + np.array([len(ex.answers[0]["text"]) if ex.answers else 0 for ex in examples])
    # Keys increase over all contexts: (context number, character) folded into one integer.
    stride = int(max(len(ex.context) for ex in examples)) + 2
    token_context = np.repeat(np.arange(len(contexts.lengths)), contexts.lengths)
    start_keys = token_context * stride + contexts.offsets[:, 0]
    end_keys = token_context * stride + contexts.offsets[:, 1]
    first_token = np.searchsorted(start_keys, context_index * stride + start_char, side="right") - 1   # (E,)
    last_token = np.searchsorted(end_keys, context_index * stride + end_char, side="left")             # (E,)
    example = windows["example_index"]
    window_first = windows["context_token_start"]                                                      # (N,)
    window_last = window_first + windows["context_length"] - 1
    inside = has_answer[example] & (first_token[example] >= window_first) & (last_token[example] <= window_last)
    to_window = windows["question_length"] + 2 - window_first    # global context token -> window position
    start_positions = np.where(inside, first_token[example] + to_window, 0)
    end_positions = np.where(inside, last_token[example] + to_window, 0)
    return start_positions.astype(np.int64), end_positions.astype(np.int64)


# ----- post-processing -----------------------------------------------------------------------------

def postprocess_predictions(examples: Sequence[SquadExample], features: SquadFeatures, start_logits: Any,
                            end_logits: Any, n_best_size: int = 20, max_answer_length: int = 30,
                            null_score_diff_threshold: float = 0.0, version_2_with_negative: bool = False,
                            ) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Logits (N, T) of every window -> (predictions {id: text}, nbest {id: [...]}, null_odds {id: float}).

    nbest entries are {"text", "probability", "start_logit", "end_logit"}, best first (for v2 the
    null answer "" is among them). null_odds = null score - best span score, for v1 too.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    expected = features["input_ids"].shape
    if start_logits.shape != expected or end_logits.shape != expected:
        raise ValueError(f"logits of shape {start_logits.shape} / {end_logits.shape}, windows are {expected}")
    example_of_window = features["example_index"]
    windows_per_example = np.bincount(example_of_window, minlength=len(examples))
    if len(windows_per_example) != len(examples) or not windows_per_example.all():
        raise ValueError("every example needs at least one window: pass the examples the features were built from")
    null_window = _null_windows(example_of_window, start_logits[:, 0] + end_logits[:, 0], len(examples))
    spans = _candidate_spans(features, start_logits, end_logits, n_best_size, max_answer_length)
    bounds = np.searchsorted(spans["example"], np.arange(len(examples) + 1))
    predictions, nbest, null_odds = {}, {}, {}
    for number, example in enumerate(examples):
        rows = slice(bounds[number], bounds[number + 1])
        window = null_window[number]
        null = {"text": "", "start_logit": float(start_logits[window, 0]), "end_logit": float(end_logits[window, 0]),
                "score": float(start_logits[window, 0] + end_logits[window, 0])}
        best = _best_answers(example, {key: value[rows] for key, value in spans.items()}, n_best_size,
                             null if version_2_with_negative else None)
        first_span = next(answer for answer in best if answer["text"] != "")
        null_odds[example.id] = null["score"] - first_span["start_logit"] - first_span["end_logit"]
        if version_2_with_negative:
            predictions[example.id] = "" if null_odds[example.id] > null_score_diff_threshold else first_span["text"]
        else:
            predictions[example.id] = best[0]["text"]
        nbest[example.id] = best
    return predictions, nbest, null_odds


def _null_windows(example_of_window: np.ndarray, cls_scores: np.ndarray, example_count: int) -> np.ndarray:
    """(E,) the window of each example whose [CLS] start+end logit is smallest (the first on ties)."""
    order = np.lexsort((cls_scores, example_of_window))          # by example, then score
    return order[np.searchsorted(example_of_window[order], np.arange(example_count))]


def _candidate_spans(features: SquadFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                     n_best_size: int, max_answer_length: int) -> dict[str, np.ndarray]:
    """All allowed (n-best start) x (n-best end) spans of all windows, by example then score (best first)."""
    count, length = start_logits.shape
    k = min(n_best_size, length)
    top_start = np.argsort(start_logits, axis=1)[:, ::-1][:, :k]                     # (N, k) best first
    top_end = np.argsort(end_logits, axis=1)[:, ::-1][:, :k]
    rows = np.arange(count)[:, None]
    offsets = features["offset_mapping"]
    start_in_context = offsets[rows, top_start, 0] != NOT_CONTEXT                     # (N, k)
    end_in_context = offsets[rows, top_end, 0] != NOT_CONTEXT
    span_length = top_end[:, None, :] - top_start[:, :, None] + 1                     # (N, k, k)
    allowed = (start_in_context[:, :, None] & end_in_context[:, None, :]
               & (span_length >= 1) & (span_length <= max_answer_length))
    window, start_rank, end_rank = np.nonzero(allowed)
    start_token, end_token = top_start[window, start_rank], top_end[window, end_rank]
    start_logit, end_logit = start_logits[window, start_token], end_logits[window, end_token]
    score = start_logit + end_logit
    example = features["example_index"][window]
    order = np.lexsort((-score, example))          # stable: equal scores keep window/start/end order
    return {"example": example[order], "score": score[order], "start_logit": start_logit[order],
            "end_logit": end_logit[order], "char_start": offsets[window, start_token, 0][order],
            "char_end": offsets[window, end_token, 1][order]}


def _best_answers(example: SquadExample, spans: dict[str, np.ndarray], n_best_size: int,
                  null: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The n-best answers of one example with softmax probabilities (run_qa's list, including its quirks)."""
    answers = [{"text": example.context[int(start):int(end)], "start_logit": float(start_logit),
                "end_logit": float(end_logit), "score": float(score)}
               for start, end, start_logit, end_logit, score in zip(
                   spans["char_start"][:n_best_size], spans["char_end"][:n_best_size],
                   spans["start_logit"][:n_best_size], spans["end_logit"][:n_best_size],
                   spans["score"][:n_best_size])]
    if null is not None:
        # Ties go to the span, as in run_qa (the null answer is appended before a stable sort).
        position = next((i for i, answer in enumerate(answers) if answer["score"] < null["score"]), len(answers))
        answers.insert(position, null)
        answers = answers[:n_best_size] if position < n_best_size else answers[:n_best_size] + [null]
    if not any(answer["text"] for answer in answers):
        # No usable span: run_qa puts the placeholder "empty" (logits 0) first.
        answers.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
    scores = np.array([answer["score"] for answer in answers], dtype=np.float64)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    return [{"text": answer["text"], "probability": float(probability),
             "start_logit": answer["start_logit"], "end_logit": answer["end_logit"]}
            for answer, probability in zip(answers, probabilities)]


def write_prediction_files(output_dir: str | os.PathLike, predictions: dict[str, str],
                           nbest: dict[str, list[dict[str, Any]]], null_odds: dict[str, float]) -> dict[str, Path]:
    """Write predictions.json, nbest_predictions.json and null_odds.json (official formats), each atomically."""
    output_dir = ensure_writable_dir(output_dir)
    paths = {"predictions": output_dir / "predictions.json",
             "nbest_predictions": output_dir / "nbest_predictions.json",
             "null_odds": output_dir / "null_odds.json"}
    atomic_write_json(paths["predictions"], predictions)
    atomic_write_json(paths["nbest_predictions"], nbest)
    atomic_write_json(paths["null_odds"], null_odds)
    return paths
