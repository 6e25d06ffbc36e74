"""Tiny MobileBERT model dirs and small learnable synthetic tasks, written by the tests.

Synthetic QA ("marker" task): a context of filler words holds a few marker words, each
followed by one answer word; the question names one marker ("what follows m2 ?") and the
answer is the word right after it. A model must match the marker named in the question to
the one in the context (the trigram embedding hands each token its left neighbour), so it
is real question answering in miniature, and a 2-layer model learns it in a few hundred steps.

Synthetic pair classification (RTE layout): sentence 1 says "the wN is red|blue", sentence 2
"a wM is red|blue"; the label is entailment when both say red (about half the pairs), so the
[CLS] vector must gather a word from each segment.

A from-scratch tiny model needs `initializer_range` 0.2: with HF's 0.02 the attention output
is ~1e-6 of the residual at [CLS] and sentence-level training sits on a plateau for hundreds
of steps (a pretrained model does not have that problem).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLERS = [f"w{index}" for index in range(40)]
MARKERS = [f"m{index}" for index in range(6)]
COLOURS = ["red", "blue"]
WORDS = FILLERS + MARKERS + COLOURS + ["what", "follows", "?", "the", "a", "is"]
VOCAB = SPECIALS + WORDS

TINY_CONFIG = dict(hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                   num_feedforward_networks=1, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
                   initializer_range=0.2)


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tokenizer():
    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    return MobileBertTokenizer({token: index for index, token in enumerate(VOCAB)})


def make_tiny_model_dir(directory: Path, seed: int = 0, **config_changes) -> Path:
    """A randomly initialised base MobileBERT (no head) with its tokenizer, as `convert` would write it."""
    import paddle

    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.network import MobileBertModel

    paddle.seed(seed)
    config = MobileBertConfig(vocab_size=len(VOCAB), **{**TINY_CONFIG, **config_changes})
    MobileBertModel(config).save_pretrained(directory, tokenizer=make_tokenizer())
    return Path(directory)


def marker_paragraph(rng: random.Random, question_id: str, markers: int = 2, length: int = 14,
                     unanswerable: bool = False) -> dict:
    words = [rng.choice(FILLERS) for _ in range(length)]
    chosen = rng.sample(MARKERS, markers + (1 if unanswerable else 0))
    slots = sorted(rng.sample(range(0, length - 1, 2), markers))   # even slots: marker, answer never overlap
    for marker, slot in zip(chosen, slots):
        words[slot] = marker
    asked = chosen[-1] if unanswerable else rng.choice(chosen)     # unanswerable: that marker is absent
    context = " ".join(words)
    qa = {"id": question_id, "question": f"what follows {asked} ?", "answers": []}
    if unanswerable:
        qa["is_impossible"] = True
    else:
        position = words.index(asked) + 1
        start = len(" ".join(words[:position])) + 1
        qa["answers"] = [{"text": words[position], "answer_start": start}]
        assert context[start:start + len(words[position])] == words[position]
    return {"context": context, "qas": [qa]}


def write_marker_squad(path: Path, count: int, seed: int, unanswerable_share: float = 0.0, **options) -> Path:
    rng = random.Random(seed)
    paragraphs = [marker_paragraph(rng, f"q{seed}-{index}", unanswerable=rng.random() < unanswerable_share, **options)
                  for index in range(count)]
    Path(path).write_text(json.dumps({"version": "synthetic", "data": [{"title": "markers", "paragraphs": paragraphs}]}),
                          encoding="utf-8")
    return Path(path)


def write_colour_pairs(path: Path, count: int, seed: int) -> Path:
    """RTE-format TSV: index, sentence1, sentence2, label (entailment / not_entailment)."""
    rng = random.Random(seed)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for index in range(count):
        first, second = (("red" if rng.random() < 0.7 else "blue") for _ in range(2))   # P(both red) ~ 0.49
        label = "entailment" if first == second == "red" else "not_entailment"
        lines.append(f"{index}\tthe {rng.choice(FILLERS)} is {first}\ta {rng.choice(FILLERS)} is {second}\t{label}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def model_weights(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def max_relative_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                            skip: tuple[str, ...] = ()) -> float:
    """max |a - b| / max |b| over all weights (keys ending with a `skip` suffix left out)."""
    assert first.keys() == second.keys()
    keys = [key for key in first if not key.endswith(skip)] if skip else list(first)
    difference = max(float(np.abs(first[key] - second[key]).max()) for key in keys)
    return difference / max(float(np.abs(second[key]).max()) for key in keys)


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")


def write_mnli_dev(path: Path, count: int, seed: int) -> Path:
    """An MNLI dev file in the distributed 16-column layout (gold_label last)."""
    rng = random.Random(seed)
    lines = [MNLI_HEADER]
    for index in range(count):
        label = rng.choice(["contradiction", "entailment", "neutral"])
        first, second = f"the {rng.choice(FILLERS)} is red", f"a {rng.choice(FILLERS)} is blue"
        lines.append("\t".join([str(index), "1", f"{index}e", "synthetic", "( )", "( )", "(ROOT)", "(ROOT)",
                                first, second, label, label, "", "", "", label]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def run_cli(capsys, argv: list[str]) -> tuple[int, dict | None, str]:
    """`mobilebert ARGV` in this process: (exit code, JSON summary or None, stderr)."""
    from mobilebert_paddle.cli import main

    capsys.readouterr()
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:     # argparse refused a flag (or --help)
        code = exit_.code
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if code == 0 and captured.out.strip() else None
    return code, summary, captured.err


def subprocess_env() -> dict:
    """Environment for CLI subprocesses: one thread each, so reruns compute bit-identically."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def snapshot(root: Path) -> dict:
    """{relative path: sha256, 'dir' or the link target} of everything under root (hidden entries too)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries
