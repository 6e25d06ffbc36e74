"""`mobilebert` command line: one table maps each subcommand to plain importable functions.

Each entry names the module holding the command, the function that declares its flags
(`add(parser)`) and the function that runs it (`run(args)`, returning the JSON summary
dict, None, or `(summary, exit_code)`). A command's
module is imported only when that command runs, so `mobilebert --help` stays fast. A
returned dict is the run's JSON summary, printed on stdout; logs go to stderr.
"""


from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import os
import signal
import sys
import warnings
from typing import NamedTuple

from .core import flags
from .core.device import use_avx2_mkl_on_amd
from .core.errors import Interrupted, UserInputError
from .core.logs import drop_held_logs, logs_held_until_inputs_accepted


class Command(NamedTuple):
    module: str
    add_arguments: str
    run: str
    help: str
    uses_paddle: bool = True    # Paddle is imported before the signal handlers go in (signals_interrupt)


COMMANDS: dict[str, Command] = {
    "quickstart": Command("mobilebert_paddle.tools.quickstart", "add_arguments", "run",
                          "offline demo: build a tiny model and SQuAD-style data, fine-tune, evaluate, predict"),
    "convert": Command("mobilebert_paddle.model.convert", "add_arguments", "run",
                       "HF checkpoint (dir or hub id) -> Paddle model dir, or back with --to hf"),
    "compare": Command("mobilebert_paddle.tools.compare", "add_arguments", "run",
                       "parity report: Paddle model vs the PyTorch reference, relative error per output"),
    "finetune": Command("mobilebert_paddle.training.finetune", "add_finetune_arguments", "run_finetune",
                        "fine-tune on SQuAD v1.1/v2.0, MNLI or a GLUE task, evaluating on dev as it goes"),
    "evaluate": Command("mobilebert_paddle.tools.evaluate", "add_evaluate_arguments", "run_evaluate",
                        "score a model on a task's dev data and write predictions"),
    "predict": Command("mobilebert_paddle.tools.evaluate", "add_predict_arguments", "run_predict",
                       "answer a question about a context, or classify a text (pair)"),
    "export": Command("mobilebert_paddle.inference.export", "add_arguments", "run",
                      "export a static Paddle inference model or ONNX (optionally fused / int8)"),
    "squad-eval": Command("mobilebert_paddle.tasks.metrics", "add_squad_eval_arguments", "run_squad_eval",
                          "drop-in for the official SQuAD v1.1/v2.0 evaluation script", uses_paddle=False),
    "pretrain-data": Command("mobilebert_paddle.pretraining.corpus", "add_arguments", "run",
                             "raw text (one sentence a line, blank line between documents) -> token shards for pretrain",
                             uses_paddle=False),
    "pretrain": Command("mobilebert_paddle.pretraining.pretrain", "add_pretrain_arguments", "run_pretrain",
                        "pretrain a model (IB-BERT teacher or any config) on masked LM + next sentence prediction"),
    "distill": Command("mobilebert_paddle.pretraining.distillation", "add_distill_arguments", "run_distill",
                       "make a student from a pretrained teacher: layer-by-layer knowledge transfer, then "
                       "distillation on masked LM + NSP"),
    "bench": Command("mobilebert_paddle.tools.bench", "add_arguments", "run",
                     "latency/throughput of every inference path against HF PyTorch, side by side"),
}


def use_all_cores() -> None:
    """Paddle reads OMP_NUM_THREADS once, at import, and defaults to one thread; on AMD processors
    its MKL needs telling to use its AVX2 kernels (core/device.use_avx2_mkl_on_amd)."""
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    use_avx2_mkl_on_amd()


def quiet_imports() -> None:
    """Paddle's import warns about a missing compiler cache (irrelevant to this tool)."""
    warnings.filterwarnings("ignore", message="No ccache found")


class WithoutPaddleThreadAdvice:
    """sys.stderr minus the two lines Paddle prints at import whenever OMP_NUM_THREADS > 1 (which
    use_all_cores makes the default): advice about data parallel with OpenBlas, not about this
    run, and stray lines before a command's one-line error. Everything else passes through."""

    ADVICE = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")

    def __init__(self, stream):
        self.stream, self.dropped_line = stream, False

    def write(self, text: str) -> int:
        if text.startswith(self.ADVICE):     # print() writes the text, then "\n" on its own
            self.dropped_line = True
            return len(text)
        if self.dropped_line and text == "\n":
            self.dropped_line = False
            return len(text)
        self.dropped_line = False
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def paddle_thread_advice_dropped():
    original = sys.stderr
    sys.stderr = WithoutPaddleThreadAdvice(original)
    try:
        yield
    finally:
        sys.stderr = original


@contextlib.contextmanager
def signals_interrupt(uses_paddle: bool = True):
    """SIGINT and SIGTERM raise errors.Interrupted, so that `finally` blocks run (atomic writes clean
    up their staging) and the command ends with one line instead of a silent exit 143.

    `import paddle` installs Paddle's own C++ handler for SIGTERM (a stack dump, then death by the
    signal) over the one Python installed, without Python knowing: a command importing Paddle
    after these handlers went in would die silently with -15. So Paddle is imported first."""
    if uses_paddle:
        with contextlib.suppress(ImportError):
            import paddle  # noqa: F401

    def interrupt(signal_number, frame):
        Interrupted.raised = Interrupted(signal.Signals(signal_number).name, 128 + signal_number)
        raise Interrupted.raised

    previous = {}
    with contextlib.suppress(ValueError):          # not the main thread: keep the defaults
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            previous[signal_number] = signal.signal(signal_number, interrupt)
    try:
        yield
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def build_parser(command_name: str | None) -> argparse.ArgumentParser:
    parser = flags.OneLineErrorParser(prog="mobilebert", description="MobileBERT in PaddlePaddle.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=flags.OneLineErrorParser)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command_name:  # only the chosen command's module is imported
            module = importlib.import_module(command.module)
            getattr(module, command.add_arguments)(sub)
    return parser


def parse_command_args(command_name: str, argv: list[str]) -> argparse.Namespace:
    """A command's flags parsed exactly as `mobilebert COMMAND ...` parses them (for Python callers)."""
    return build_parser(command_name).parse_args([command_name, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_all_cores()
    quiet_imports()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    with paddle_thread_advice_dropped():   # Paddle is imported lazily, by whichever step needs it first
        return run_command(argv)


def run_command(argv: list[str]) -> int:
    command_name = next((arg for arg in argv if not arg.startswith("-")), None)
    if command_name not in COMMANDS:
        command_name = None
    parser = build_parser(command_name)
    args = parser.parse_args(argv)      # a bad flag: one line and SystemExit(2) (OneLineErrorParser)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = COMMANDS[args.command]
    with logs_held_until_inputs_accepted() as held_logs, signals_interrupt(command.uses_paddle):
        try:
            summary = getattr(importlib.import_module(command.module), command.run)(args)
        except UserInputError as error:
            drop_held_logs(held_logs)   # the error line says it all
            print(f"mobilebert {args.command}: error: {error}", file=sys.stderr)
            return UserInputError.exit_code
        except KeyboardInterrupt as interrupt:
            interrupt = Interrupted.during(interrupt, "")
            print(f"mobilebert {args.command}: {interrupt.message()}", file=sys.stderr)
            return interrupt.exit_code
        except OSError as error:
            interrupt = Interrupted.behind(error)
            if interrupt is not None:         # a signal inside Paddle's C++ (e.g. a PyLayer's backward)
                print(f"mobilebert {args.command}: {interrupt.message()}", file=sys.stderr)
                return interrupt.exit_code
            if error.errno not in DISK_FULL:
                raise
            where = error.filename or getattr(args, "output", None) or "the output"
            print(f"mobilebert {args.command}: error: {where}: cannot write ({error.strerror})", file=sys.stderr)
            return UserInputError.exit_code
    exit_code = 0
    if isinstance(summary, tuple):  # (summary, exit code), e.g. `compare` above its tolerance
        summary, exit_code = summary
    if summary is not None:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return exit_code
