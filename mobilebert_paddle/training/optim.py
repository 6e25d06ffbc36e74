"""`mobilebert finetune`: the one training loop, for every task of tasks.py (fine-tuning,
pretraining.py's MLM + NSP, distillation).

The loop knows nothing about SQuAD, GLUE or masked LM: the task gives the row count, builds
each batch from (row indices, step) when it is drawn, computes a per-row loss (and parts to
log), may set per-parameter learning-rate multipliers per step, and scores dev data (the
hooks are listed in tasks.Task). What the loop adds is what a run needs to be trusted:

* the MobileBert_paddle recipe as defaults (AdamW 0.9/0.98/1e-6, decay 0.1 off biases and
  norms, lr 8e-5, batch 64, 6 epochs, 10% warmup then cosine to min_lr at decay_ratio, seed 42);
  LAMB (--optimizer lamb, Google's choice for pretraining) with the same decay exclusions;
* the attention mask passed at every step (the reproduction we replace trained without it);
* `--batch-size` is the *global* batch of one optimizer step. Each epoch's order depends on
  the seed and the epoch only, global batch k is the same rows for any number of processes,
  and each process takes an equal slice of it (then splits that for gradient accumulation);
  the loss is sum / rows-in-the-global-batch, so 1 process and N processes (DataParallel
  averages gradients) compute the same update;
* exact resume: last/ holds the model, the optimizer moments (by parameter name), the
  scheduler, the RNG states of every process and the step (which fixes the data position);
  checkpoints are written atomically (files.atomic_directory), so a kill at any moment
  leaves the previous one intact;
* a guard: a non-finite loss or gradient norm stops the run naming the step (or, with
  --skip-nonfinite, skips that update); a model with non-finite weights is never saved;
* evaluation through evaluation.evaluate_task (the code path of `mobilebert evaluate`),
  best-checkpoint selection on the task's main metric, metrics.jsonl + VisualDL scalars,
  a progress bar on stderr (progress.progress_bar: live on a terminal, a line now and then
  in a log), a JSON summary at the end.

Data parallel: `python -m paddle.distributed.launch --devices 0,1,2,3 $(which mobilebert) finetune ...`
(GPUs, NCCL) or `--nproc_per_node 2` on CPU (gloo). Only rank 0 writes files.
"""


from __future__ import annotations

import math

import paddle

from ..model.network import NoNorm


class WarmupDecaySchedule(paddle.optimizer.lr.LRScheduler):
    """Linear warmup from 0 to the peak over `warmup_steps`, then a cosine (or linear) decay to
    `min_lr` reached at `decay_steps`, then `min_lr` to the end (the recipe's schedule)."""

    def __init__(self, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int, shape: str = "cosine"):
        self.peak_lr, self.min_lr, self.shape = peak_lr, min_lr, shape
        self.warmup_steps, self.decay_steps = warmup_steps, max(decay_steps, warmup_steps)
        super().__init__(learning_rate=peak_lr)

    def get_lr(self) -> float:
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if step >= self.decay_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress
        return self.min_lr + (self.peak_lr - self.min_lr) * factor


def no_decay_parameter_names(model) -> set[str]:
    """Paddle names of biases and of LayerNorm / NoNorm weights: AdamW does not decay them."""

    names = {param.name for layer in model.sublayers(include_self=True)
             if isinstance(layer, (paddle.nn.LayerNorm, NoNorm)) for param in layer.parameters()}
    names.update(param.name for key, param in model.named_parameters() if key.endswith("bias"))
    return names


def build_optimizer(model, scheduler, config) -> paddle.optimizer.Optimizer:
    """AdamW or LAMB over every parameter; neither decays biases or norm weights (LAMB also
    skips its trust ratio for them, as Google's LAMB does). A parameter's learning rate is the
    schedule's times its multiplier (set_learning_rate_multipliers)."""
    no_decay = no_decay_parameter_names(model)
    if getattr(config, "optimizer", "adamw") == "lamb":
        return paddle.optimizer.Lamb(learning_rate=scheduler, lamb_weight_decay=config.weight_decay,
                                     beta1=config.adam_beta1, beta2=config.adam_beta2, epsilon=config.adam_epsilon,
                                     parameters=model.parameters(),
                                     exclude_from_weight_decay_fn=lambda param: param.name in no_decay)
    return paddle.optimizer.AdamW(learning_rate=scheduler, beta1=config.adam_beta1, beta2=config.adam_beta2,
                                  epsilon=config.adam_epsilon, parameters=model.parameters(),
                                  weight_decay=config.weight_decay,
                                  apply_decay_param_fun=lambda name: name not in no_decay)


def reset_optimizer_state(optimizer) -> None:
    """Put AdamW / LAMB back where a new optimizer starts: moments 0, the bias-correction powers
    at beta1 and beta2. In place, because Paddle names accumulators with a per-process counter
    (a second optimizer's are "..._moment1_1"), and checkpoints and resumed runs expect the first's."""
    initial = {optimizer._beta1_pow_acc_str: optimizer._beta1, optimizer._beta2_pow_acc_str: optimizer._beta2}
    for kind, per_parameter in optimizer._accumulators.items():
        for accumulator in per_parameter.values():
            accumulator.set_value(paddle.full_like(accumulator, initial.get(kind, 0.0)))


def set_learning_rate_multipliers(model, multipliers: dict[str, float]) -> None:
    """Scale each named parameter's learning rate (the others get 1). Paddle's optimizers read
    `optimize_attr["learning_rate"]` at every step and use schedule x multiplier for the update
    and the decoupled weight decay alike, so a multiplier of 0 leaves a parameter bit-identical
    (tests/test_pretraining.py checks AdamW and LAMB)."""
    unknown = set(multipliers) - {path for path, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"learning-rate multipliers for no parameter of the model: {sorted(unknown)[:4]}")
    for path, param in model.named_parameters():
        param.optimize_attr["learning_rate"] = float(multipliers.get(path, 1.0))
