"""GLUE data: the task table, readers for the TSV files as distributed, and model features.

Files are read as HuggingFace's GLUE processors read them: tab-separated with quoting off
(`csv.QUOTE_NONE`), so a quote character is ordinary text. Label lists are in the processors'
order, so label ids (and a converted model's `id2label`) agree with HF fine-tuned checkpoints.

Layouts (0-based columns; -1 = last column). Files with a header must have that many
columns on every row (MNLI: 12 in train.tsv, 16 in dev_*.tsv, 10 in test_*.tsv):

    task   train/dev: text_a  text_b  label      test: text_a  text_b
    cola   no header, 4 cols:  3   -      1            1      -      (header index,sentence)
    sst2   header:             0   -      1            1      -
    mrpc   header:             3   4      0            3      4
    stsb   header:             7   8     -1 (score)    7      8
    qqp    header:             3   4      5            1      2
    mnli   header:             8   9     -1            8      9
    qnli / rte / wnli header:  1   2     -1            1      2

A file whose name starts with "test" is read without labels unless told otherwise.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from ..core.errors import UserInputError
from ..core.files import bounded_lines


class GlueExample(NamedTuple):
    guid: str               # "<file stem>-<row index>", row index counts data rows from 0
    text_a: str
    text_b: str | None      # None for single-sentence tasks (cola, sst2)
    label: str | float | None  # label name, STS-B score, or None in test files


@dataclass(frozen=True)
class TsvLayout:
    """Where a file kind keeps its fields. `columns` is fixed only for header-less files."""

    header: bool
    text_a: int
    text_b: int | None = None
    label: int | None = None
    columns: int | None = None

    def needed_columns(self) -> int:
        indices = [index for index in (self.text_a, self.text_b, self.label) if index is not None]
        return max(index + 1 if index >= 0 else -index for index in indices)


@dataclass(frozen=True)
class GlueSpec:
    name: str
    directory: str                      # folder name in the GLUE download, e.g. "SST-2"
    labels: tuple[str, ...] | None      # None: regression (stsb)
    labelled: TsvLayout                 # train and dev files
    unlabelled: TsvLayout               # test files
    metrics: tuple[str, ...]            # names understood by metrics.glue_metrics, in report order
    main_metric: str                    # what best-checkpoint selection maximises
    train_file: str = "train.tsv"
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_files: tuple[str, ...] = ("test.tsv",)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        """For the model config: label names, or HF's default name for the one regression output."""
        return {0: "LABEL_0"} if self.labels is None else dict(enumerate(self.labels))


def _pair_task(name: str, directory: str, labels: tuple[str, ...]) -> GlueSpec:
    """qnli, rte, wnli: index, text_a, text_b, label (last); test files lack the label."""
    return GlueSpec(name, directory, labels, TsvLayout(True, 1, 2, -1), TsvLayout(True, 1, 2),
                    ("accuracy",), "accuracy")


BINARY = ("0", "1")
# Main metric: the task's GLUE benchmark score, i.e. the mean of its two metrics where it has
# two (MRPC/QQP accuracy and F1, STS-B Pearson and Spearman); every part is still reported.
GLUE_TASKS: dict[str, GlueSpec] = {
    "cola": GlueSpec("cola", "CoLA", BINARY, TsvLayout(False, 3, None, 1, columns=4), TsvLayout(True, 1),
                     ("mcc",), "mcc"),
    "sst2": GlueSpec("sst2", "SST-2", BINARY, TsvLayout(True, 0, None, 1), TsvLayout(True, 1),
                     ("accuracy",), "accuracy"),
    "mrpc": GlueSpec("mrpc", "MRPC", BINARY, TsvLayout(True, 3, 4, 0), TsvLayout(True, 3, 4),
                     ("accuracy", "f1", "accuracy_and_f1"), "accuracy_and_f1"),
    "stsb": GlueSpec("stsb", "STS-B", None, TsvLayout(True, 7, 8, -1), TsvLayout(True, 7, 8),
                     ("pearson", "spearman", "pearson_and_spearman"), "pearson_and_spearman"),
    "qqp": GlueSpec("qqp", "QQP", BINARY, TsvLayout(True, 3, 4, 5), TsvLayout(True, 1, 2),
                    ("accuracy", "f1", "accuracy_and_f1"), "accuracy_and_f1"),
    "mnli": GlueSpec("mnli", "MNLI", ("contradiction", "entailment", "neutral"),
                     TsvLayout(True, 8, 9, -1), TsvLayout(True, 8, 9), ("accuracy",), "accuracy",
                     dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
                     test_files=("test_matched.tsv", "test_mismatched.tsv")),
    "qnli": _pair_task("qnli", "QNLI", ("entailment", "not_entailment")),
    "rte": _pair_task("rte", "RTE", ("entailment", "not_entailment")),
    "wnli": _pair_task("wnli", "WNLI", BINARY),
}
GLUE_MAIN_METRIC: dict[str, str] = {name: task.main_metric for name, task in GLUE_TASKS.items()}


def get_glue_task(task: str | GlueSpec) -> GlueSpec:
    if isinstance(task, GlueSpec):
        return task
    if task not in GLUE_TASKS:
        raise UserInputError(f"unknown GLUE task {task!r} (known: {', '.join(GLUE_TASKS)})")
    return GLUE_TASKS[task]


def id2label(task: str | GlueSpec) -> dict[int, str]:
    return get_glue_task(task).id2label


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) for every non-blank line; quoting is off."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(bounded_lines(handle, path), delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                for row in reader:
                    if row:
                        yield reader.line_num, row
            except csv.Error as error:
                raise UserInputError(f"{path} line {reader.line_num}: unreadable TSV row ({error})") from None
            except UnicodeDecodeError as error:
                raise UserInputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except FileNotFoundError:
        raise UserInputError(f"{path}: GLUE file not found") from None
    except IsADirectoryError:
        raise UserInputError(f"{path}: expected a GLUE TSV file, found a directory") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the GLUE file ({error.strerror or error})") from None


def _parse_label(task: GlueSpec, value: str, where: str) -> str | float:
    if task.labels is not None:
        if value not in task.labels:
            raise UserInputError(f"{where}: unknown label {value!r} for {task.name} "
                                 f"(allowed: {', '.join(task.labels)})")
        return value
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise UserInputError(f"{where}: {task.name} score {value!r} is not a number")
    return score


def read_glue(task: str | GlueSpec, path: str | Path, labelled: bool | None = None) -> list[GlueExample]:
    """Examples of one GLUE TSV file, in file order.

    labelled: whether the file has labels; None -> all but files named test*. Bad input
    (missing file, wrong column count, unknown label, non-numeric score) -> UserInputError
    naming the file and line.
    """
    task, path = get_glue_task(task), Path(path)
    if labelled is None:
        labelled = not path.name.startswith("test")
    layout = task.labelled if labelled else task.unlabelled
    expected_columns = layout.columns
    examples: list[GlueExample] = []
    for line_number, row in _tsv_rows(path):
        where = f"{path} line {line_number}"
        if layout.header and expected_columns is None:  # the header fixes the column count
            expected_columns = len(row)
            if expected_columns < layout.needed_columns():
                raise UserInputError(f"{where}: header has {expected_columns} columns, a {task.name} "
                                     f"{'labelled' if labelled else 'test'} file needs {layout.needed_columns()}")
            continue
        if len(row) != expected_columns:
            raise UserInputError(f"{where}: {len(row)} columns, expected {expected_columns}"
                                 f"{' (as the header)' if layout.header else ''}")
        label = _parse_label(task, row[layout.label], where) if layout.label is not None else None
        text_b = row[layout.text_b] if layout.text_b is not None else None
        examples.append(GlueExample(f"{path.stem}-{len(examples)}", row[layout.text_a], text_b, label))
    if not examples:
        raise UserInputError(f"{path}: no examples")
    return examples


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------

def _fast_tokenizer(tokenizer: Any):
    """The `tokenizers.Tokenizer` behind `tokenizer` (itself, `.backend`, or HF's `.backend_tokenizer`)."""
    from tokenizers import Tokenizer

    for candidate in (tokenizer, getattr(tokenizer, "backend", None), getattr(tokenizer, "backend_tokenizer", None),
                      getattr(tokenizer, "_tokenizer", None)):
        if isinstance(candidate, Tokenizer):
            return candidate
    raise TypeError(f"expected a tokenizers.Tokenizer or an object with .backend, got {type(tokenizer).__name__}")


def build_glue_features(examples: Sequence[GlueExample], tokenizer: Any, max_seq_length: int = 128,
                        label_list: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Encode (text_a[, text_b]) with [CLS]/[SEP], truncate 'longest_first', pad to max_seq_length.

    Returns int64 arrays input_ids, token_type_ids, attention_mask of shape (N, max_seq_length)
    and, when the examples have labels, `labels` (N,): ids into label_list (int64), or the
    scores as float32 when label_list is None (regression). The tokenizer is copied, so its
    own truncation / padding settings are left untouched.
    """
    from tokenizers import Tokenizer

    backend = _fast_tokenizer(tokenizer)
    encoder = Tokenizer.from_str(backend.to_str())
    encoder.no_padding()
    encoder.enable_truncation(max_seq_length, strategy="longest_first")
    pad_id = backend.padding["pad_id"] if backend.padding else backend.token_to_id("[PAD]")
    if pad_id is None:
        raise ValueError("the tokenizer has no padding id and no [PAD] token")
    inputs = [example.text_a if example.text_b is None else (example.text_a, example.text_b) for example in examples]
    encodings = encoder.encode_batch(inputs)

    features = {name: np.zeros((len(examples), max_seq_length), dtype=np.int64)
                for name in ("input_ids", "token_type_ids", "attention_mask")}
    features["input_ids"][:] = pad_id
    for row, encoding in enumerate(encodings):
        length = len(encoding.ids)
        features["input_ids"][row, :length] = encoding.ids
        features["token_type_ids"][row, :length] = encoding.type_ids
        features["attention_mask"][row, :length] = 1
    labels = _label_array(examples, label_list)
    if labels is not None:
        features["labels"] = labels
    return features


def _label_array(examples: Sequence[GlueExample], label_list: Sequence[str] | None) -> np.ndarray | None:
    missing = sum(example.label is None for example in examples)
    if missing == len(examples):
        return None
    if missing:
        raise ValueError(f"{missing} of {len(examples)} examples have no label")
    if label_list is None:
        return np.array([float(example.label) for example in examples], dtype=np.float32)
    label_ids = {label: index for index, label in enumerate(label_list)}
    unknown = next((example for example in examples if example.label not in label_ids), None)
    if unknown is not None:
        raise ValueError(f"{unknown.guid}: label {unknown.label!r} is not in {list(label_list)}")
    return np.array([label_ids[example.label] for example in examples], dtype=np.int64)
