"""Numeric flag types for argparse (every numeric flag of every command is finite and in range),
and the flags every training command (finetune, pretrain, distill) shares.

A bad value is refused while the command line is parsed, before any file is read or written,
as one line (`mobilebert finetune: error: argument --epochs: must be a finite number > 0, got nan`)
and exit code 2 (OneLineErrorParser). Use them as `type=` of `add_argument`:

    parser.add_argument("--epochs", type=number(above=0), default=6.0)
    parser.add_argument("--batch-size", type=integer(minimum=1), default=64)
    parser.add_argument("--adam-beta1", type=number(minimum=0, below=1), default=0.9)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

SEED_MAX = 2**32 - 1   # numpy's RandomState takes seeds in [0, 2**32 - 1]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_flags(add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str],
                prog: str) -> argparse.Namespace:
    """`argv` parsed by the parser `add_arguments` declares, as the CLI parses a command's flags
    (for code that runs one command from another, e.g. quickstart running finetune)."""
    parser = OneLineErrorParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser.parse_args(argv)


def _bounds_text(minimum, maximum, above, below) -> str:
    def show(value) -> str:
        return str(value) if isinstance(value, int) else f"{value:g}"

    parts = [f"{sign} {show(value)}" for sign, value in ((">=", minimum), (">", above), ("<=", maximum), ("<", below))
             if value is not None]
    return " and ".join(parts)


def _checker(kind: str, parse: Callable[[str], float], minimum=None, maximum=None, above=None, below=None):
    bounds = _bounds_text(minimum, maximum, above, below)
    description = f"{kind}{' ' + bounds if bounds else ''}"

    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above) or (below is not None and value >= below)):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    convert.__name__ = kind    # argparse names the type in some messages
    convert.bounds = {"minimum": minimum, "maximum": maximum, "above": above, "below": below}   # for tests
    return convert


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
           below: float | None = None):
    """A finite float within the bounds (minimum/maximum inclusive, above/below exclusive)."""
    return _checker("a finite number", float, minimum, maximum, above, below)


def integer(minimum: int | None = None, maximum: int | None = None):
    """An integer within the inclusive bounds."""
    return _checker("an integer", int, minimum, maximum)


def integers(minimum: int | None = None, maximum: int | None = None):
    """A comma-separated list of integers, each within the inclusive bounds ("1,8" -> [1, 8])."""
    one = integer(minimum, maximum)
    bounds = _bounds_text(minimum, maximum, None, None)
    description = f"comma-separated integers{' ' + bounds if bounds else ''}"

    def convert(text: str) -> list[int]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}")
        try:
            return [one(item) for item in items]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None

    convert.__name__ = "integers"
    convert.bounds = one.bounds
    return convert


def seed():
    """A random seed numpy, Python and Paddle all accept."""
    return integer(minimum=0, maximum=SEED_MAX)


# ----------------------------------------------------------------------------------------
# Flags of every training command
# ----------------------------------------------------------------------------------------

OPTIMIZERS = ("adamw", "lamb")


def add_optimizer_arguments(group, *, optimizer: str, learning_rate: float, batch_size: int, weight_decay: float,
                            adam_beta2: float, seed_help: str, max_grad_norm: float = 0.0,
                            max_grad_norm_help: str = "") -> None:
    """The optimisation flags finetune, pretrain and distill share, with each command's defaults
    (fine-tuning: the MobileBert_paddle recipe; pretrain and distill: Google's LAMB recipe)."""
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer,
                       help="adamw, or lamb (layer-wise trust ratio; Google's, for large batches)")
    group.add_argument("--learning-rate", type=number(above=0), default=learning_rate, help="peak learning rate")
    group.add_argument("--batch-size", type=integer(minimum=1), default=batch_size,
                       help="global batch of one optimizer step, over all processes and accumulation steps")
    group.add_argument("--weight-decay", type=number(minimum=0), default=weight_decay,
                       help="AdamW / LAMB decoupled weight decay (never on biases or norms)")
    group.add_argument("--adam-beta1", type=number(minimum=0, below=1), default=0.9,
                       help="AdamW / LAMB first-moment decay")
    group.add_argument("--adam-beta2", type=number(minimum=0, below=1), default=adam_beta2,
                       help="AdamW / LAMB second-moment decay")
    group.add_argument("--adam-epsilon", type=number(above=0), default=1e-6, help="AdamW / LAMB denominator epsilon")
    group.add_argument("--max-grad-norm", type=number(minimum=0), default=max_grad_norm,
                       help="clip the global gradient norm to this; 0 = no clipping" + max_grad_norm_help)
    group.add_argument("--gradient-accumulation-steps", type=integer(minimum=1), default=1,
                       help="forward/backward passes each process splits its share of a batch into")
    group.add_argument("--seed", type=seed(), default=42, help=seed_help)
    group.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                       help="mixed precision: bf16 on a GPU; fp16 is refused (MobileBERT's activations overflow it)")
    group.add_argument("--skip-nonfinite", action="store_true",
                       help="skip an update whose loss or gradient is not finite, instead of stopping the run")


def add_run_arguments(parser: argparse.ArgumentParser, *, logging_steps: int, eval_steps, eval_steps_help: str,
                      resume_help: str = "") -> None:
    """Evaluation, checkpoint and log flags of every training command."""
    run = parser.add_argument_group("evaluation, checkpoints, logs")
    run.add_argument("--logging-steps", type=integer(minimum=1), default=logging_steps,
                     help="steps per metrics.jsonl / VisualDL train line")
    run.add_argument("--eval-steps", type=integer(minimum=0), default=eval_steps, help=eval_steps_help)
    run.add_argument("--save-steps", type=integer(minimum=0), default=0,
                     help="write the resumable last/ every N steps; 0 = at every evaluation (always at the end)")
    run.add_argument("--eval-batch-size", type=integer(minimum=1), default=64,
                     help="rows per forward pass in evaluation")
    run.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: gpu when available")
    run.add_argument("--resume", action="store_true",
                     help="continue exactly from OUTPUT/last (starts afresh when there is none)" + resume_help)
    run.add_argument("--overwrite", action="store_true", help="delete an earlier run in OUTPUT instead of refusing")
