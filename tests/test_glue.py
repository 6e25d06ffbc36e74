"""GLUE readers (every task's TSV layout, quoting off, one-line errors), the task table, and
feature building compared with HuggingFace's BERT fast tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.model.config import MobileBertConfig
from mobilebert_paddle.tasks.glue import (
    GLUE_MAIN_METRIC,
    GLUE_TASKS,
    GlueExample,
    build_glue_features,
    id2label,
    read_glue,
)
from mobilebert_paddle.tasks.metrics import COMBINED_METRICS, METRIC_FUNCTIONS

# ---------------------------------------------------------------------------------------------
# Every task, files as distributed (headers copied from the GLUE download), with quotes in text
# ---------------------------------------------------------------------------------------------

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER.replace("\tlabel1\tgold_label", "")

# (task, file name, file text, expected (text_a, text_b, label) per example)
TASK_FILES = [
    ("cola", "train.tsv",
     'gj04\t1\t\tOur friends won\'t buy this analysis, let alone the next one we propose.\n'
     'gj04\t0\t*\tHe said "hi and left.\n'
     'cj99\t1\t\tShe left".\n',
     [("Our friends won't buy this analysis, let alone the next one we propose.", None, "1"),
      ('He said "hi and left.', None, "0"), ('She left".', None, "1")]),
    ("cola", "test.tsv", 'index\tsentence\n0\tBill whistled "past the house.\n',
     [('Bill whistled "past the house.', None, None)]),
    ("sst2", "dev.tsv",
     'sentence\tlabel\n"it \'s a charming and often affecting journey . \t1\nunflinchingly bleak "\t0\n',
     [('"it \'s a charming and often affecting journey . ', None, "1"), ('unflinchingly bleak "', None, "0")]),
    ("sst2", "test.tsv", 'index\tsentence\n0\t"uneasy mishmash of styles and genres .\n',
     [('"uneasy mishmash of styles and genres .', None, None)]),
    ("mrpc", "train.tsv",
     'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
     '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of deliberately '
     'distorting his evidence .\tReferring to him as only " the witness " , Amrozi accused his brother .\n'
     '0\t2108705\t2108831\tYucaipa owned Dominick \'s "\tYucaipa bought Dominick \'s in 1995 .\n',
     [('Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
       'Referring to him as only " the witness " , Amrozi accused his brother .', "1"),
      ("Yucaipa owned Dominick 's \"", "Yucaipa bought Dominick 's in 1995 .", "0")]),
    ("mrpc", "test.tsv", 'index\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1089874\t1089925\tPCCW "\tCurrent " Chief\n',
     [('PCCW "', 'Current " Chief', None)]),
    ("stsb", "dev.tsv",
     'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n'
     '0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t'
     'A man wearing a "hard hat is dancing.\t5.000\n'
     '1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\t'
     'A child is riding a horse.\t4.750\n',
     [("A man with a hard hat is dancing.", 'A man wearing a "hard hat is dancing.', 5.0),
      ("A young child is riding a horse.", "A child is riding a horse.", 4.75)]),
    ("stsb", "test.tsv",
     'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n'
     '0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\t'
     'A girl is "brushing her hair.\n',
     [("A girl is styling her hair.", 'A girl is "brushing her hair.', None)]),
    ("qqp", "train.tsv",
     'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
     '133273\t213221\t213222\tHow is the life of a math student? Could you "describe your own experiences?\t'
     'Which level of prepration is enough for the exam jlpt5?\t0\n',
     [('How is the life of a math student? Could you "describe your own experiences?',
       "Which level of prepration is enough for the exam jlpt5?", "0")]),
    ("qqp", "test.tsv", 'id\tquestion1\tquestion2\n0\tWhy are "people\tHow do I "grow?\n',
     [('Why are "people', 'How do I "grow?', None)]),
    ("mnli", "train.tsv",
     MNLI_TRAIN_HEADER + "\n0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t"
     'Conceptually "cream skimming\tProduct and geography\tneutral\tneutral\n',
     [('Conceptually "cream skimming', "Product and geography", "neutral")]),
    ("mnli", "dev_mismatched.tsv",
     MNLI_DEV_HEADER + "\n0\t75290\t75290c\tletters\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t"
     'Your "contribution\tYour contributions\tcontradiction\tcontradiction\tcontradiction\tcontradiction\t'
     "contradiction\tcontradiction\n",
     [('Your "contribution', "Your contributions", "contradiction")]),
    ("mnli", "test_matched.tsv",
     MNLI_TEST_HEADER + '\n0\t31493\t31493\ttravel\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tHierbas, "ans\tThe drinks\n',
     [('Hierbas, "ans', "The drinks", None)]),
    ("qnli", "dev.tsv",
     'index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new "constitution?\t'
     'As of that day, the new constitution came into force.\tentailment\n',
     [('What came into force after the new "constitution?', "As of that day, the new constitution came into force.",
       "entailment")]),
    ("qnli", "test.tsv", 'index\tquestion\tsentence\n0\tWhat "organization?\tThe Nobel Prize.\n',
     [('What "organization?', "The Nobel Prize.", None)]),
    ("rte", "train.tsv",
     'index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of "Mass Destruction Found in Iraq Yet.\t'
     'Weapons of Mass Destruction Found in Iraq.\tnot_entailment\n',
     [('No Weapons of "Mass Destruction Found in Iraq Yet.', "Weapons of Mass Destruction Found in Iraq.",
       "not_entailment")]),
    ("wnli", "dev.tsv",
     'index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair. It has to be "cleaned.\t'
     'The hair has to be cleaned.\t1\n',
     [('The drain is clogged with hair. It has to be "cleaned.', "The hair has to be cleaned.", "1")]),
]


@pytest.mark.parametrize("task, name, text, expected", TASK_FILES, ids=[f"{t}-{n}" for t, n, _, _ in TASK_FILES])
def test_read_every_task(tmp_path, task, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    examples = read_glue(task, path)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == expected
    assert [e.guid for e in examples] == [f"{path.stem}-{index}" for index in range(len(expected))]
    assert all(isinstance(e, GlueExample) for e in examples)


def test_every_task_has_a_file_test():
    assert {task for task, *_ in TASK_FILES} == set(GLUE_TASKS)


def test_labelled_flag_overrides_the_file_name(tmp_path):
    path = tmp_path / "test_with_labels.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    assert read_glue("rte", path, labelled=True)[0].label == "entailment"
    unlabelled = tmp_path / "dev_without_labels.tsv"
    unlabelled.write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    assert read_glue("rte", unlabelled, labelled=False)[0] == GlueExample("dev_without_labels-0", "a", "b", None)


def test_real_mnli_heads(shared_data):
    folder = shared_data / "glue" / "MNLI"
    files = {"dev_matched.head5.tsv": 5, "dev_mismatched.head5.tsv": 5, "train.head6.tsv": 6}
    for name, count in files.items():
        path = folder / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        examples = read_glue("mnli", path)
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
        assert len(examples) == len(rows) == count
        for example, row in zip(examples, rows):  # sentence1, sentence2, gold_label (last)
            assert (example.text_a, example.text_b, example.label) == (row[8], row[9], row[-1])
            assert example.label in GLUE_TASKS["mnli"].labels
    first = read_glue("mnli", folder / "train.head6.tsv")[0]
    assert first.text_a == "Conceptually cream skimming has two basic dimensions - product and geography."
    assert first.label == "neutral"


# ---------------------------------------------------------------------------------------------
# Bad files: one line naming the file and the line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, name, text, message", [
    ("mnli", "dev_matched.tsv",
     MNLI_DEV_HEADER + "\n" + "\t".join(["x"] * 15 + ["neutral"]) + "\n" + "\t".join(["x"] * 12) + "\n",
     "dev_matched.tsv line 3: 12 columns, expected 16 (as the header)"),
    ("cola", "dev.tsv", "gj04\t1\t\tfine.\ngj04\t1\tbroken line\n", "dev.tsv line 2: 3 columns, expected 4"),
    ("mnli", "train.tsv", MNLI_TRAIN_HEADER + "\n" + "\t".join(["x"] * 11 + ["maybe"]) + "\n",
     "train.tsv line 2: unknown label 'maybe' for mnli (allowed: contradiction, entailment, neutral)"),
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentails\n",
     "dev.tsv line 2: unknown label 'entails' for rte (allowed: entailment, not_entailment)"),
    ("sst2", "train.tsv", "sentence\tlabel\ngood\t1\nbad\t2\n", "train.tsv line 3: unknown label '2' for sst2"),
    ("stsb", "train.tsv", "\t".join(["c"] * 10) + "\n" + "\t".join(["x"] * 9 + ["high"]) + "\n",
     "train.tsv line 2: stsb score 'high' is not a number"),
    ("stsb", "dev.tsv", "\t".join(["c"] * 10) + "\n" + "\t".join(["x"] * 9 + ["nan"]) + "\n",
     "dev.tsv line 2: stsb score 'nan' is not a number"),
    ("qqp", "train.tsv", "id\tquestion1\tquestion2\n1\ta\tb\n", "train.tsv line 1: header has 3 columns"),
    ("qnli", "dev.tsv", "index\tquestion\tsentence\tlabel\n", "dev.tsv: no examples"),
    ("sst2", "dev.tsv", "sentence\tlabel\nok\t1\n" + "x" * 200_000 + "\t1\nfine\t0\n",
     "dev.tsv line 3: unreadable TSV row (field larger than field limit"),
])
def test_bad_rows(tmp_path, task, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError) as error:
        read_glue(task, path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(UserInputError, match="absent.tsv: GLUE file not found"):
        read_glue("rte", tmp_path / "absent.tsv")
    with pytest.raises(UserInputError, match="unknown GLUE task 'mnli-mm'"):
        read_glue("mnli-mm", tmp_path / "absent.tsv")
    (tmp_path / "latin1.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(UserInputError, match="not UTF-8"):
        read_glue("sst2", tmp_path / "latin1.tsv")


# ---------------------------------------------------------------------------------------------
# The task table
# ---------------------------------------------------------------------------------------------

def test_label_order_matches_hf_processors():
    assert GLUE_TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    for task in ("cola", "sst2", "mrpc", "qqp", "wnli"):
        assert GLUE_TASKS[task].labels == ("0", "1")
    for task in ("qnli", "rte"):
        assert GLUE_TASKS[task].labels == ("entailment", "not_entailment")
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert id2label("mnli") == {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert id2label("stsb") == {0: "LABEL_0"}
    config = MobileBertConfig(id2label=id2label("qnli"))
    assert config.num_labels == 2 and config.label2id == {"entailment": 0, "not_entailment": 1}


def test_metric_names_are_known():
    assert GLUE_MAIN_METRIC == {"cola": "mcc", "sst2": "accuracy", "mrpc": "accuracy_and_f1",
                                "stsb": "pearson_and_spearman", "qqp": "accuracy_and_f1", "mnli": "accuracy",
                                "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    for task in GLUE_TASKS.values():
        assert task.main_metric in task.metrics
        assert all(name in METRIC_FUNCTIONS or name in COMBINED_METRICS for name in task.metrics)
    assert GLUE_TASKS["mnli"].dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")
    assert GLUE_TASKS["sst2"].directory == "SST-2" and GLUE_TASKS["sst2"].dev_files == ("dev.tsv",)


# ---------------------------------------------------------------------------------------------
# Features: equal to BertTokenizerFast pair encoding (truncation longest_first, max_length padding)
# ---------------------------------------------------------------------------------------------

SMALL_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "man", "is", "dancing", "child",
               "riding", "horse", "hat", "hard", "with", "young", "un", "##want", "##ed", "run", "##ning",
               ",", ".", "\"", "?"]


@pytest.fixture
def small_vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return path


def hf_encode(vocab_file, examples, max_length):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizerFast(vocab=str(vocab_file))
    assert reference.vocab_size == len(vocab_file.read_text().splitlines())  # not the 5-token fallback
    rows = []
    for example in examples:  # one by one: a batch call cannot mix single sentences and pairs
        rows.append(reference(example.text_a, example.text_b, truncation=True, max_length=max_length,
                              padding="max_length"))
    return {key: np.array([row[key] for row in rows]) for key in ("input_ids", "token_type_ids", "attention_mask")}


def pair_examples():
    long_text = "the young man with a hard hat is dancing , " * 4
    return [
        GlueExample("g-0", "A man is dancing.", "A young child is riding a horse?", "entailment"),
        GlueExample("g-1", long_text, "the man", "neutral"),                 # only text_a is cut
        GlueExample("g-2", "unwanted running", long_text + "\"zebra\"", "contradiction"),  # text_b cut, [UNK]
        GlueExample("g-3", long_text, long_text + "horse", "neutral"),      # both cut, alternately
        GlueExample("g-4", "the hat", None, "entailment"),                  # single sentence
    ]


@pytest.mark.parametrize("max_length", [8, 16, 40])
def test_features_equal_hf_fast_tokenizer(small_vocab_file, max_length):
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(small_vocab_file), lowercase=True)
    examples = pair_examples()
    features = build_glue_features(examples, tokenizer, max_seq_length=max_length,
                                   label_list=GLUE_TASKS["mnli"].labels)
    expected = hf_encode(small_vocab_file, examples, max_length)
    for key, value in expected.items():
        assert features[key].dtype == np.int64 and features[key].shape == (len(examples), max_length)
        np.testing.assert_array_equal(features[key], value, err_msg=key)
    np.testing.assert_array_equal(features["labels"], [1, 2, 0, 2, 1])
    assert features["labels"].dtype == np.int64
    assert tokenizer._tokenizer.truncation is None and tokenizer._tokenizer.padding is None  # left untouched


def test_features_on_real_mnli_with_bert_vocab(shared_data, bert_vocab_file):
    from tokenizers import BertWordPieceTokenizer

    path = shared_data / "glue" / "MNLI" / "dev_matched.head5.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    examples = read_glue("mnli", path)

    class Wrapper:  # the project tokenizer exposes its tokenizers.Tokenizer as .backend
        backend = BertWordPieceTokenizer(str(bert_vocab_file), lowercase=True)._tokenizer

    features = build_glue_features(examples, Wrapper(), max_seq_length=24, label_list=GLUE_TASKS["mnli"].labels)
    expected = hf_encode(bert_vocab_file, examples, 24)
    for key, value in expected.items():
        np.testing.assert_array_equal(features[key], value, err_msg=key)
    assert (features["input_ids"][:, 0] == 101).all()


def test_regression_and_unlabelled_features(small_vocab_file):
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(small_vocab_file), lowercase=True)
    scored = [GlueExample("s-0", "a man", "a horse", 4.75), GlueExample("s-1", "the hat", "a child", 0.0)]
    features = build_glue_features(scored, tokenizer, max_seq_length=10)
    assert features["labels"].dtype == np.float32 and features["labels"].tolist() == [4.75, 0.0]
    unlabelled = [example._replace(label=None) for example in scored]
    assert "labels" not in build_glue_features(unlabelled, tokenizer, max_seq_length=10)
    with pytest.raises(ValueError, match="1 of 2 examples have no label"):
        build_glue_features([scored[0], unlabelled[1]], tokenizer, max_seq_length=10)
    with pytest.raises(ValueError, match="label 'maybe'"):
        build_glue_features([scored[0]._replace(label="maybe")], tokenizer, max_seq_length=10, label_list=("0", "1"))
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        build_glue_features(scored, object())
