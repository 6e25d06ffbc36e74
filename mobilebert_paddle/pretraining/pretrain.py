"""`mobilebert pretrain`: the IB-BERT teacher (or any MobileBERT config) pretrained on BERT's two
objectives with the ForPreTraining head (paper §3-4, Google's run_pretraining.py), the
`pretraining` task (task.py) run by the one training loop.

Defaults are Google's LAMB recipe: lr 1.5e-3, batch 2048, warmup then linear decay to 0, weight
decay 0.01, beta2 0.999, 20 predictions a row, gradients clipped to a global norm of 1.0 (as
Google's optimization.py; `distill` shares these defaults). Google warms up over 10k of its 1M
steps; here the warmup is that share (WARMUP_RATIO, 1%) of whatever the run's steps are, or
--warmup-steps.

`mobilebert evaluate pretraining --model DIR --data DATA_DIR --output DIR` scores a model with the
masking settings its config.json stores from training.
"""


from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from ..core import flags
from ..core.errors import UserInputError
from ..model.config import MobileBertConfig, load_config
from .task import (
    PRETRAINING_HEAD,
    MaskingSettings,
    PretrainingTask,
    open_data,
)

logger = logging.getLogger(__name__)
WARMUP_RATIO = 0.01      # Google's 10k warmup steps of its 1M, as a share of any run's steps
# Config keys that fix parameter shapes: --config and --init-from must agree on them.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "embedding_size", "trigram_input", "use_bottleneck",
              "intra_bottleneck_size", "use_bottleneck_attention", "key_query_shared_bottleneck",
              "num_feedforward_networks", "normalization_type", "classifier_activation")


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------

def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="model to pretrain: a preset (mobilebert, mobilebert-tiny, ib-bert), "
                                         "a config.json or a directory holding one (needed unless --init-from)")
    parser.add_argument("--init-from", metavar="DIR", help="start from this model dir's weights "
                                                           "(--config, if given, must agree on every shape)")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="training shards (mobilebert pretrain-data)")
    parser.add_argument("--dev", metavar="DATA_DIR", help="held-out shards evaluated during training")
    parser.add_argument("--output", required=True, help="run dir: best/, last/, train_config.json, metrics.jsonl, vdl/")
    optim = add_training_arguments(parser)
    optim.add_argument("--epochs", type=flags.number(above=0), default=1.0, help="passes over the rows")
    optim.add_argument("--max-steps", type=flags.integer(minimum=0), default=0,
                       help="optimizer steps to run instead of --epochs (0: from --epochs); the schedule spans them")


def add_training_arguments(parser: argparse.ArgumentParser,
                           warmup_help: str = "linear warmup steps from 0 to the peak") -> argparse._ArgumentGroup:
    """The optimisation, masking and run flags `pretrain` and `distill` share (Google's LAMB
    recipe as defaults); returns the optimisation group for a command's own step flags."""
    optim = parser.add_argument_group("optimisation")
    flags.add_optimizer_arguments(optim, optimizer="lamb", learning_rate=1.5e-3, batch_size=2048, weight_decay=0.01,
                                  adam_beta2=0.999, seed_help="fixes initialisation, row order, masks, dropout",
                                  max_grad_norm=1.0, max_grad_norm_help=" (Google clips at 1.0 in pretraining and "
                                                                        "distillation)")
    optim.add_argument("--warmup-ratio", type=flags.number(minimum=0, below=1), default=WARMUP_RATIO,
                       help="warmup as a share of the steps it leads into (Google: 10k of 1M steps)")
    optim.add_argument("--warmup-steps", type=flags.integer(minimum=0), default=None,
                       help=warmup_help + ", instead of --warmup-ratio; fewer than those steps%(default).0s")
    optim.add_argument("--schedule", choices=("linear", "cosine"), default="linear",
                       help="decay from the peak to --min-lr after warmup")
    optim.add_argument("--min-lr", type=flags.number(minimum=0), default=0.0, help="learning rate reached at the end")
    masking = parser.add_argument_group("masking (drawn per batch from --seed and the step)")
    masking.add_argument("--masked-lm-prob", type=flags.number(above=0, below=1), default=0.15,
                         help="share of a row's tokens to predict (80%% [MASK], 10%% random, 10%% kept)")
    masking.add_argument("--max-predictions-per-seq", type=flags.integer(minimum=1), default=20,
                         help="at most this many predicted tokens a row")
    masking.add_argument("--whole-word-masking", action="store_true",
                         help="mask every piece of a chosen word together")
    flags.add_run_arguments(parser, logging_steps=100, eval_steps=1000,
                            eval_steps_help="evaluate on --dev every N steps, 0 = after every epoch (always at the end)")
    return optim


def resolve_run_config(args: argparse.Namespace) -> argparse.Namespace:
    """The flags plus the trainer's fixed values for pretraining (checked before any work)."""
    from ..training.rundir import check_optimisation_flags  # Paddle: imported when a run starts

    if args.config is None and args.init_from is None:
        raise UserInputError("give --config PRESET|CONFIG.json (a new model) or --init-from DIR (or both)")
    check_optimisation_flags(args)
    # The schedule warms up over --warmup-steps (else --warmup-ratio of the steps), then decays over every step.
    return argparse.Namespace(**vars(args), decay_ratio=1.0)


# --------------------------------------------------------------------------------------------
# The model: a config (preset / file) or a model dir to start from, checked against the data
# --------------------------------------------------------------------------------------------

def start_config(args, data):
    """The config of the model to pretrain and its vocabulary (None: the data's), checked: --config
    and --init-from agree on shapes, its parameters fit in memory, and the data fits it
    (vocabulary, row length, masking)."""
    from ..model.size import check_fits_in_memory
    from .shards import check_model_fits_data, model_vocabulary

    config = load_config(args.config) if args.config else None
    vocabulary = None
    if args.init_from:
        initial = MobileBertConfig.from_pretrained(check_model_dir(args.init_from))
        if config is not None:
            check_same_shapes(config, initial, args.config, args.init_from)
        config = config or initial
        vocabulary = model_vocabulary(Path(args.init_from))
    where = f"--config {args.config}" if args.config else f"--init-from {args.init_from}"
    check_fits_in_memory(config, where)
    check_model_fits_data(config, vocabulary, data, where, args.max_predictions_per_seq)
    return config, vocabulary


def check_model_dir(path: str) -> Path:
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise UserInputError(f"{directory}: --init-from must be a model directory (no config.json)")
    return directory


def check_same_shapes(config, initial, config_source: str, init_from: str) -> None:
    for key in SHAPE_KEYS:
        wanted, stored = getattr(config, key), getattr(initial, key)
        if wanted != stored:
            raise UserInputError(f"--config {config_source} disagrees with --init-from {init_from}: "
                                 f"{key} {wanted} vs {stored}")


def build_pretraining_model(config, init_from: str | None, resume_dir: Path | None):
    """MobileBertForPreTraining: from last/ when resuming, else --init-from's weights (heads it lacks
    newly initialised), else fresh from the config."""
    from ..model.network import MobileBertForPreTraining

    source = resume_dir or (Path(init_from) if init_from else None)
    if source is None:
        config.architectures = [PRETRAINING_HEAD]
        return MobileBertForPreTraining(config)
    return MobileBertForPreTraining.from_pretrained(source, config=config)


# --------------------------------------------------------------------------------------------
# `mobilebert pretrain`
# --------------------------------------------------------------------------------------------

def check_batch_size(config, data) -> None:
    """A global batch holds at most the data's rows (pretrain, distill: checked before any work)."""
    if config.batch_size > data.num_rows:
        raise UserInputError(f"--batch-size {config.batch_size} is more than the {data.num_rows} rows of "
                             f"--data {config.data}: every step would be the whole data; lower --batch-size")


def run_inputs(config) -> dict:
    """Every input a pretraining run reads (refused inside the run dir it writes)."""
    config_file = config.config if config.config and Path(config.config).exists() else None
    return {"--config": config_file, "--init-from": config.init_from, "--data": config.data, "--dev": config.dev}


def run_pretrain(args: argparse.Namespace) -> dict | None:
    from ..core.files import check_separate_dirs
    from ..model.tokenizer import MobileBertTokenizer
    from ..training.checkpoint import CHECKPOINT_STATE
    from ..training.rundir import (
        begin_run,
        check_batch_fits,
        check_schedule,
        seed_dropout,
        seed_initialisation,
        start_output,
    )
    from ..training.trainer import Trainer
    from .shards import check_model_fits_data

    config = resolve_run_config(args)
    check_separate_dirs(run_inputs(config), config.output, "--output", output_may_be_inside=True)
    output, is_main = begin_run(config)
    data = open_data(config.data)
    model_config, vocabulary = start_config(config, data)
    task = PretrainingTask(MaskingSettings.from_args(config))
    eval_sets = []
    if config.dev:
        dev = open_data(config.dev, "--dev")
        model_name = f"--init-from {config.init_from}" if vocabulary is not None else f"the model (--data {config.data})"
        check_model_fits_data(model_config, vocabulary or dict(zip(data.vocabulary, range(data.vocab_size))), dev,
                              model_name, config.max_predictions_per_seq)
        eval_sets = [task.eval_set("dev", config.dev, dev, None, task.masking)]
    check_batch_size(config, data)
    check_batch_fits(data.num_rows, config, config.data)
    check_schedule(config, data.num_rows)
    task.invariants = {"config": model_config.to_dict(), "data": data.fingerprint()}
    tokenizer = MobileBertTokenizer.from_pretrained(data.tokenizer_dir)
    last = output / "last"
    resume_dir = last if config.resume and (last / CHECKPOINT_STATE).is_file() else None
    seed_initialisation(config.seed)
    model = build_pretraining_model(model_config, config.init_from, resume_dir)
    logger.info("pretraining %s (%.1fM parameters) on %d rows of %s; dev: %s", PRETRAINING_HEAD,
                sum(math.prod(param.shape) for param in model.parameters()) / 1e6, data.num_rows, config.data,
                f"{eval_sets[0].rows['input_ids'].shape[0]} rows" if eval_sets else "none")
    start_output(config, output, is_main)
    trainer = Trainer(task, config, model, tokenizer, data, eval_sets, output)
    seed_dropout(config.seed)
    return trainer.train(resume=config.resume)
