"""`mobilebert finetune`: a task of tasks/registry.py trained by the one loop (trainer.py) from a
model dir, with the MobileBert_paddle recipe as defaults: AdamW 0.9/0.98/1e-6, decay 0.1 off
biases and norms, lr 8e-5, batch 64, 6 epochs, 10% warmup then cosine to min_lr at decay_ratio,
seed 42 (the per-task values are in the registry).
"""


from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..core import flags
from ..core.files import check_separate_dirs
from ..model.loading import load_pretrained
from ..model.modeldir import check_label_count, load_tokenizer, resolve_source
from ..tasks.base import Task, dev_sources, load_eval_sets, read_train_examples
from ..tasks.registry import FINETUNE_TASK_NAMES, get_task, recipe_table
from ..tasks.settings import (
    TaskSettings,
    add_task_settings_arguments,
    check_sequence_length,
)
from .checkpoint import RESUMABLE_HELP, read_checkpoint
from .rundir import (
    begin_run,
    check_batch_fits,
    check_optimisation_flags,
    check_schedule,
    seed_dropout,
    seed_initialisation,
    start_output,
)
from .trainer import Trainer

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------

def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Per-task recipe defaults: " + recipe_table() + "."
    parser.add_argument("task", choices=FINETUNE_TASK_NAMES, help="what to fine-tune for")
    parser.add_argument("--model", required=True,
                        help="starting point: Paddle model dir, HF dir or hub id (e.g. google/mobilebert-uncased)")
    parser.add_argument("--output", required=True,
                        help="run dir: best/, last/, train_config.json, metrics.jsonl, vdl/")
    data = parser.add_argument_group("data")
    # --train-file: under paddle.distributed.launch, whose parser takes --train for its --trainers.
    data.add_argument("--train", "--train-file", dest="train", help="training file: SQuAD JSON or GLUE train.tsv")
    data.add_argument("--dev", nargs="+", metavar="FILE",
                      help="dev file(s) evaluated during training (MNLI: dev_matched.tsv dev_mismatched.tsv)")
    data.add_argument("--data-dir", help="directory in the distributed layout (train-v1.1.json / dev-v1.1.json, "
                                         "GLUE's train.tsv / dev*.tsv, or glue_data/<TASK>/...)")
    data.add_argument("--data", choices=("files", "hub"), default="files",
                      help="hub: the task's HF hub dataset (needs the optional `datasets` package and a connection)")
    optim = parser.add_argument_group("optimisation")
    flags.add_optimizer_arguments(optim, optimizer="adamw", learning_rate=8e-5, batch_size=64, weight_decay=0.1,
                                  adam_beta2=0.98, seed_help="fixes head initialisation, data order and dropout",
                                  max_grad_norm_help=" (the recipe did not clip)")
    optim.add_argument("--epochs", type=flags.number(above=0), default=6.0, help="passes over the training rows")
    optim.add_argument("--max-steps", type=flags.integer(minimum=0), default=0,
                       help="optimizer steps to run instead of --epochs (0: from --epochs); the schedule spans them")
    optim.add_argument("--warmup-ratio", type=flags.number(minimum=0, maximum=1), default=0.1, help="fraction of the steps with linear warmup from 0")
    optim.add_argument("--warmup-steps", type=flags.integer(minimum=0), default=None, help="warmup steps, overriding --warmup-ratio%(default).0s")
    optim.add_argument("--schedule", choices=("cosine", "linear"), default="cosine",
                       help="shape of the decay from the peak to --min-lr after warmup "
                            "(linear with --min-lr 0 --decay-ratio 1 is HF's linear schedule)")
    optim.add_argument("--min-lr", type=flags.number(minimum=0), default=None,
                       help="learning rate reached at --decay-ratio and kept "
                            "[default: 1e-6 squad1, 5e-7 others]%(default).0s")
    optim.add_argument("--decay-ratio", type=flags.number(above=0, maximum=1), default=None,
                       help="fraction of the steps at which the decay reaches --min-lr "
                            "[default: 0.7 squad1, 0.9 others]%(default).0s")
    add_task_settings_arguments(parser)
    flags.add_run_arguments(parser, logging_steps=30, eval_steps=None,
                            eval_steps_help="evaluate on dev every N steps, 0 = after every epoch (always at the end) "
                                            "[default: 240 squad1/mnli/qqp/qnli/sst2, 120 squad2, 0 other GLUE "
                                            "tasks]%(default).0s",
                            resume_help=f"; every flag must be as before except {RESUMABLE_HELP}")


def resolve_config(args: argparse.Namespace, task: Task) -> argparse.Namespace:
    """The flags with the task's recipe filled in. Each flag's own range is checked as it is
    parsed (flags.py); what is left here are the checks across flags."""
    config = argparse.Namespace(**vars(args))
    recipe = task.recipe
    for name, default in (("min_lr", recipe.min_lr), ("decay_ratio", recipe.decay_ratio),
                          ("eval_steps", recipe.eval_steps), ("max_seq_length", recipe.max_seq_length),
                          ("null_score_diff_threshold", recipe.null_score_diff_threshold)):
        if getattr(config, name, None) is None:
            setattr(config, name, default)
    check_optimisation_flags(config)
    return config


def start_source(config, output: Path) -> Path:
    """The model dir training starts from: last/ when resuming, else --model (a hub id resolved)."""

    last = output / "last"
    if config.resume and last.is_dir():
        read_checkpoint(last)    # a damaged last/ is refused here, before its weights are read
        return last
    return resolve_source(config.model)


def check_start(config, source: Path, task: Task):
    """Read and check the start's config.json, weights (their label count against the task's)
    and tokenizer, and return the tokenizer. The model is built later (load_start_model, which
    logs a new head): every input is checked first."""

    model_config, state = load_pretrained(source)     # a bad dir fails here; the weights are read again later
    check_label_count(model_config, state, task.model_class().architecture, task.config_changes()["id2label"],
                      task.name, config.model)
    check_sequence_length(config.max_seq_length, model_config, config.model)
    return load_tokenizer(source, model_config)


def load_start_model(task: Task, source: Path):
    """The model with the task's head (a new head is initialised from Paddle's seed)."""
    model = task.model_class().from_pretrained(source, **task.config_changes())
    model.config.extra["finetuning_task"] = task.name
    return model


def load_data(task: Task, config, tokenizer) -> tuple[dict[str, np.ndarray], list, str]:
    settings = TaskSettings.from_args(config, task)
    examples, source = read_train_examples(task, config.train, config.data_dir, config.data == "hub")
    rows = task.train_rows(examples, tokenizer, settings)
    eval_sets = load_eval_sets(task, dev_sources(task, config.dev, config.data_dir, config.data == "hub"),
                               tokenizer, settings)
    if not eval_sets:
        logger.warning("%s: no dev data (--dev / --data-dir): best/ will be the final model", task.name)
    dev = ", ".join(f"{eval_set.name} ({len(eval_set.rows['input_ids'])} rows)" for eval_set in eval_sets)
    logger.info("%s: %d training examples -> %d rows from %s; dev: %s", task.name, len(examples),
                len(rows["input_ids"]), source, dev or "none")
    return rows, eval_sets, source


def run_finetune(args: argparse.Namespace) -> dict | None:
    task = get_task(args.task)
    config = resolve_config(args, task)
    inputs = [("--model", config.model), ("--train", config.train), ("--data-dir", config.data_dir),
              *(("--dev", path) for path in config.dev or ())]
    check_separate_dirs([(flag, path) for flag, path in inputs if path is not None and Path(path).exists()],
                        config.output, "--output", output_may_be_inside=True)
    output, is_main = begin_run(config)
    source = start_source(config, output)
    tokenizer = check_start(config, source, task)
    rows, eval_sets, train_source = load_data(task, config, tokenizer)
    check_batch_fits(len(rows["input_ids"]), config, train_source)
    check_schedule(config, len(rows["input_ids"]))
    seed_initialisation(config.seed)
    model = load_start_model(task, source)
    start_output(config, output, is_main)
    trainer = Trainer(task, config, model, tokenizer, rows, eval_sets, output)
    if config.batch_size % (trainer.world_size * config.gradient_accumulation_steps):
        logger.warning("--batch-size %d is not a multiple of processes x accumulation steps (%d): slices differ by "
                       "a row", config.batch_size, trainer.world_size * config.gradient_accumulation_steps)
    seed_dropout(config.seed)
    return trainer.train(resume=config.resume)
