"""`mobilebert quickstart`: the main job end to end, offline, in about 40 s on 2 CPU cores.

No pretrained weights can be downloaded here, so the quickstart makes everything itself:
  1. a small SQuAD v1.1-format dataset of made-up facts about made-up people, written from
     the templates below ("The pilot Ben Carter lives in Oslo. ..."; two people per
     paragraph, questions such as "What is the job of Ben?");
  2. a WordPiece vocabulary for that text (every word one piece; see build_vocab);
  3. a small MobileBERT with a QA head (the same architecture: bottlenecks, stacked FFNs,
     NoNorm, trigram input; fewer and narrower layers), randomly initialised and scored on
     dev before any training;
then fine-tunes it with the real trainer (`finetune`), scores the best checkpoint with the
real SQuAD metric (`evaluate`) and answers a sample question (`predict`): the code paths of
the full-size recipe, called as the CLI calls them.

Why the data is learnable in a few hundred steps by a model that starts from nothing:
  * every question asks about a person in the paragraph, and each paragraph has two people
    with the same kinds of facts, so the type of the answer ("a job") leaves two candidates
    (EM ~50) and the rest is matching the person named in the question;
  * each answer is a neighbour of that person's first name ("The *pilot* Ben *Carter*"), and
    MobileBERT's trigram input hands every token its neighbours, so matching is one attention
    step from the answer to the question. An answer four tokens away from the name ("Ben
    was born in *Oslo*") would need a learnt relative-position head first: in our trials a
    tiny model trained from scratch sat at EM ~50 for over a thousand steps on that;
  * the name in a question is always the last word before "?", after "of" (or "the"), so
    what the answer token reads from the question looks the same for every name;
  * few names (8 first names, 8 family names), each one WordPiece token.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path
from typing import Iterator, Sequence

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import atomic_directory, atomic_write_json, ensure_writable_dir
from ..core.logs import inputs_accepted
from ..model.config import MobileBertConfig
from ..model.tokenizer import MobileBertTokenizer
from .evaluate import add_evaluate_arguments, add_predict_arguments, run_evaluate, run_predict

logger = logging.getLogger(__name__)

FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Frank", "Grace", "Henry"]
FAMILY_NAMES = ["Carter", "Lopez", "Novak", "Berg", "Moreau", "Silva", "Tanaka", "Okafor"]
JOBS = ["baker", "pilot", "nurse", "farmer", "painter", "lawyer", "teacher", "chemist", "sailor", "tailor",
        "miner", "poet", "judge", "doctor", "potter", "singer"]
CITIES = ["Oslo", "Lima", "Cairo", "Quito", "Perth", "Dakar", "Hanoi", "Bern", "Riga", "Porto", "Accra", "Kyoto",
          "Tunis", "Malmo", "Lyon", "Graz"]
# The city is never asked about: it is context the model must learn to skip.
WHEREABOUTS = ["lives in {city}.", "works in {city}.", "grew up in {city}."]
PEOPLE_PER_PARAGRAPH = 2

# fact -> question templates; {first} is the person's first name, {job} their job.
QUESTIONS: dict[str, list[str]] = {
    "job": ["What is the job of {first}?", "What is the occupation of {first}?",
            "What is the profession of {first}?"],
    "family_name": ["What is the family name of {first}?", "What is the surname of {first}?",
                    "What is the last name of {first}?"],
    "first_name": ["What is the first name of the {job}?", "What is the given name of the {job}?"],
}

# Small, but the same architecture as google/mobilebert-uncased: bottlenecks (64 -> 32),
# two stacked FFNs, NoNorm and trigram input. Dropout off. initializer_range 0.2: with HF's
# 0.02 a from-scratch model's attention output is ~1e-6 of the residual and nothing learns.
QUICKSTART_CONFIG = dict(hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_feedforward_networks=2,
                         max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         initializer_range=0.2)
# A question is at most 10 tokens and a paragraph at most 20: one 32-token window each.
MAX_QUESTIONS = 1_000_000   # generated in memory: a typo must not ask for 1e12 of them
WINDOW_FLAGS = ["--max-seq-length", "32", "--doc-stride", "8", "--max-query-length", "12"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]   # the order BERT vocabularies use


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def make_paragraph(rng: random.Random, paragraph_id: str) -> dict:
    """One SQuAD paragraph: a sentence per person, and a question about each fact of each person.

    "The pilot Ben Carter lives in Oslo." gives three answers: the job (the token before the
    first name), the family name (the token after it) and the first name (asked by job).
    """
    firsts = rng.sample(FIRST_NAMES, PEOPLE_PER_PARAGRAPH)
    families = rng.sample(FAMILY_NAMES, PEOPLE_PER_PARAGRAPH)
    jobs = rng.sample(JOBS, PEOPLE_PER_PARAGRAPH)   # distinct, so "the pilot" names one person
    context, questions = "", []
    for first, family, job in zip(firsts, families, jobs):
        sentence_start = len(context) + len("The ")
        answers = {"job": (job, sentence_start),
                   "first_name": (first, sentence_start + len(job) + 1),
                   "family_name": (family, sentence_start + len(job) + len(first) + 2)}
        where = rng.choice(WHEREABOUTS).format(city=rng.choice(CITIES))
        context += f"The {job} {first} {family} {where} "
        for fact, (text, start) in answers.items():
            questions.append({"id": f"{paragraph_id}-{len(questions)}",
                              "question": rng.choice(QUESTIONS[fact]).format(first=first, job=job),
                              "answers": [{"text": text, "answer_start": start}]})
    context = context.strip()
    for question in questions:      # the spans are real: the text is where answer_start says
        answer = question["answers"][0]
        assert context[answer["answer_start"]:answer["answer_start"] + len(answer["text"])] == answer["text"]
    return {"context": context, "qas": questions}


def make_squad_dataset(count: int, seed: int, title: str) -> dict:
    """At least `count` questions (whole paragraphs) in the official SQuAD v1.1 JSON layout."""
    rng = random.Random(seed)
    paragraphs: list[dict] = []
    while sum(len(paragraph["qas"]) for paragraph in paragraphs) < count:
        paragraphs.append(make_paragraph(rng, f"{title}-{len(paragraphs)}"))
    return {"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}


def dataset_texts(*datasets: dict) -> Iterator[str]:
    """Every context and question: the corpus the vocabulary is trained on."""
    for dataset in datasets:
        for article in dataset["data"]:
            for paragraph in article["paragraphs"]:
                yield paragraph["context"]
                for qa in paragraph["qas"]:
                    yield qa["question"]


def question_count(dataset: dict) -> int:
    return sum(len(paragraph["qas"]) for article in dataset["data"] for paragraph in article["paragraphs"])


# --------------------------------------------------------------------------------------------
# Vocabulary and start model
# --------------------------------------------------------------------------------------------

def build_vocab(texts: Sequence[str], directory: Path) -> Path:
    """A lower-cased WordPiece vocabulary for the generated text, the same on every run: the
    special tokens, every character (alone and as a ##continuation) and every whole word, each
    group sorted. The text's words are split with the normalizer and pre-tokenizer of BERT's
    WordPiece tokenizer (`tokenizers`), so each word the tokenizer will meet is one piece.

    The generator's words are a closed set of a few hundred, so nothing is left to learn by
    merging. The `tokenizers` WordPiece trainer, used before, breaks ties between merges in a
    different order on each run (huggingface/tokenizers#1794): the same --seed then gave another
    vocabulary, other initial weights per token and dev EM anywhere from 84 to 98.

    Written through a staging directory, so a killed run leaves no half-written vocab.txt."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = {word for text in texts for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))}
    characters = sorted({character for word in words for character in word})
    pieces = (SPECIAL_TOKENS + characters + [f"##{character}" for character in characters]
              + sorted(word for word in words if len(word) > 1))
    with atomic_directory(directory) as staging:
        (staging / "vocab.txt").write_text("".join(f"{piece}\n" for piece in pieces), encoding="utf-8")
    return directory / "vocab.txt"


def make_start_model(directory: Path, vocab_file: Path, seed: int) -> Path:
    """A randomly initialised small MobileBERT with a QA head and its tokenizer, in the
    model-dir format: what `finetune` starts from and what `before_training` scores."""
    import paddle

    from ..model.network import MobileBertForQuestionAnswering

    tokenizer = MobileBertTokenizer(vocab_file)
    paddle.seed(seed)
    config = MobileBertConfig(vocab_size=tokenizer.vocab_size, id2label={0: "LABEL_0", 1: "LABEL_1"},
                              **QUICKSTART_CONFIG)
    MobileBertForQuestionAnswering(config).save_pretrained(directory, tokenizer=tokenizer)
    return directory


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/quickstart",
                        help="directory for the data, vocabulary, models, predictions and quickstart.json")
    parser.add_argument("--train-questions", type=flags.integer(minimum=1, maximum=MAX_QUESTIONS), default=2400, help="generated training questions")
    parser.add_argument("--dev-questions", type=flags.integer(minimum=1, maximum=MAX_QUESTIONS), default=300, help="generated dev questions")
    parser.add_argument("--epochs", type=flags.number(above=0), default=8.0,
                        help="passes over the training questions (8: dev EM 95-100 over seeds; 4.5 stopped "
                             "short of convergence at 85-99)")
    parser.add_argument("--learning-rate", type=flags.number(above=0), default=3e-3,
                        help="peak learning rate (linear warmup over 10%% of the steps, then linear decay to 0)")
    parser.add_argument("--batch-size", type=flags.integer(minimum=1), default=16, help="questions per optimizer step")
    parser.add_argument("--seed", type=flags.seed(), default=42, help="seed for the data, the initial weights and training")


def check_arguments(args: argparse.Namespace) -> None:
    """Bad values stop the run before anything is written (each flag's range is checked as it is parsed)."""
    if args.batch_size > args.train_questions:
        raise UserInputError(f"--batch-size {args.batch_size} is larger than --train-questions "
                             f"{args.train_questions}: no optimizer step could be made")


def write_data(output: Path, args: argparse.Namespace) -> tuple[Path, Path, dict, Path]:
    """Step 1-2: train/dev JSON (different seeds, so dev paragraphs are new) and the vocabulary."""

    data_dir = output / "data"
    train = make_squad_dataset(args.train_questions, seed=args.seed, title="quickstart-train")
    dev = make_squad_dataset(args.dev_questions, seed=args.seed + 1, title="quickstart-dev")
    train_file, dev_file = data_dir / "train.json", data_dir / "dev.json"
    atomic_write_json(train_file, train)
    atomic_write_json(dev_file, dev)
    logger.info("quickstart 1/6: wrote %d training and %d dev questions (SQuAD v1.1 JSON) to %s",
                question_count(train), question_count(dev), data_dir)
    vocab_file = build_vocab(list(dataset_texts(train, dev)), output / "vocab")
    with open(vocab_file, encoding="utf-8") as handle:
        pieces = sum(1 for _ in handle)
    logger.info("quickstart 2/6: wrote a WordPiece vocabulary of %d pieces: %s", pieces, vocab_file)
    return train_file, dev_file, dev, vocab_file


def evaluate(model: Path, dev_file: Path, output: Path) -> dict:
    return run_evaluate(flags.parse_flags(add_evaluate_arguments, [
        "squad1", "--model", str(model), "--data", str(dev_file), "--output", str(output), *WINDOW_FLAGS], "mobilebert evaluate"))


def finetune(start_model: Path, train_file: Path, dev_file: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """Step 4: the real trainer, with dev scored after every epoch (best/ keeps the best)."""
    from ..training.finetune import add_finetune_arguments, run_finetune  # Paddle: only when training

    return run_finetune(flags.parse_flags(add_finetune_arguments, [
        "squad1", "--model", str(start_model), "--output", str(run_dir), "--train", str(train_file),
        "--dev", str(dev_file), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--learning-rate", str(args.learning_rate), "--schedule", "linear", "--min-lr", "0", "--decay-ratio", "1",
        "--weight-decay", "0", "--eval-steps", "0", "--seed", str(args.seed), "--overwrite", *WINDOW_FLAGS],
        "mobilebert finetune"))


def answer_sample(model: Path, dev: dict) -> dict:
    """Step 6: the first dev question through `predict`, as `mobilebert predict` would answer it."""
    paragraph = dev["data"][0]["paragraphs"][0]
    question = paragraph["qas"][0]
    prediction = run_predict(flags.parse_flags(add_predict_arguments, [
        "--model", str(model), "--question", question["question"], "--context", paragraph["context"],
        "--top-k", "1"], "mobilebert predict"))   # no window flags: the model's config.json remembers them
    gold = question["answers"][0]["text"]
    return {"question": question["question"], "context": paragraph["context"], "gold": gold,
            "predicted": prediction["answer"], "correct": prediction["answer"] == gold}


def scores(evaluation: dict) -> dict:
    return {"exact": evaluation["metrics"]["exact"], "f1": evaluation["metrics"]["f1"]}


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    check_arguments(args)
    inputs_accepted()
    output = ensure_writable_dir(args.output)
    train_file, dev_file, dev, vocab_file = write_data(output, args)

    start_model = make_start_model(output / "start", vocab_file, args.seed)
    before = scores(evaluate(start_model, dev_file, output / "eval_before"))
    logger.info("quickstart 3/6: random small MobileBERT in %s scores exact %.2f, f1 %.2f on dev before training",
                start_model, before["exact"], before["f1"])

    run_dir = output / "squad1"
    logger.info("quickstart 4/6: fine-tuning it on %s (%s epochs, batch %d, lr %g) into %s",
                train_file, args.epochs, args.batch_size, args.learning_rate, run_dir)
    trained = finetune(start_model, train_file, dev_file, run_dir, args)
    best = Path(trained["best"])

    evaluation = evaluate(best, dev_file, output / "eval")
    after = scores(evaluation)
    logger.info("quickstart 5/6: best checkpoint %s (step %s of %s) scores exact %.2f, f1 %.2f on dev",
                best, trained["best_step"], trained["steps"], after["exact"], after["f1"])

    sample = answer_sample(best, dev)
    logger.info("quickstart 6/6: %r -> %r (gold %r)", sample["question"], sample["predicted"], sample["gold"])

    summary = {
        **after,
        "before_training": before,
        "sample": sample,
        "training": {"steps": trained["steps"], "best_step": trained["best_step"], "last_loss": trained["last_loss"],
                     "train_rows": trained["train_rows"], "seconds": trained["seconds"]},
        "seconds": None,
        "artifacts": {
            "train_data": str(train_file), "dev_data": str(dev_file), "vocab": str(vocab_file),
            "start_model": str(start_model), "evaluation_before_training": str(output / "eval_before"),
            "run": str(run_dir), "metrics_log": str(run_dir / "metrics.jsonl"), "best_model": str(best),
            "evaluation": str(output / "eval"), "predictions": str(output / "eval" / "predictions.json"),
            "summary": str(output / "quickstart.json")},
        # The fine-tuned model's config.json remembers its window settings: no flags needed.
        "next": [f"mobilebert predict --model {best} --question 'What is the job of Anna?' "
                 f"--context 'The baker Anna Novak lives in Lima.'",
                 f"mobilebert evaluate squad1 --model {best} --data {dev_file} --output {output / 'eval'}"],
    }
    summary["seconds"] = round(time.time() - started, 1)
    atomic_write_json(output / "quickstart.json", summary)
    logger.info("quickstart: done in %.0f s; summary in %s", summary["seconds"], output / "quickstart.json")
    return summary
