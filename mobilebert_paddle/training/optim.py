"""The optimiser and the learning-rate schedule of every training command: AdamW or LAMB with weight
decay off biases and norm weights, warmup then cosine or linear decay to min_lr at decay_ratio,
and per-parameter learning-rate multipliers (distillation's layer schedule).
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
