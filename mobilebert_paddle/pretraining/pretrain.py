"""`mobilebert pretrain` and the `pretraining` task: masked LM + next sentence prediction on the
token shards of `mobilebert pretrain-data` (corpus.py), through the one training loop (train.py).

Paper §3-4 / Google's run_pretraining.py: the IB-BERT teacher (and any MobileBERT config) is
pretrained on BERT's two objectives with the ForPreTraining head. Here:

* rows are read memory-mapped from DATA_DIR (corpus.PretrainingData) and masked when the batch
  is drawn (corpus.mask_tokens, keyed by seed, step and row id): 15% of the tokens, 80/10/10,
  at most --max-predictions-per-seq a row; a resumed run draws the same masks;
* the MLM head runs on the masked positions only (B, P, V), not on every token (B, T, V);
* loss of a row = mean cross entropy over its masked tokens (weighted by masked_weights) + NSP
  cross entropy. Google's TF code averages MLM over all masked tokens of the (per-core) batch;
  a per-row mean keeps the loss a sum over rows, which is what makes 1 process equal N
  processes and accumulation steps exact (train.py). Dev metrics are token means;
* dev masks are fixed (those of step 0 with the run's seed), so every evaluation scores the
  same tokens; best/ is selected on masked_lm_accuracy;
* defaults are Google's LAMB recipe (MobileBERT README / DESIGN.md): lr 1.5e-3, batch 2048,
  10k warmup steps then linear decay to 0, weight decay 0.01, beta2 0.999, 20 predictions a row.

`mobilebert evaluate pretraining --model DIR --data DATA_DIR --output DIR` scores a model through
evaluation.py's code path with the masking settings stored in its config.json by training.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import flags
from .errors import UserInputError
from .tasks import EvalResult, EvalSet, Recipe, Task

logger = logging.getLogger(__name__)

PRETRAINING_HEAD = "MobileBertForPreTraining"
SETTINGS_KEY = "pretraining_settings"     # config.json key holding the masking a model was trained with
# Config keys that fix parameter shapes: --config and --init-from must agree on them.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "embedding_size", "trigram_input", "use_bottleneck",
              "intra_bottleneck_size", "use_bottleneck_attention", "key_query_shared_bottleneck",
              "num_feedforward_networks", "normalization_type", "classifier_activation")
DEV_MASK_STEP = 0
EVAL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_labels",
               "masked_weights", "next_sentence_label")


@dataclass
class MaskingSettings:
    """How rows are masked (flags of pretrain; stored in the model's config.json for evaluate)."""

    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_masking: bool = False
    seed: int = 42

    @classmethod
    def from_args(cls, args: Any, model_config: Any = None) -> "MaskingSettings":
        """Flags when given, else the model's training values, else the defaults."""
        stored = (getattr(model_config, "extra", None) or {}).get(SETTINGS_KEY) or {}
        values = {}
        for item in fields(cls):
            given = getattr(args, item.name, None)
            values[item.name] = given if given is not None else stored.get(item.name, item.default)
        return cls(**values)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------

class PretrainingTask(Task):
    """MLM + NSP over a corpus.PretrainingData. Built per run with that run's masking (the
    registry's instance, with the defaults, serves `evaluate pretraining`)."""

    name = "pretraining"
    head = PRETRAINING_HEAD
    main_metric = "masked_lm_accuracy"
    recipe = Recipe(max_seq_length=128, min_lr=0.0, decay_ratio=1.0, eval_steps=1000)
    label_names = ("masked_labels", "masked_weights", "next_sentence_label")
    eager_only = True

    def __init__(self, masking: MaskingSettings | None = None):
        self.masking = masking or MaskingSettings()

    # ----- training hooks ----------------------------------------------------------------------

    def num_rows(self, data) -> int:
        return data.num_rows

    def make_batch(self, data, row_indices: np.ndarray, step: int) -> tuple[dict, dict]:
        import paddle

        arrays = masked_rows(data, np.asarray(row_indices, dtype=np.int64), self.masking, step)
        inputs = {name: paddle.to_tensor(arrays[name].astype(np.int64))
                  for name in ("input_ids", "token_type_ids", "attention_mask", "masked_positions")}
        labels = {name: paddle.to_tensor(arrays[name]) for name in self.label_names}
        return inputs, labels

    def compute_loss(self, model, inputs: dict, labels: dict, step: int) -> tuple[Any, dict]:
        parts = self.loss_parts(model(**inputs), labels)
        return parts["masked_lm_loss"] + parts["next_sentence_loss"], parts

    def per_example_loss(self, outputs, labels: dict):
        parts = self.loss_parts(outputs, labels)
        return parts["masked_lm_loss"] + parts["next_sentence_loss"]

    @staticmethod
    def loss_parts(outputs, labels: dict) -> dict:
        """Per-row losses (B,): MLM = masked tokens' mean cross entropy (weights 0 for padding
        slots), NSP = cross entropy of the pair label."""
        import paddle
        import paddle.nn.functional as F

        prediction_logits, seq_relationship_logits = outputs[0], outputs[1]      # (B, P, V), (B, 2)
        batch, predictions, vocab = prediction_logits.shape
        token_loss = F.cross_entropy(prediction_logits.astype("float32").reshape([-1, vocab]),
                                     labels["masked_labels"].reshape([-1]), reduction="none").reshape([batch, predictions])
        weights = labels["masked_weights"].astype("float32")                      # (B, P)
        masked_lm = (token_loss * weights).sum(axis=1) / paddle.clip(weights.sum(axis=1), min=1.0)
        next_sentence = F.cross_entropy(seq_relationship_logits.astype("float32"), labels["next_sentence_label"],
                                        reduction="none").reshape([-1])
        return {"masked_lm_loss": masked_lm, "next_sentence_loss": next_sentence}

    def settings_from_args(self, args: Any, model_config: Any = None) -> MaskingSettings:
        return MaskingSettings.from_args(args, model_config)

    def remember_settings(self, model, settings: MaskingSettings) -> None:
        model.config.extra[SETTINGS_KEY] = asdict(settings)

    # ----- data and scoring --------------------------------------------------------------------

    def config_changes(self) -> dict[str, Any]:
        return {}

    def default_files(self, data_dir: Path):
        return None, []

    def read(self, path: Path, training: bool):
        return open_data(path)

    def hub_examples(self, split: str):
        raise UserInputError("pretraining reads a DATA_DIR written by `mobilebert pretrain-data`, not a hub dataset")

    def eval_set(self, name: str, source: str, examples, tokenizer, settings: MaskingSettings) -> EvalSet:
        """All rows of a dev DATA_DIR with the masks of step 0 (the same tokens at every evaluation)."""
        data = examples
        rows = masked_rows(data, np.arange(data.num_rows, dtype=np.int64), settings, DEV_MASK_STEP)
        return EvalSet(name, source, range(data.num_rows), rows, input_names=EVAL_INPUTS)

    def batch_outputs(self, batch: dict[str, np.ndarray], outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """(B, P, V) logits -> per masked slot the predicted id and the label's cross entropy."""
        prediction_logits, seq_relationship_logits = outputs[0], outputs[1]
        logits = prediction_logits.astype(np.float64)
        log_partition = np.log(np.exp(logits - logits.max(axis=-1, keepdims=True)).sum(axis=-1)) + logits.max(axis=-1)
        label_logits = np.take_along_axis(logits, batch["masked_labels"][..., None], axis=-1)[..., 0]
        return logits.argmax(axis=-1), (log_partition - label_logits), seq_relationship_logits

    def score(self, eval_sets: Sequence[EvalSet], outputs, settings) -> EvalResult:
        metrics: dict[str, float] = {}
        prefix = self.metric_prefix(eval_sets)
        for eval_set, (predicted, token_loss, seq_relationship_logits) in zip(eval_sets, outputs):
            scores = pretraining_metrics(eval_set.rows, predicted, token_loss, seq_relationship_logits)
            metrics.update({(f"{eval_set.name}_{key}" if prefix else key): value for key, value in scores.items()})
        main = f"{eval_sets[0].name}_{self.main_metric}" if prefix else self.main_metric
        return EvalResult(metrics, main, {})

    def write_predictions(self, result: EvalResult, directory: Path) -> list[Path]:
        return []


def pretraining_metrics(rows: dict, predicted: np.ndarray, token_loss: np.ndarray,
                        seq_relationship_logits: np.ndarray) -> dict[str, float]:
    """Token means over the masked slots (weights 1) and the NSP accuracy over rows."""
    weights = rows["masked_weights"].astype(np.float64)                           # (N, P)
    correct = (predicted == rows["masked_labels"]) * weights
    return {"masked_lm_accuracy": float(correct.sum() / weights.sum()),
            "masked_lm_loss": float((token_loss * weights).sum() / weights.sum()),
            "next_sentence_accuracy": float((seq_relationship_logits.argmax(axis=-1)
                                             == rows["next_sentence_label"]).mean()),
            "masked_tokens": int(weights.sum()), "rows": int(len(weights))}


def masked_rows(data, row_indices: np.ndarray, masking: MaskingSettings, step: int) -> dict[str, np.ndarray]:
    """Rows of a corpus.PretrainingData with their MLM masks drawn from (seed, step, row id)."""
    return data.masked_rows(row_indices, masking.seed, step, max_predictions=masking.max_predictions_per_seq,
                            masked_lm_prob=masking.masked_lm_prob, whole_word=masking.whole_word_masking)


def open_data(path: str | Path):
    """A DATA_DIR written by `mobilebert pretrain-data` (a bad one is a one-line UserInputError)."""
    from .corpus import PretrainingData

    return PretrainingData(Path(path))


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
                                  adam_beta2=0.999, seed_help="fixes initialisation, row order, masks, dropout")
    optim.add_argument("--warmup-steps", type=flags.integer(minimum=0), default=10000, help=warmup_help)
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
    from .train import FP16_REFUSAL

    if args.config is None and args.init_from is None:
        raise UserInputError("give --config PRESET|CONFIG.json (a new model) or --init-from DIR (or both)")
    if args.amp == "fp16":
        raise UserInputError(FP16_REFUSAL)
    if args.min_lr > args.learning_rate:
        raise UserInputError(f"--min-lr {args.min_lr} is above the peak --learning-rate {args.learning_rate}")
    # warmup_ratio / decay_ratio: the schedule is set by --warmup-steps and decays over every step.
    return argparse.Namespace(**vars(args), warmup_ratio=0.0, decay_ratio=1.0)


# --------------------------------------------------------------------------------------------
# The model: a config (preset / file) or a model dir to start from, checked against the data
# --------------------------------------------------------------------------------------------

def start_config(args, data):
    """The config of the model to pretrain, checked: --config and --init-from agree on shapes,
    the vocabulary covers the data's, the rows fit the position table."""
    from .config import MobileBertConfig, load_config

    config = load_config(args.config) if args.config else None
    if args.init_from:
        initial = MobileBertConfig.from_pretrained(check_model_dir(args.init_from))
        if config is not None:
            check_same_shapes(config, initial, args.config, args.init_from)
        config = config or initial
        check_same_vocabulary(Path(args.init_from), data)
    where = args.config or args.init_from
    if config.vocab_size < data.vocab_size:
        raise UserInputError(f"{where}: vocab_size {config.vocab_size} is smaller than the data's vocabulary "
                             f"({data.vocab_size} ids in {args.data})")
    if data.max_seq_length > config.max_position_embeddings:
        raise UserInputError(f"{where}: max_position_embeddings {config.max_position_embeddings} is shorter than "
                             f"the data's rows ({data.max_seq_length} tokens in {args.data})")
    return config


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


def check_same_vocabulary(model_dir: Path, data) -> None:
    """Token ids mean what the data's tokenizer says; a model with another vocabulary would learn nonsense."""
    from .tokenizer import VOCAB_NAME

    ours, theirs = model_dir / VOCAB_NAME, Path(data.tokenizer_dir) / VOCAB_NAME
    if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
        raise UserInputError(f"--init-from {model_dir}: its vocabulary ({VOCAB_NAME}) differs from the data's "
                             f"tokenizer ({theirs})")


def build_model(config, init_from: str | None, resume_dir: Path | None):
    """MobileBertForPreTraining: from last/ when resuming, else --init-from's weights (heads it lacks
    newly initialised), else fresh from the config."""
    from .model import MobileBertForPreTraining

    source = resume_dir or (Path(init_from) if init_from else None)
    if source is None:
        config.architectures = [PRETRAINING_HEAD]
        return MobileBertForPreTraining(config)
    return MobileBertForPreTraining.from_pretrained(source, config=config)


# --------------------------------------------------------------------------------------------
# `mobilebert pretrain`
# --------------------------------------------------------------------------------------------

def run_pretrain(args: argparse.Namespace) -> dict | None:
    import paddle
    import paddle.distributed as dist

    from .tokenizer import MobileBertTokenizer
    from .train import CHECKPOINT_STATE, GlobalBatchSampler, Trainer, begin_run, start_output

    config = resolve_run_config(args)
    output, is_main = begin_run(config)
    data = open_data(config.data)
    model_config = start_config(config, data)
    task = PretrainingTask(MaskingSettings.from_args(config))
    eval_sets = [task.eval_set("dev", config.dev, open_data(config.dev), None, task.masking)] if config.dev else []
    minimum_rows = dist.get_world_size() * config.gradient_accumulation_steps
    if GlobalBatchSampler.batches_per_epoch(data.num_rows, config.batch_size, minimum_rows) == 0:
        raise UserInputError(f"{config.data}: {data.num_rows} rows make no batch of {config.batch_size} "
                             f"(lower --batch-size)")
    tokenizer = MobileBertTokenizer.from_pretrained(data.tokenizer_dir)
    last = output / "last"
    resume_dir = last if config.resume and (last / CHECKPOINT_STATE).is_file() else None
    paddle.seed(config.seed)          # initialisation: the same on every process
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(model_config, config.init_from, resume_dir)
    logger.info("pretraining %s (%.1fM parameters) on %d rows of %s; dev: %s", PRETRAINING_HEAD,
                sum(math.prod(param.shape) for param in model.parameters()) / 1e6, data.num_rows, config.data,
                f"{eval_sets[0].rows['input_ids'].shape[0]} rows" if eval_sets else "none")
    start_output(config, output, is_main)
    trainer = Trainer(task, config, model, tokenizer, data, eval_sets, output)
    paddle.seed(config.seed + dist.get_rank())   # dropout: a different stream per process
    return trainer.train(resume=config.resume)
