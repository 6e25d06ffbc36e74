"""LiteRT export (`--format litert`) and backend (`--backend litert`), on tiny models.

The .tflite must equal the eager Paddle model (relative error <= 1e-5 in float32) at every
signature length, on full rows and padded ones; its signatures take int32 inputs by name and
give named outputs; the QA and classification files carry the task metadata the on-device APIs
read (MediaPipe's TextClassifier is run here; the TFLite Task Library's BertQuestionAnswerer
when MOBILEBERT_TFLITE_SUPPORT_PYTHON names a Python with tflite-support, else its metadata
fields are checked). Conversion needs the `litert` extra; those tests skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from reference import make_hf_model, padded_batch, relative_error, save_hf
from tiny_tasks import make_tiny_model_dir, make_tokenizer, run_cli

from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.inference import litert
from mobilebert_paddle.inference.export import export_model
from mobilebert_paddle.inference.load import load_predictor
from mobilebert_paddle.inference.predictors import LiteRtPredictor, softmax_rows
from mobilebert_paddle.model.convert import convert

QA = "MobileBertForQuestionAnswering"
CLASSIFICATION = "MobileBertForSequenceClassification"
TOLERANCE = 1e-5
HAS_CONVERTER = all(importlib.util.find_spec(name) for name in ("litert_torch", "ai_edge_quantizer", "mediapipe"))
needs_converter = pytest.mark.skipif(not HAS_CONVERTER, reason="the litert extra is not installed")
TFLITE_SUPPORT_PYTHON = os.environ.get("MOBILEBERT_TFLITE_SUPPORT_PYTHON")
LENGTHS = [32, 48]


def paddle_model_dir(root: Path, head: str, vocab: list | None = None, **config) -> Path:
    hf_dir = save_hf(make_hf_model(head, **config), root / "hf", vocab)
    convert(hf_dir, root / "paddle")
    return root / "paddle"


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    return paddle_model_dir(tmp_path_factory.mktemp("qa"), QA)


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory, qa_dir) -> tuple[Path, dict]:
    """The QA model exported with two signatures (one conversion, shared by the tests)."""
    if not HAS_CONVERTER:
        pytest.skip("the litert extra is not installed")
    output = tmp_path_factory.mktemp("qa-litert") / "export"
    return output, export_model(qa_dir, output, "litert", seq_lengths=LENGTHS)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A 3-label classifier with the tiny tasks' word vocabulary (so on-device tokenizers see words)."""
    from mobilebert_paddle.model.network import MobileBertForSequenceClassification

    root = tmp_path_factory.mktemp("classifier")
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    model = MobileBertForSequenceClassification.from_pretrained(make_tiny_model_dir(root / "base", seed=3),
                                                                id2label=labels)
    model.save_pretrained(root / "model", tokenizer=make_tokenizer())
    return root / "model"


def eager_outputs(model_dir: Path, batch: dict) -> tuple:
    return load_predictor(model_dir, "eager")(batch)


def one_row_batches(vocab_size: int, length: int, seed: int = 0) -> list:
    """Rows of exactly `length`: one full, one with padding."""
    full = padded_batch(vocab_size, lengths=(length,), seed=seed)
    padded = padded_batch(vocab_size, lengths=(length, length // 2), seed=seed + 1)
    return [full, {name: value[1:] for name, value in padded.items()}]


# ----------------------------------------------------------------------------------------
# The file equals eager
# ----------------------------------------------------------------------------------------

@needs_converter
def test_every_signature_equals_eager_full_and_padded(qa_export, qa_dir):
    """Each signature, run straight in ai-edge-litert's interpreter with int32 inputs by name,
    gives eager's outputs (relative error <= 1e-5) on a full row and on a padded row."""
    from ai_edge_litert.interpreter import Interpreter

    output, summary = qa_export
    assert summary["signatures"] == {"seq_32": 32, "seq_48": 48}
    assert summary["file_outputs"] == ["start_logits", "end_logits"] and summary["quantization"] is None
    assert max(value for errors in summary["probe"]["relative_error"].values() for value in errors.values()) <= TOLERANCE
    assert {"model.tflite", "vocab.txt", "config.json", "export.json"} <= {path.name for path in output.iterdir()}
    interpreter = Interpreter(model_path=str(output / "model.tflite"))
    signatures = interpreter.get_signature_list()
    assert set(signatures) == {"seq_32", "seq_48"}
    vocab_size = json.loads((qa_dir / "config.json").read_text())["vocab_size"]
    for length in LENGTHS:
        runner = interpreter.get_signature_runner(f"seq_{length}")
        inputs = runner.get_input_details()
        assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"}
        assert all(detail["dtype"] == np.int32 and list(detail["shape"]) == [1, length] for detail in inputs.values())
        assert set(runner.get_output_details()) == {"start_logits", "end_logits"}
        for batch in one_row_batches(vocab_size, length, seed=length):
            expected = eager_outputs(qa_dir, batch)
            result = runner(**{name: value.astype(np.int32) for name, value in batch.items()})
            for name, want in zip(("start_logits", "end_logits"), expected):
                assert relative_error(result[name], want) <= TOLERANCE, (length, name)


@needs_converter
def test_predictor_pads_to_the_nearest_signature_and_refuses_longer_rows(qa_export, qa_dir):
    """--backend litert: a batch of rows up to 48 tokens runs on the nearest signature, padded as
    the eager model is given it; a row longer than the longest signature is one clear error."""
    output, _ = qa_export
    predictor = load_predictor(output, "litert")
    assert isinstance(predictor, LiteRtPredictor) and predictor.lengths == LENGTHS
    vocab_size = predictor.config.vocab_size
    for width, lengths in ((20, (20, 9, 14)), (40, (40, 33))):
        batch = padded_batch(vocab_size, lengths=lengths, seed=width)
        padded = {name: np.pad(value, ((0, 0), (0, predictor.signature_length(width) - width)))
                  for name, value in batch.items()}
        actual, expected = predictor(batch), eager_outputs(qa_dir, padded)
        for got, want in zip(actual, expected):
            assert got.shape == (len(lengths), width)
            assert relative_error(got, want[:, :width]) <= TOLERANCE
    with pytest.raises(UserInputError, match="a row of 49 tokens is longer than the LiteRT export's longest "
                                             "signature \\(48\\)"):
        predictor(padded_batch(vocab_size, lengths=(49,)))


@needs_converter
def test_classifier_ends_in_softmax_and_runs_in_mediapipe_as_predict(tmp_path, classifier_dir, capsys):
    """The classification file outputs probabilities and carries the BERT tokenizer and label
    metadata: MediaPipe's TextClassifier, given only the file, gives `mobilebert predict`'s label
    probabilities (relative 1e-4), and so does `predict --backend litert`."""
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.text import text_classifier

    code, summary, err = run_cli(capsys, ["export", "--model", classifier_dir, "--format", "litert",
                                          "--output", tmp_path / "litert"])
    assert code == 0, err
    assert summary["signatures"] == {"seq_64": 64}        # min(128, max_position_embeddings)
    assert summary["file_outputs"] == ["probabilities"] and summary["outputs"] == ["logits"]
    assert summary["on_device"] == {"mediapipe_TextClassifier": "yes"}
    assert summary["probe"]["relative_error"]["seq_64"]["probabilities"] <= TOLERANCE
    text = "the red w3 is a w7 ? w12 follows m2"
    code, eager, err = run_cli(capsys, ["predict", "--model", classifier_dir, "--text", text, "--top-k", 3,
                                        "--max-seq-length", 64])
    assert code == 0, err
    expected = {item["label"]: item["probability"] for item in eager["labels"]}
    options = text_classifier.TextClassifierOptions(base_options=BaseOptions(
        model_asset_path=str(tmp_path / "litert" / "model.tflite")))
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        categories = classifier.classify(text).classifications[0].categories
    got = {category.category_name: category.score for category in categories}
    assert got.keys() == expected.keys()
    assert max(abs(got[label] - expected[label]) / expected[label] for label in expected) <= 1e-4
    code, on_litert, err = run_cli(capsys, ["predict", "--model", tmp_path / "litert", "--backend", "litert",
                                            "--text", text, "--top-k", 3, "--max-seq-length", 64])
    assert code == 0, err
    assert [item["label"] for item in on_litert["labels"]] == [item["label"] for item in eager["labels"]]
    assert max(abs(a["probability"] - b["probability"]) / b["probability"]
               for a, b in zip(on_litert["labels"], eager["labels"])) <= 1e-4


@needs_converter
def test_classifier_predictor_gives_logits_of_the_same_distribution(tmp_path, classifier_dir):
    export_model(classifier_dir, tmp_path / "litert", "litert", seq_lengths=[24])
    predictor = load_predictor(tmp_path / "litert", "litert")
    batch = padded_batch(predictor.config.vocab_size, lengths=(24, 10, 17))
    padded_eager = eager_outputs(classifier_dir, batch)[0]
    (logits,) = predictor(batch)
    assert logits.shape == padded_eager.shape
    assert relative_error(softmax_rows(logits), softmax_rows(padded_eager)) <= TOLERANCE


# ----------------------------------------------------------------------------------------
# QA metadata for the TFLite Task Library
# ----------------------------------------------------------------------------------------

PLANTED = (100, 103)    # window positions of the planted answer's first and last token


@pytest.fixture(scope="module")
def qa_384(tmp_path_factory) -> tuple[Path, Path]:
    """A QA model with the tiny tasks' words, exported at 384 (BertQuestionAnswerer's length).
    A random model's best start and end logits tend to fall on padding, where the Task Library
    (which searches only the top 5 of each) then finds no answer; this one has one planted."""
    if not HAS_CONVERTER:
        pytest.skip("the litert extra is not installed")
    import torch
    from tiny_tasks import VOCAB

    root = tmp_path_factory.mktemp("qa384")
    model = make_hf_model(QA, vocab_size=len(VOCAB), max_position_embeddings=384)
    with torch.no_grad():   # a planted answer: the QA head reads a channel that positions 100 / 103 light up
        model.mobilebert.embeddings.position_embeddings.weight[PLANTED[0], 0] += 20.0
        model.mobilebert.embeddings.position_embeddings.weight[PLANTED[1], 1] += 20.0
        model.qa_outputs.weight[0, 0] += 1.0
        model.qa_outputs.weight[1, 1] += 1.0
    convert(save_hf(model, root / "hf", VOCAB), root / "paddle")
    export_model(root / "paddle", root / "litert", "litert")
    return root / "paddle", root / "litert"


@needs_converter
def test_qa_metadata_names_the_tensors_the_task_library_looks_up(qa_384):
    """BertQuestionAnswerer finds its tensors by metadata name (ids, mask, segment_ids,
    start_logits, end_logits) and its tokenizer in the input process units; the vocabulary is
    packed into the file."""
    from ai_edge_litert import schema_py_generated as schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_schema

    _, output = qa_384
    manifest = json.loads((output / "export.json").read_text())
    assert manifest["signatures"] == {"seq_384": 384}
    assert manifest["on_device"] == {"tflite_task_library_BertQuestionAnswerer": "yes"}
    content = (output / "model.tflite").read_bytes()
    model = schema.Model.GetRootAsModel(content, 0)
    subgraph, signature = model.Subgraphs(0), model.SignatureDefs(0)
    tensor_of = {}                                  # signature name -> subgraph tensor index
    for index in range(signature.InputsLength()):
        tensor_of[signature.Inputs(index).Name().decode()] = signature.Inputs(index).TensorIndex()
    for index in range(signature.OutputsLength()):
        tensor_of[signature.Outputs(index).Name().decode()] = signature.Outputs(index).TensorIndex()
    entry = next(model.Metadata(index) for index in range(model.MetadataLength())
                 if model.Metadata(index).Name() == b"TFLITE_METADATA")
    buffer = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    metadata = metadata_schema.ModelMetadataT.InitFromObj(metadata_schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    assert metadata.minParserVersion.decode() == litert.METADATA_PARSER_VERSION
    (graph,) = metadata.subgraphMetadata
    ours = {"ids": "input_ids", "mask": "attention_mask", "segment_ids": "token_type_ids",
            "start_logits": "start_logits", "end_logits": "end_logits"}
    inputs = [subgraph.Inputs(index) for index in range(subgraph.InputsLength())]
    outputs = [subgraph.Outputs(index) for index in range(subgraph.OutputsLength())]
    for tensors, entries in ((inputs, graph.inputTensorMetadata), (outputs, graph.outputTensorMetadata)):
        assert len(entries) == len(tensors)
        for tensor, item in zip(tensors, entries):    # metadata is matched to tensors by position
            assert tensor == tensor_of[ours[item.name.decode()]], item.name
    (unit,) = graph.inputProcessUnits
    assert unit.optionsType == metadata_schema.ProcessUnitOptions.BertTokenizerOptions
    assert [file.name.decode() for file in unit.options.vocabFile] == ["vocab.txt"]
    with zipfile.ZipFile(output / "model.tflite") as packed:
        assert packed.read("vocab.txt") == (output / "vocab.txt").read_bytes()
    assert list(subgraph.Tensors(inputs[0]).ShapeAsNumpy()) == [1, 384]


@needs_converter
@pytest.mark.skipif(not TFLITE_SUPPORT_PYTHON, reason="MOBILEBERT_TFLITE_SUPPORT_PYTHON (a Python with "
                                                      "tflite-support, which needs protobuf<4) is not set")
def test_task_library_bert_question_answerer_reads_the_file(qa_384):
    """tflite-support's BertQuestionAnswerer, given only the file, tokenizes with the packed
    vocabulary and reads the right tensors: each answer's score is start_logits[start] +
    end_logits[end] of the eager model on the same window, and its text the context words at
    those positions. Its compiled metadata-version helper agrees with our stand-in."""
    from tiny_tasks import FILLERS, MARKERS, VOCAB

    model_dir, output = qa_384
    words = [(FILLERS + MARKERS)[(7 * index) % len(FILLERS + MARKERS)] for index in range(300)]
    context, question = " ".join(words), "what follows m3 ?"
    script = (
        "import json, sys\n"
        "from tflite_support.task import text\n"
        "from tensorflow_lite_support.metadata import schema_py_generated as schema\n"
        "from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version as version\n"
        "path, context, question = sys.argv[1:4]\n"
        "answers = text.BertQuestionAnswerer.create_from_file(path).answer(context, question).answers\n"
        "model = schema.Model.GetRootAsModel(open(path, 'rb').read(), 0)\n"
        "entry = [model.Metadata(i) for i in range(model.MetadataLength())\n"
        "         if model.Metadata(i).Name() == b'TFLITE_METADATA'][0]\n"
        "buffer = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()\n"
        "print(json.dumps({'answers': [[a.text, a.pos.start, a.pos.end, a.pos.logit] for a in answers],\n"
        "                  'parser_version': version.GetMinimumMetadataParserVersion(buffer)}))\n")
    result = subprocess.run([TFLITE_SUPPORT_PYTHON, "-c", script, str(output / "model.tflite"), context, question],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    task_library = json.loads(result.stdout.strip().splitlines()[-1])
    assert task_library["parser_version"] == litert.METADATA_PARSER_VERSION
    assert task_library["answers"] and task_library["answers"][0][1:3] == list(PLANTED)
    # The window it builds: [CLS] question [SEP] context [SEP], zero padding (every word is one token).
    tokens = ["[CLS]", *question.split(), "[SEP]", *words, "[SEP]"]
    ids = np.zeros((1, 384), dtype=np.int64)
    ids[0, :len(tokens)] = [VOCAB.index(token) for token in tokens]
    types = np.zeros_like(ids)
    types[0, len(question.split()) + 2:len(tokens)] = 1
    mask = (ids != 0).astype(np.int64)
    start_logits, end_logits = eager_outputs(model_dir, {"input_ids": ids, "token_type_ids": types,
                                                         "attention_mask": mask})
    offset = len(question.split()) + 2                # the first context token's position
    for text, start, end, score in task_library["answers"]:
        assert abs(score - (start_logits[0, start] + end_logits[0, end])) <= 1e-4 * max(1.0, abs(score))
        assert text == " ".join(words[start - offset:end - offset + 1])


# ----------------------------------------------------------------------------------------
# int8, other heads, bench
# ----------------------------------------------------------------------------------------

@needs_converter
def test_int8_export_has_int8_weights_and_stays_close(tmp_path, qa_dir, qa_export):
    from ai_edge_litert import schema_py_generated as schema

    summary = export_model(qa_dir, tmp_path / "int8", "litert", quantize="int8", seq_lengths=LENGTHS)
    assert summary["quantization"] == "int8"
    errors = [value for per_signature in summary["probe"]["relative_error"].values() for value in per_signature.values()]
    assert 0 < max(errors) < 0.1                    # int8: not exact, near (measured ~1e-2)
    model = schema.Model.GetRootAsModel((tmp_path / "int8" / "model.tflite").read_bytes(), 0)
    subgraph = model.Subgraphs(0)
    types = {subgraph.Tensors(index).Type() for index in range(subgraph.TensorsLength())}
    assert schema.TensorType.INT8 in types
    assert (tmp_path / "int8" / "model.tflite").stat().st_size < (qa_export[0] / "model.tflite").stat().st_size


@needs_converter
@pytest.mark.slow
@pytest.mark.parametrize("head", ["MobileBertModel", "MobileBertForTokenClassification"])
def test_other_heads_convert_and_equal_eager(tmp_path, head):
    model_dir = paddle_model_dir(tmp_path, head)
    summary = export_model(model_dir, tmp_path / "litert", "litert", seq_lengths=[16])
    assert summary["metadata"].startswith("none")
    assert max(summary["probe"]["relative_error"]["seq_16"].values()) <= TOLERANCE
    predictor = load_predictor(tmp_path / "litert", "litert")
    batch = padded_batch(predictor.config.vocab_size, lengths=(16, 9))
    for got, want in zip(predictor(batch), eager_outputs(model_dir, batch)):
        assert relative_error(got, want) <= TOLERANCE


@needs_converter
@pytest.mark.slow
def test_bench_times_litert_beside_the_other_backends_with_file_sizes(tmp_path, qa_dir, capsys):
    code, report, err = run_cli(capsys, ["bench", "--model", qa_dir, "--backends", "torch,onnx,litert",
                                         "--batch", "1,2", "--seq", "16", "--runs", 1, "--warmup", 0, "--pause", 0,
                                         "--output", tmp_path / "bench"])
    assert code == 0, err
    assert set(report["shapes"]["2x16"]["backends"]) == {"torch", "onnx", "litert"}
    assert report["output_check"]["errors"]["litert"] <= TOLERANCE
    assert report["file_mb"]["litert"] > 0 and report["file_mb"]["onnx"] > 0 and "torch" not in report["file_mb"]
    assert "file MB" in err


# ----------------------------------------------------------------------------------------
# One line, exit 2
# ----------------------------------------------------------------------------------------

def hide_modules(monkeypatch, *names):
    """Make `names` look uninstalled: find_spec says so and importing them fails."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.split(".")[0] in names else real_find_spec(name, *args))
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            monkeypatch.setitem(sys.modules, name, None)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_the_extra_each_command_names_it(tmp_path, qa_dir, capsys, monkeypatch):
    hide_modules(monkeypatch, "litert_torch", "ai_edge_quantizer", "ai_edge_litert", "mediapipe")
    extra = "pip install 'mobilebert-paddle[litert]'"
    cases = [
        (["export", "--model", qa_dir, "--format", "litert", "--output", tmp_path / "out"],
         "--format litert needs litert-torch, ai-edge-quantizer, ai-edge-litert, mediapipe, which are not installed"),
        (["predict", "--model", qa_dir, "--backend", "litert", "--question", "q", "--context", "c"],
         "the litert backend needs ai-edge-litert, which is not installed"),
        (["bench", "--model", qa_dir, "--backends", "litert", "--output", tmp_path / "bench"],
         "bench --backends litert needs litert-torch"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and expected in err and extra in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@needs_converter      # without it, the missing extra is the one line
def test_models_transformers_cannot_build_are_refused_in_one_line(tmp_path, capsys):
    """IB-BERT's layout (queries and keys read the H-wide input) has no HF twin to convert."""
    model_dir = make_tiny_model_dir(tmp_path / "ib", use_bottleneck_attention=False, key_query_shared_bottleneck=False)
    code, _, err = run_cli(capsys, ["export", "--model", model_dir, "--format", "litert", "--output", tmp_path / "out"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--format litert converts through transformers' MobileBERT" in err and "IB-BERT" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--seq-lengths", "65"], "--seq-lengths 65 exceeds the model's max_position_embeddings (64)"),
    (["--seq-lengths", "32,32"], "a length is repeated"),
    (["--fuse"], "--fuse does not apply to --format litert"),
    (["--quantize", "int8-static", "--calibration-data", "{dev}"], "--quantize int8-static needs --format openvino"),
])
def test_bad_litert_options_are_one_line(tmp_path, qa_dir, capsys, flags, expected):
    if not HAS_CONVERTER and "--seq-lengths" in flags:
        pytest.skip("the extra is checked before the model is read")
    dev = tmp_path / "dev.json"
    dev.write_text("{}")
    argv = ["export", "--model", qa_dir, "--format", "litert", "--output", tmp_path / "out",
            *[flag.replace("{dev}", str(dev)) for flag in flags]]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_seq_lengths_need_the_litert_format(tmp_path, qa_dir, capsys):
    code, _, err = run_cli(capsys, ["export", "--model", qa_dir, "--format", "onnx", "--seq-lengths", "32",
                                    "--output", tmp_path / "out"])
    assert code == 2 and "--seq-lengths is only read by --format litert" in err


@needs_converter
def test_a_conversion_failure_is_one_line(tmp_path, qa_dir, capsys, monkeypatch):
    """An op litert-torch cannot lower ends the export in one line, nothing written."""
    import litert_torch

    def cannot_lower(self, *args, **kwargs):
        raise RuntimeError("failed to legalize operation 'aten.some_new_op'\nnote: see current operation: ...")

    monkeypatch.setattr(litert_torch.Converter, "convert", cannot_lower)
    code, _, err = run_cli(capsys, ["export", "--model", qa_dir, "--format", "litert", "--output", tmp_path / "out"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "litert-torch could not convert the model: RuntimeError: failed to legalize operation 'aten.some_new_op'" in err
    assert not (tmp_path / "out").exists()


def test_short_tensor_names_keep_the_attribute_path():
    name = ("__main__.LiteRtSignature/transformers.models.mobilebert.modeling_mobilebert.MobileBertModel_mobilebert/"
            "torch.nn.modules.linear.Linear_qa_outputs;1")
    assert litert.short_tensor_name(name) == "LiteRtSignature/mobilebert/qa_outputs;1"
