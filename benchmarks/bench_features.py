"""Time SQuAD feature building against a bare transformers BertTokenizerFast call.

Both sides cut SQuAD v1.1 dev into 384-token windows with a 128-token overlap
(run_qa's arguments: left-stripped questions, truncation="only_second", overflowing
tokens, offsets, padding to max_length). Runs are interleaved in one process and the
median of --repeats is reported; ratio = ours / transformers (target <= 1.5).

    python benchmarks/bench_features.py [--data dev-v1.1.json] [--vocab vocab.txt] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mobilebert_paddle.model.tokenizer import MobileBertTokenizer
from mobilebert_paddle.tasks.squad import build_features, read_squad

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "squad" / "dev-v1.1.json", help="SQuAD JSON")
    parser.add_argument("--vocab", type=Path, default=SHARED_DATA / "vocab" / "bert-base-uncased-vocab.txt",
                        help="BERT uncased vocab.txt")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (median reported)")
    return parser.parse_args()


def transformers_reference(vocab: Path):
    """HF's fast tokenizer (5.x wants `vocab=`; the old `vocab_file=` is silently ignored)."""
    import transformers

    keyword = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    return transformers.BertTokenizerFast(**{keyword: str(vocab)})


def main() -> None:
    args = parse_arguments()
    examples = read_squad(args.data)
    tokenizer = MobileBertTokenizer(args.vocab)
    reference = transformers_reference(args.vocab)
    questions = [example.question.lstrip() for example in examples]
    contexts = [example.context for example in examples]

    def ours() -> int:
        return len(build_features(examples, tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64))

    def theirs() -> int:
        encoded = reference(questions, contexts, truncation="only_second", max_length=384, stride=128,
                            return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
        return len(encoded["input_ids"])

    timings: dict[str, list[float]] = {"ours": [], "transformers": []}
    windows = {}
    for _ in range(args.repeats):                      # interleaved: both sides see the same machine load
        for name, run in (("ours", ours), ("transformers", theirs)):
            began = time.perf_counter()
            windows[name] = run()
            timings[name].append(time.perf_counter() - began)
    median = {name: statistics.median(values) for name, values in timings.items()}
    print(json.dumps({
        "data": str(args.data), "questions": len(examples), "windows": windows,
        "seconds_median": {name: round(value, 3) for name, value in median.items()},
        "seconds_all": {name: [round(v, 3) for v in values] for name, values in timings.items()},
        "ratio_ours_over_transformers": round(median["ours"] / median["transformers"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
