"""SQuAD reading, windows, labels and post-processing, checked against HF run_qa's rules.

The reference windows are computed here with transformers' BertTokenizerFast exactly as
run_qa's prepare_*_features call it; the reference labels and post-processing re-state
run_qa's rules as plain loops. Toy data with a ~40-token vocabulary runs offline; the real
SQuAD files and vocabulary come from ../shared/data when present.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.model.tokenizer import MobileBertTokenizer
from mobilebert_paddle.tasks.squad import (
    NOT_CONTEXT,
    SquadExample,
    SquadFeatures,
    build_features,
    postprocess_predictions,
    read_squad,
    write_prediction_files,
)

transformers = pytest.importorskip("transformers")
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "who", "where", "is", "the", "a", "color",
             "of", "sky", "dog", "cat", "blue", "red", "green", "was", ".", "?", ",", "alice", "bob", "went",
             "to", "paris", "london", "in", "1990", "##s", "did", "go", "when", "rome"]
TOY_CONTEXT = ("The sky is blue. The dog is red. The cat is green. Alice went to Paris in the 1990s. "
               "Bob went to London.")


def hf_fast(vocab_file: Path):
    """transformers' fast BERT tokenizer (5.x ignores `vocab_file=`: it wants `vocab=`)."""
    keyword = "vocab" if TRANSFORMERS_MAJOR >= 5 else "vocab_file"
    reference = transformers.BertTokenizerFast(**{keyword: str(vocab_file)})
    assert len(reference) == len(Path(vocab_file).read_text(encoding="utf-8").splitlines())
    return reference


def run_qa_windows(reference, examples, max_seq_length, doc_stride):
    """Windows as HF run_qa's prepare_validation_features makes them, offsets outside the context -1."""
    encoded = reference([ex.question.lstrip() for ex in examples], [ex.context for ex in examples],
                        truncation="only_second", max_length=max_seq_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    offsets = np.array(encoded["offset_mapping"])
    in_context = np.array([[sid == 1 for sid in encoded.sequence_ids(i)] for i in range(len(offsets))])
    offsets[~in_context] = NOT_CONTEXT
    return {"input_ids": np.array(encoded["input_ids"]), "token_type_ids": np.array(encoded["token_type_ids"]),
            "attention_mask": np.array(encoded["attention_mask"]), "offset_mapping": offsets,
            "example_index": np.array(encoded["overflow_to_sample_mapping"]),
            "raw_offsets": encoded["offset_mapping"],
            "sequence_ids": [encoded.sequence_ids(i) for i in range(len(offsets))]}


def run_qa_labels(examples, windows):
    """prepare_train_features' start/end labels, loop for loop (including its search past the context)."""
    starts, ends = [], []
    for offsets, sequence_ids, example_number in zip(windows["raw_offsets"], windows["sequence_ids"],
                                                     windows["example_index"]):
        example = examples[example_number]
        if example.is_impossible or not example.answers:
            starts.append(0), ends.append(0)
            continue
        start_char = example.answers[0]["answer_start"]
        end_char = start_char + len(example.answers[0]["text"])
        first = sequence_ids.index(1)
        last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(0), ends.append(0)
            continue
        while first < len(offsets) and offsets[first][0] <= start_char:
            first += 1
        while offsets[last][1] >= end_char:
            last -= 1
        starts.append(first - 1), ends.append(last + 1)
    return np.array(starts), np.array(ends)


def toy_example(question="Where did Alice go?", answer="Paris", occurrence=0, is_impossible=False, qid="q1"):
    start = -1
    for _ in range(occurrence + 1):
        start = TOY_CONTEXT.index(answer, start + 1)
    answers = [] if is_impossible else [{"text": answer, "answer_start": start}]
    return SquadExample(qid, question, TOY_CONTEXT, answers, is_impossible)


@pytest.fixture(scope="module")
def toy_vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_tokenizer(toy_vocab_file) -> MobileBertTokenizer:
    return MobileBertTokenizer(toy_vocab_file)


@pytest.fixture(scope="module")
def bert_tokenizer(bert_vocab_file) -> MobileBertTokenizer:
    return MobileBertTokenizer(bert_vocab_file)


def assert_windows_equal(features: SquadFeatures, expected: dict) -> None:
    assert len(features) == len(expected["input_ids"])
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping", "example_index"):
        np.testing.assert_array_equal(features[key], expected[key], err_msg=key)


# ----- windows --------------------------------------------------------------------------------------

def test_toy_windows_equal_run_qa(toy_tokenizer, toy_vocab_file):
    examples = [toy_example(), toy_example("Who went to London?", "Bob", qid="q2"),
                toy_example("What is the color of the sky?", "blue", qid="q3"),
                toy_example("  When?", "1990s", qid="q4")]               # the question is left-stripped
    features = build_features(examples, toy_tokenizer, max_seq_length=20, doc_stride=4, max_query_length=8)
    expected = run_qa_windows(hf_fast(toy_vocab_file), examples, 20, 4)
    assert_windows_equal(features, expected)
    assert np.bincount(features.example_index).min() > 1               # every example really has several windows


@pytest.mark.slow
@pytest.mark.parametrize("name, window_count", [("dev-v1.1.json", 10784), ("dev-v2.0-reconstructed.json", 12134)])
def test_dev_windows_equal_run_qa(bert_tokenizer, bert_vocab_file, shared_data, name, window_count):
    examples = read_squad(shared_data / "squad" / name)
    features = build_features(examples, bert_tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64)
    assert len(features) == window_count
    assert_windows_equal(features, run_qa_windows(hf_fast(bert_vocab_file), examples, 384, 128))


def test_long_question_is_truncated_not_looped(toy_tokenizer):
    question = "what " * 200                                          # 200 tokens
    examples = [SquadExample("long", question, TOY_CONTEXT, [], True)]
    features = build_features(examples, toy_tokenizer, max_seq_length=32, doc_stride=8, max_query_length=16)
    what, sep = toy_tokenizer.convert_tokens_to_ids(["what", "[SEP]"])
    for row in features.input_ids:
        assert row[1:17].tolist() == [what] * 16 and row[17] == sep     # exactly 16 question tokens
    context_tokens = len(toy_tokenizer.tokenize(TOY_CONTEXT))
    room = 32 - 3 - 16
    assert len(features) == 1 + -(-(context_tokens - room) // (room - 8)) == 5
    assert (features.offset_mapping[:, :18] == NOT_CONTEXT).all()


def test_long_question_real_vocab(bert_tokenizer):
    examples = [SquadExample("long", " ".join(["why"] * 200), "A short context.", [], True)]
    features = build_features(examples, bert_tokenizer)                  # 384 / 128 / 64
    assert len(features) == 1
    assert features.input_ids[0, 1:65].tolist() == [bert_tokenizer.convert_tokens_to_ids(["why"])[0]] * 64
    assert features.input_ids[0, 65] == bert_tokenizer.sep_token_id
    assert features.attention_mask[0].sum() == 1 + 64 + 1 + 4 + 1      # a short context . -> 4 tokens


def test_window_sizes_that_cannot_advance_are_rejected(toy_tokenizer):
    with pytest.raises(UserInputError, match="doc_stride"):
        build_features([toy_example()], toy_tokenizer, max_seq_length=20, doc_stride=9, max_query_length=8)


def test_features_access(toy_tokenizer):
    examples = [toy_example(), toy_example("Who went to London?", "Bob", qid="q2")]
    features = build_features(examples, toy_tokenizer, max_seq_length=20, doc_stride=4, max_query_length=8,
                              training=True)
    assert features["input_ids"] is features.input_ids
    assert set(features.keys()) == {"input_ids", "token_type_ids", "attention_mask", "offset_mapping",
                                    "example_index", "start_positions", "end_positions"}
    assert features.input_ids.dtype == np.int64 and features.offset_mapping.shape == (len(features), 20, 2)
    batch = features[1:3]
    assert isinstance(batch, SquadFeatures) and len(batch) == 2
    np.testing.assert_array_equal(batch.input_ids, features.input_ids[1:3])
    item = features[2]
    assert item["input_ids"].shape == (20,) and item["start_positions"] == features.start_positions[2]
    assert len(features[np.array([0, 2])]) == 2
    assert set(features.model_inputs()) == {"input_ids", "token_type_ids", "attention_mask"}
    with pytest.raises(AttributeError):
        features.nothing  # noqa: B018 (the attribute access is what raises)


# ----- training labels ------------------------------------------------------------------------------

def answer_recovered(example, offsets, start, end) -> bool:
    """The labelled tokens cover the answer and each overlaps it (no extra token on either side)."""
    answer_start = example.answers[0]["answer_start"]
    answer_end = answer_start + len(example.answers[0]["text"])
    return (offsets[start][0] <= answer_start < offsets[start][1]
            and offsets[end][0] < answer_end <= offsets[end][1] and start <= end)


def test_toy_labels(toy_tokenizer, toy_vocab_file):
    examples = [toy_example("Who went to London?", "Bob", qid="a"), toy_example(answer="Paris in the 1990s", qid="b"),
                toy_example("What?", is_impossible=True, qid="c"), toy_example("When?", "1990", qid="d")]
    features = build_features(examples, toy_tokenizer, max_seq_length=20, doc_stride=4, max_query_length=8,
                              training=True)
    for window in range(len(features)):
        example = examples[features.example_index[window]]
        start, end = features.start_positions[window], features.end_positions[window]
        offsets = features.offset_mapping[window]
        if start == 0:
            assert end == 0
            context_offsets = offsets[offsets[:, 0] != NOT_CONTEXT]
            if not example.is_impossible:       # answer not wholly inside this window
                answer = example.answers[0]
                assert (context_offsets[0, 0] > answer["answer_start"]
                        or context_offsets[-1, 1] < answer["answer_start"] + len(answer["text"]))
        else:
            assert answer_recovered(example, offsets, start, end)
            context = example.context
            text = context[offsets[start][0]:offsets[end][1]]
            assert text == {"a": "Bob", "b": "Paris in the 1990s", "d": "1990"}[example.id]   # "1990" "##s"
    labelled = {examples[i].id for i in features.example_index[features.start_positions > 0]}
    assert labelled == {"a", "b", "d"}


def test_answer_in_last_context_token_of_window(toy_tokenizer, toy_vocab_file):
    """run_qa's start search runs past the closing [SEP] into padding here; ours stays on the answer."""
    example = toy_example("Who?", "blue", qid="edge")
    tokens = toy_tokenizer.tokenize(TOY_CONTEXT)                # the sky is blue . -> "blue" is token 3
    assert tokens[3] == "blue"
    # "[CLS] who ? [SEP]" leaves room for 4 context tokens: the first window ends exactly on "blue".
    features = build_features([example], toy_tokenizer, max_seq_length=9, doc_stride=1, max_query_length=4,
                              training=True)
    question_length = len(toy_tokenizer.tokenize("Who?"))
    assert features.start_positions[0] == features.end_positions[0] == question_length + 2 + 3
    windows = run_qa_windows(hf_fast(toy_vocab_file), [example], 9, 1)
    assert_windows_equal(features, windows)
    reference_start, reference_end = run_qa_labels([example], windows)
    assert reference_end[0] == features.end_positions[0]
    assert windows["sequence_ids"][0][reference_start[0]] != 1          # run_qa's start is not a context token


@pytest.mark.slow
def test_train_labels_recover_answers(bert_tokenizer, bert_vocab_file, shared_data):
    examples = read_squad(shared_data / "squad" / "train-v2.0-first10articles.json", training=True)
    assert len(examples) == 4719 and not examples.skipped_ids
    features = build_features(examples, bert_tokenizer, training=True)
    windows = run_qa_windows(hf_fast(bert_vocab_file), examples, 384, 128)
    assert_windows_equal(features, windows)
    reference_start, reference_end = run_qa_labels(examples, windows)
    context_start = np.array([ids[start] == 1 for ids, start in zip(windows["sequence_ids"], reference_start)])
    agree = (reference_start == 0) | context_start          # where run_qa's label is a real token
    np.testing.assert_array_equal(features.start_positions[agree], reference_start[agree])
    np.testing.assert_array_equal(features.end_positions, reference_end)
    exact = 0
    labelled = np.nonzero(features.start_positions)[0]
    for window in labelled:
        example = examples[features.example_index[window]]
        offsets = features.offset_mapping[window]
        start, end = features.start_positions[window], features.end_positions[window]
        assert answer_recovered(example, offsets, start, end), example.id
        exact += example.context[offsets[start][0]:offsets[end][1]] == example.answers[0]["text"]
    answerable = sum(not ex.is_impossible for ex in examples)
    assert len(labelled) >= answerable                        # every answer is wholly inside some window
    assert exact / len(labelled) > 0.99                       # the rest: answers that end inside a word ("Tibet"an)


# ----- reading and bad input ------------------------------------------------------------------------

def write_squad(tmp_path, data, name="squad.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def toy_dataset(**changes):
    qa = {"id": "q1", "question": "Where did Alice go?", "answers": [{"text": "Paris", "answer_start": 65}]}
    qa.update(changes.pop("qa", {}))
    paragraph = {"context": TOY_CONTEXT, "qas": [qa, {"id": "q2", "question": "Who?", "answers": [],
                                                      "is_impossible": True}]}
    paragraph.update(changes)
    return {"version": "v2.0", "data": [{"title": "Toy", "paragraphs": [paragraph]}]}


def test_read_toy_file(tmp_path):
    assert TOY_CONTEXT[65:70] == "Paris"
    examples = read_squad(write_squad(tmp_path, toy_dataset()))
    assert [ex.id for ex in examples] == ["q1", "q2"]
    assert examples[0] == SquadExample("q1", "Where did Alice go?", TOY_CONTEXT,
                                       [{"text": "Paris", "answer_start": 65}], False)
    assert examples[1].is_impossible and examples[1].answers == []


@pytest.mark.parametrize("content, message", [
    ("{\"data\": [", "invalid JSON"),
    ({"version": "1.1"}, "top level: missing key 'data'"),
    (toy_dataset(qa={"question": None}), "question q1: 'question' should be str"),
    ({"data": [{"paragraphs": [{"context": TOY_CONTEXT, "qas": [{"id": "q1", "answers": []}]}]}]},
     "question q1: missing key 'question'"),
    ({"data": [{"paragraphs": [{"qas": [{"id": "q1", "question": "x", "answers": []}]}]}]},
     r"question q1 \(data\[0\].paragraphs\[0\]\): missing key 'context'"),
    (toy_dataset(context="  \n"), "question q1 .*: empty context"),
    (toy_dataset(qa={"answers": [{"text": "Paris"}]}), "question q1 answer: missing key 'answer_start'"),
    (toy_dataset(qa={"answers": [{"text": "Paris", "answer_start": "65"}]}),
     "question q1 answer: 'answer_start' should be int"),
    (toy_dataset(qa={"id": "q2"}), "question q2: the id occurs more than once"),
    (toy_dataset(qa={"question": "  "}), "question q1: empty question"),
])
def test_bad_file_is_user_input_error(tmp_path, content, message):
    path = write_squad(tmp_path, content)
    with pytest.raises(UserInputError, match=message) as caught:
        read_squad(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_misaligned_answer_skipped_in_training_kept_in_evaluation(tmp_path, caplog):
    path = write_squad(tmp_path, toy_dataset(qa={"answers": [{"text": "Paris", "answer_start": 3}]}))
    assert [ex.id for ex in read_squad(path)] == ["q1", "q2"]          # evaluation: texts are what count
    with caplog.at_level(logging.WARNING, logger="mobilebert_paddle.tasks.squad"):
        examples = read_squad(path, training=True)
    assert [ex.id for ex in examples] == ["q2"] and examples.skipped_ids == ["q1"]
    assert f"{path}: skipped 1 of 2 training questions" in caplog.text and "q1" in caplog.text


def test_only_misaligned_answers_is_user_input_error(tmp_path):
    data = toy_dataset(qa={"answers": [{"text": "Paris", "answer_start": 500}]})
    data["data"][0]["paragraphs"][0]["qas"].pop()                       # keep only the misaligned question
    path = write_squad(tmp_path, data)
    with pytest.raises(UserInputError, match=r"no training question .* first: q1") as caught:
        read_squad(path, training=True)
    assert str(path) in str(caught.value)


@pytest.mark.slow
def test_read_official_counts(shared_data):
    assert len(read_squad(shared_data / "squad" / "dev-v1.1.json")) == 10570
    examples = read_squad(shared_data / "squad" / "dev-v2.0-reconstructed.json")
    assert len(examples) == 11873 and sum(ex.is_impossible for ex in examples) == 5945


# ----- post-processing ------------------------------------------------------------------------------

def two_window_features(tokenizer):
    """One example, windows of 6 context tokens overlapping by 2: 'london' is only in the last window."""
    example = toy_example("Who went to London?", "Bob")
    features = build_features([example], tokenizer, max_seq_length=14, doc_stride=2, max_query_length=6)
    return example, features


def position_of(example, features, word, window):
    """Token position of `word` (lower-cased match) in a window."""
    for position, (start, end) in enumerate(features.offset_mapping[window]):
        if start != NOT_CONTEXT and example.context[start:end].lower() == word:
            return position
    raise AssertionError(f"{word} not in window {window}")


def flat_logits(features, value=-10.0):
    return (np.full(features.input_ids.shape, value, dtype=np.float32),
            np.full(features.input_ids.shape, value, dtype=np.float32))


def test_best_span_in_a_later_window(toy_tokenizer):
    example, features = two_window_features(toy_tokenizer)
    last = len(features) - 1
    assert last >= 2
    start_logits, end_logits = flat_logits(features)
    london = position_of(example, features, "london", last)
    start_logits[last, london - 2], end_logits[last, london] = 3.0, 3.0      # "went to london": 3 + 3
    start_logits[0, 8], end_logits[0, 8] = 2.0, 2.5                          # a weaker span in window 0
    start_logits[:, 1], end_logits[:, 1] = 9.0, 9.0                          # question tokens: never a span
    end_logits[last, london - 4] = 8.0                                        # would win, but ends before the start
    predictions, nbest, null_odds = postprocess_predictions([example], features, start_logits, end_logits)
    assert predictions == {"q1": "went to London"}
    best = nbest["q1"]
    assert best[0]["text"] == "went to London" and (best[0]["start_logit"], best[0]["end_logit"]) == (3.0, 3.0)
    assert [answer["probability"] for answer in best] == sorted((a["probability"] for a in best), reverse=True)
    assert sum(answer["probability"] for answer in best) == pytest.approx(1.0)
    assert all(set(answer) == {"text", "probability", "start_logit", "end_logit"} for answer in best)
    assert null_odds["q1"] == pytest.approx(-20.0 - 6.0)                      # [CLS] -10 -10 vs span 3 + 3


def test_max_answer_length(toy_tokenizer):
    example, features = two_window_features(toy_tokenizer)
    last = len(features) - 1
    start_logits, end_logits = flat_logits(features)
    london = position_of(example, features, "london", last)
    start_logits[last, london - 3], end_logits[last, london] = 5.0, 5.0      # "bob went to london": 4 tokens
    end_logits[last, london - 1] = 1.0                                        # "bob went to": 3 tokens, weaker
    predictions, _, _ = postprocess_predictions([example], features, start_logits, end_logits, max_answer_length=3)
    assert predictions["q1"] == "Bob went to"
    predictions, _, _ = postprocess_predictions([example], features, start_logits, end_logits, max_answer_length=4)
    assert predictions["q1"] == "Bob went to London"


@pytest.mark.parametrize("threshold, expected", [(0.0, "London"), (-3.0, "")])
def test_null_answer_threshold(toy_tokenizer, threshold, expected):
    example, features = two_window_features(toy_tokenizer)
    last = len(features) - 1
    start_logits, end_logits = flat_logits(features)
    london = position_of(example, features, "london", last)
    start_logits[last, london], end_logits[last, london] = 3.0, 3.0          # best span: 6
    start_logits[:, 0], end_logits[:, 0] = 6.0, 6.0                           # [CLS] 12 in most windows ...
    start_logits[1, 0], end_logits[1, 0] = 1.5, 2.5                           # ... but 4 in window 1: null = 4
    predictions, nbest, null_odds = postprocess_predictions(
        [example], features, start_logits, end_logits, null_score_diff_threshold=threshold,
        version_2_with_negative=True)
    assert null_odds["q1"] == pytest.approx(4.0 - 6.0)
    assert predictions["q1"] == expected
    null = [answer for answer in nbest["q1"] if answer["text"] == ""]
    assert len(null) == 1 and (null[0]["start_logit"], null[0]["end_logit"]) == (1.5, 2.5)
    assert nbest["q1"][0]["text"] == "London"


def test_no_valid_span_gives_placeholder(toy_tokenizer):
    example, features = two_window_features(toy_tokenizer)
    start_logits, end_logits = flat_logits(features)
    predictions, nbest, _ = postprocess_predictions([example], features, start_logits, end_logits, max_answer_length=0)
    assert predictions["q1"] == "empty" and nbest["q1"] == [
        {"text": "empty", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]


def run_qa_postprocess(examples, features, start_logits, end_logits, n_best_size, max_answer_length, threshold):
    """postprocess_qa_predictions (version_2_with_negative) restated as loops."""
    predictions, nbest, null_odds = {}, {}, {}
    for number, example in enumerate(examples):
        candidates, null = [], None
        for window in np.nonzero(features.example_index == number)[0]:
            s_logits, e_logits, offsets = start_logits[window], end_logits[window], features.offset_mapping[window]
            null_score = s_logits[0] + e_logits[0]
            if null is None or null["score"] > null_score:
                null = {"text": "", "score": null_score, "start_logit": s_logits[0], "end_logit": e_logits[0]}
            for s in np.argsort(s_logits)[-1:-n_best_size - 1:-1]:
                for e in np.argsort(e_logits)[-1:-n_best_size - 1:-1]:
                    if offsets[s][0] == NOT_CONTEXT or offsets[e][0] == NOT_CONTEXT:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append({"text": example.context[offsets[s][0]:offsets[e][1]],
                                       "score": s_logits[s] + e_logits[e],
                                       "start_logit": s_logits[s], "end_logit": e_logits[e]})
        ranked = sorted(candidates + [null], key=lambda c: c["score"], reverse=True)[:n_best_size]
        if not any(c is null for c in ranked):
            ranked.append(null)
        scores = np.array([c["score"] for c in ranked], dtype=np.float64)
        probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        best = next(c for c in ranked if c["text"] != "")
        null_odds[example.id] = float(null["score"] - best["start_logit"] - best["end_logit"])
        predictions[example.id] = "" if null_odds[example.id] > threshold else best["text"]
        nbest[example.id] = [(c["text"], p) for c, p in zip(ranked, probabilities)]
    return predictions, nbest, null_odds


@pytest.mark.slow
def test_postprocess_equals_run_qa_rules(bert_tokenizer, shared_data):
    examples = read_squad(shared_data / "squad" / "dev-v2.0-first5articles.json")[:400]
    features = build_features(examples, bert_tokenizer, max_seq_length=128, doc_stride=32)
    assert len(features) > len(examples)                                   # several windows per example
    rng = np.random.default_rng(0)
    start_logits = rng.normal(size=features.input_ids.shape).astype(np.float32)
    end_logits = rng.normal(size=features.input_ids.shape).astype(np.float32)
    start_logits[:, 0] += 2.5                                  # [CLS] competitive: some "" answers, not all
    end_logits[:, 0] += 2.5
    predictions, nbest, null_odds = postprocess_predictions(
        examples, features, start_logits, end_logits, n_best_size=20, max_answer_length=30,
        null_score_diff_threshold=0.5, version_2_with_negative=True)
    expected = run_qa_postprocess(examples, features, start_logits, end_logits, 20, 30, 0.5)
    assert predictions == expected[0]
    assert 0 < sum(text == "" for text in predictions.values()) < len(examples)
    for example in examples:
        assert [a["text"] for a in nbest[example.id]] == [text for text, _ in expected[1][example.id]]
        np.testing.assert_allclose([a["probability"] for a in nbest[example.id]],
                                   [p for _, p in expected[1][example.id]], rtol=1e-6)
        assert null_odds[example.id] == pytest.approx(expected[2][example.id], abs=1e-5)


def test_write_prediction_files(toy_tokenizer, tmp_path):
    example, features = two_window_features(toy_tokenizer)
    start_logits, end_logits = flat_logits(features)
    start_logits[0, 7], end_logits[0, 8] = 1.0, 1.0
    outputs = postprocess_predictions([example], features, start_logits, end_logits, version_2_with_negative=True)
    paths = write_prediction_files(tmp_path / "out", *outputs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "nbest_predictions.json", "null_odds.json", "predictions.json"]         # no temp files left
    predictions = json.loads(paths["predictions"].read_text(encoding="utf-8"))
    nbest = json.loads(paths["nbest_predictions"].read_text(encoding="utf-8"))
    null_odds = json.loads(paths["null_odds"].read_text(encoding="utf-8"))
    assert predictions == outputs[0] and isinstance(predictions["q1"], str)
    assert isinstance(null_odds["q1"], float)
    assert all(isinstance(a["text"], str) and isinstance(a["probability"], float) for a in nbest["q1"])
