"""Does distillation pay at tiny scale? A teacher pretrained on the SQuAD v1.1 dev contexts
(Wikipedia paragraphs), then the same tiny MobileBERT student made three ways with the same
number of student steps:

  distilled (google)   --transfer-steps S/2 (one phase per layer) + --distill-steps S/2
  distilled (freeze)   the same with --layer-schedule freeze
  scratch              `pretrain` for S steps (no teacher)

Each is scored on held-out articles (masked-LM accuracy, fixed masks) and fine-tuned on SQuAD
with the same short `finetune squad1` (questions of the training articles; dev = the held-out
articles' questions). Every step goes through the CLI, in this process.

    python benchmarks/distillation.py --output runs/bench-distill      # ~30-60 min on 2 busy CPU cores

The corpus and tiny configs are tests/test_pretraining.py's. The vocabulary is BERT's uncased
30,522 pieces (`--vocabulary bert`, the default: the MLM head and the stage-2 loss at their real
width) or the tests' 1,892-piece one made from the corpus (`--vocabulary corpus`: specials,
characters, the 1500 most frequent words). Optimisation flags not set below are the commands'
defaults (Google's gradient clipping at 1.0 for pretrain and distill).
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))          # the tests' corpus builder and tiny configs

from test_pretraining import HELD_OUT_FROM_ARTICLE, TINY, corpus_text, write_vocab  # noqa: E402

from mobilebert_paddle.cli import main  # noqa: E402

# IB-BERT's layout, tiny (as tests/test_distillation.py): queries, keys, values read the block input.
TEACHER = dict(TINY, intra_bottleneck_size=128, intermediate_size=256, num_feedforward_networks=1,
               use_bottleneck_attention=False, key_query_shared_bottleneck=False,
               normalization_type="layer_norm", hidden_act="gelu")


def command(*argv) -> None:
    code = main([str(arg) for arg in argv])
    if code != 0:
        raise SystemExit(f"mobilebert {argv[0]} failed ({code})")


def bert_tokenizer(directory: Path) -> Path:
    """BERT's uncased vocabulary (tests/data's fixture) as a tokenizer directory."""
    from mobilebert_paddle.model.tokenizer import MobileBertTokenizer

    if not (directory / "vocab.txt").is_file():
        packed = REPO / "tests" / "data" / "bert-base-uncased-vocab.txt.xz"
        tokens = lzma.decompress(packed.read_bytes()).decode("utf-8").splitlines()
        MobileBertTokenizer({token: index for index, token in enumerate(tokens)}).save_pretrained(directory)
    return directory


def prepare(root: Path, squad_file: Path, vocabulary: str = "bert") -> dict:
    """Corpus, vocabulary, train/held-out DATA_DIRs, SQuAD train/dev files, configs."""
    squad = json.loads(squad_file.read_text(encoding="utf-8"))
    articles = squad["data"]
    root.mkdir(parents=True, exist_ok=True)
    texts = {"train": corpus_text(articles[:HELD_OUT_FROM_ARTICLE]), "heldout": corpus_text(articles[HELD_OUT_FROM_ARTICLE:])}
    tokenizer = (bert_tokenizer(root / "tokenizer") if vocabulary == "bert"
                 else write_vocab(texts["train"], root / "tokenizer"))
    paths = {"tokenizer": tokenizer}
    for name, text in texts.items():
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
        if not (root / name).is_dir():
            command("pretrain-data", root / f"{name}.txt", "--tokenizer", tokenizer, "--output", root / name,
                    "--max-seq-length", 64, "--seed", 1)
        paths[name] = root / name
    for name, part in (("squad_train", articles[:HELD_OUT_FROM_ARTICLE]), ("squad_dev", articles[HELD_OUT_FROM_ARTICLE:])):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps({"version": squad.get("version", "1.1"), "data": part}), encoding="utf-8")
    vocab_size = len((tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines())
    for name, values in (("student", TINY), ("teacher", TEACHER)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps({"vocab_size": vocab_size, **values}))
    return paths


def training_flags(args) -> list:
    return ["--batch-size", args.batch_size, "--learning-rate", args.learning_rate, "--warmup-steps", args.warmup_steps,
            "--max-predictions-per-seq", 10, "--logging-steps", 50, "--seed", args.seed, "--device", "cpu"]


def score(run: Path, paths: dict, args, root: Path) -> dict:
    """Held-out masked-LM metrics of best/, then dev EM/F1 after the same short squad1 fine-tuning."""
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    squad_run = root / f"{run.name}-squad1"
    if not (squad_run / "best" / "metrics.json").is_file():
        command("finetune", "squad1", "--model", run / "best", "--train", paths["squad_train"], "--dev",
                paths["squad_dev"], "--output", squad_run, "--overwrite", "--max-seq-length", 64, "--doc-stride", 32,
                "--max-query-length", 16, "--batch-size", 32, "--max-steps", args.finetune_steps, "--eval-steps", 0,
                "--learning-rate", 1e-3, "--seed", args.seed, "--device", "cpu")
    squad = json.loads((squad_run / "best" / "metrics.json").read_text())
    return {"masked_lm_accuracy": metrics["masked_lm_accuracy"], "masked_lm_loss": metrics["masked_lm_loss"],
            "next_sentence_accuracy": metrics["next_sentence_accuracy"], "squad_exact": squad["exact"],
            "squad_f1": squad["f1"]}


def main_benchmark(args) -> dict:
    root = Path(args.output)
    paths = prepare(root, Path(args.squad), args.vocabulary)
    started = time.time()
    runs = {}
    teacher = root / "teacher"
    if not (teacher / "best").is_dir():
        command("pretrain", "--config", paths["teacher"], "--data", paths["train"], "--dev", paths["heldout"],
                "--output", teacher, "--max-steps", args.teacher_steps, "--eval-steps", args.teacher_steps,
                *training_flags(args))
    runs[f"teacher (IB-BERT layout, {args.teacher_steps} steps)"] = teacher
    transfer = args.student_steps // 2
    for schedule in ("google", "freeze"):
        run = root / f"distilled-{schedule}"
        if not (run / "best").is_dir():
            command("distill", "--teacher", teacher / "best", "--student", paths["student"], "--data", paths["train"],
                    "--dev", paths["heldout"], "--output", run, "--transfer-steps", transfer, "--distill-steps",
                    args.student_steps - transfer, "--layer-schedule", schedule, "--eval-steps", args.student_steps,
                    *training_flags(args))
        runs[f"student, distilled ({schedule})"] = run
    scratch = root / "scratch"
    if not (scratch / "best").is_dir():
        command("pretrain", "--config", paths["student"], "--data", paths["train"], "--dev", paths["heldout"],
                "--output", scratch, "--max-steps", args.student_steps, "--eval-steps", args.student_steps,
                *training_flags(args))
    runs["student, from scratch"] = scratch
    results = {name: score(run, paths, args, root) for name, run in runs.items()}
    seconds = round(time.time() - started)
    (root / "results.json").write_text(json.dumps({"settings": vars(args), "seconds": seconds, "results": results},
                                                  indent=2))
    print(f"{seconds} s", file=sys.stderr)
    return results


def table(results: dict, args) -> str:
    lines = [f"| model ({args.student_steps} student steps, batch {args.batch_size}) | held-out MLM accuracy | "
             f"NSP accuracy | SQuAD dev EM / F1 after {args.finetune_steps} steps |", "|---|---|---|---|"]
    for name, values in results.items():
        lines.append(f"| {name} | {100 * values['masked_lm_accuracy']:.1f}% | "
                     f"{100 * values['next_sentence_accuracy']:.1f}% | "
                     f"{values['squad_exact']:.1f} / {values['squad_f1']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="work dir (runs are reused if already there)")
    parser.add_argument("--squad", default=str(REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.json"),
                        help="SQuAD v1.1 JSON whose contexts make the corpus")
    parser.add_argument("--vocabulary", choices=("bert", "corpus"), default="bert",
                        help="bert: BERT's uncased 30,522 pieces; corpus: the tests' 1,892-piece vocabulary")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=400, help="each student's steps (distilled: half transfer)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    arguments = parser.parse_args()
    print(table(main_benchmark(arguments), arguments))
