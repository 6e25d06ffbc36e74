"""Training-step speed: ours (the real Trainer step of `finetune`, `pretrain`, `distill`) against
HuggingFace's PyTorch MobileBERT doing the same step on the same weights and the same batch.

Cases (BERT's 30,522-piece uncased vocabulary throughout):

  finetune-qa      full-size MobileBERT + QA head, AdamW (the fine-tuning recipe), 4x128 and 2x384
  pretrain         full-size MobileBERT, MLM (20 predictions a row) + NSP, LAMB and AdamW, 4x128 and 2x384
  pretrain-tiny    the tests' tiny IB-BERT-layout teacher and tiny MobileBERT student, 32x64
  distill          the tests' tiny teacher and student, 32x64: a stage-1 step of the last phase
                   (every layer runs) and a stage-2 step (MLM against the teacher's softmax + NSP)
  distill-full     the same two steps with the full-size IB-BERT teacher (24 layers, 294M
                   parameters) and full-size MobileBERT student, at the first full-size shape

Ours is `Trainer.run_step()`: drawing and masking the batch, forward, loss, backward, gradient
norm and clipping (the command's default), the optimizer update. The PyTorch side gets the same
rows already masked (its data path is not timed) and runs forward (the MLM head on the masked
positions only, as ours), the same loss, backward, clipping when ours clips, and the update:
torch.optim.AdamW (foreach), or a LAMB written with torch._foreach ops below (PyTorch has none)
with the same decay exclusions. Dropout is the config's on both sides. Before timing, each case
checks the two losses agree on one batch in eval mode (no dropout).

Paths are interleaved step by step (one step of each path per round, after warm-up rounds);
the table gives median and fastest ms per step and the ratio of medians to PyTorch's.

    python benchmarks/training_speed.py --output runs/bench-train                 # all cases
    python benchmarks/training_speed.py --output runs/bench-train --cases distill --rounds 9
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"        # BERT's uncased vocabulary and the SQuAD v1.1 dev contexts
CASES = ("finetune-qa", "pretrain", "pretrain-tiny", "distill", "distill-full")

# The tests' tiny student and benchmarks/distillation.py's tiny IB-BERT-layout teacher (at BERT's
# vocabulary here), the tests' corpus format and BERT's uncased vocabulary as a tokenizer dir.
sys.path.insert(0, str(REPO / "tests"))
from distillation import TEACHER as TINY_TEACHER  # noqa: E402
from distillation import bert_tokenizer  # noqa: E402
from test_pretraining import TINY as TINY_STUDENT  # noqa: E402
from test_pretraining import corpus_text  # noqa: E402


def prepare_data(root: Path, lengths: list[int]) -> dict[int, Path]:
    """{max_seq_length: DATA_DIR} built once with `mobilebert pretrain-data` from the SQuAD v1.1 dev
    contexts in BERT's 30,522-piece vocabulary (the fixtures the tests use)."""
    import lzma

    from mobilebert_paddle.cli import main

    tokenizer = bert_tokenizer(root / "tokenizer")
    text = root / "corpus.txt"
    if not text.is_file():
        articles = json.loads(lzma.decompress((FIXTURES / "squad-dev-v1.1-contexts.json.xz").read_bytes()))["data"]
        text.write_text(corpus_text(articles), encoding="utf-8")
    directories = {}
    for length in lengths:
        directory = root / f"data-{length}"
        if not (directory / "meta.json").is_file():
            code = main(["pretrain-data", str(text), "--tokenizer", str(tokenizer), "--output", str(directory),
                         "--max-seq-length", str(length), "--seed", "1"])
            if code:
                raise SystemExit(f"pretrain-data failed ({code})")
        directories[length] = directory
    return directories


# --------------------------------------------------------------------------------------------
# The PyTorch side
# --------------------------------------------------------------------------------------------

def is_ib_bert_layout(config) -> bool:
    return config.use_bottleneck and not (config.use_bottleneck_attention or config.key_query_shared_bottleneck)


def torch_twin(model, config, architecture: str, attention: str | None = None):
    """HF's model with our model's weights. IB-BERT's layout (query and key read the H-wide block
    input, which transformers cannot build) gets H-wide query/key Linears swapped in first: HF's
    attention only calls them, so the forward is then IB-BERT's."""
    import torch
    import transformers

    from mobilebert_paddle.model.modeldir import model_state_numpy, paddle_to_hf

    values = {key: value for key, value in config.to_dict().items() if key != "trigram_ignores_padding"}
    hf_config = transformers.MobileBertConfig(**values)
    if attention:
        hf_config._attn_implementation = attention
    hf_model = getattr(transformers, architecture)(hf_config)
    if is_ib_bert_layout(config):
        for layer in hf_model.mobilebert.encoder.layer:
            attention_layer = layer.attention.self
            width = attention_layer.all_head_size
            attention_layer.query = torch.nn.Linear(config.hidden_size, width)
            attention_layer.key = torch.nn.Linear(config.hidden_size, width)
    state = {key: torch.from_numpy(value) for key, value in paddle_to_hf(model_state_numpy(model), config, type(model)).items()}
    result = hf_model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(("position_ids", "decoder.weight",
                                                                         "decoder.bias"))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"PyTorch twin: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    hf_model.tie_weights()
    return hf_model.train()


class TorchLamb:
    """LAMB (You et al. 2019, as Google's lamb_optimizer and Paddle's Lamb): Adam's bias-corrected
    direction plus decoupled weight decay, scaled per tensor by ||w|| / ||update||; with
    torch._foreach ops (one kernel per op over all tensors)."""

    def __init__(self, groups, lr: float, betas=(0.9, 0.999), eps: float = 1e-6):
        import torch

        self.groups = [(list(params), weight_decay) for params, weight_decay in groups]
        self.lr, (self.beta1, self.beta2), self.eps, self.steps = lr, betas, eps, 0
        self.state = {id(param): (torch.zeros_like(param), torch.zeros_like(param))
                      for params, _ in self.groups for param in params}

    def step(self) -> None:
        import torch

        self.steps += 1
        correction1, correction2 = 1 - self.beta1 ** self.steps, 1 - self.beta2 ** self.steps
        with torch.no_grad():
            for params, weight_decay in self.groups:
                params = [param for param in params if param.grad is not None]
                if not params:
                    continue
                grads = [param.grad for param in params]
                moments1 = [self.state[id(param)][0] for param in params]
                moments2 = [self.state[id(param)][1] for param in params]
                torch._foreach_lerp_(moments1, grads, 1 - self.beta1)
                torch._foreach_mul_(moments2, self.beta2)
                torch._foreach_addcmul_(moments2, grads, grads, value=1 - self.beta2)
                denominators = torch._foreach_sqrt(moments2)
                torch._foreach_div_(denominators, math.sqrt(correction2))
                torch._foreach_add_(denominators, self.eps)
                updates = torch._foreach_div(moments1, denominators)
                torch._foreach_div_(updates, correction1)
                if weight_decay:
                    torch._foreach_add_(updates, params, alpha=weight_decay)
                weight_norms, update_norms = torch._foreach_norm(params), torch._foreach_norm(updates)
                ratios = [torch.where((w > 0) & (u > 0), w / u, torch.ones_like(w))
                          for w, u in zip(weight_norms, update_norms)]
                torch._foreach_mul_(updates, ratios)
                torch._foreach_add_(params, updates, alpha=-self.lr)

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for param in params:
                param.grad = None


def torch_optimizer(hf_model, config, our_model):
    """AdamW or LAMB over the twin's parameters with ours' decay exclusions (biases, norms)."""
    import torch

    from mobilebert_paddle.training.optim import no_decay_parameter_names

    our_no_decay = no_decay_parameter_names(our_model)
    no_decay = {path for path, param in our_model.named_parameters() if param.name in our_no_decay}
    decay_params = [p for name, p in hf_model.named_parameters() if name not in no_decay and p.requires_grad]
    plain_params = [p for name, p in hf_model.named_parameters() if name in no_decay and p.requires_grad]
    if config.optimizer == "lamb":
        return TorchLamb([(decay_params, config.weight_decay), (plain_params, 0.0)], lr=config.learning_rate,
                         betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    return torch.optim.AdamW([{"params": decay_params, "weight_decay": config.weight_decay},
                              {"params": plain_params, "weight_decay": 0.0}], lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, foreach=True)


def torch_tensors(arrays: dict) -> dict:
    import numpy as np
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(value).astype(np.int64 if value.dtype.kind in "iub"
                                                                       else np.float32))
            for name, value in arrays.items()}


def torch_pretraining_logits(hf_model, batch: dict):
    """MLM logits at the masked positions only (B, P, V), as our model computes them, and NSP logits."""
    import torch

    output = hf_model.mobilebert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                 attention_mask=batch["attention_mask"])
    sequence = output.last_hidden_state
    positions = batch["masked_positions"].unsqueeze(-1).expand(-1, -1, sequence.shape[-1])
    gathered = torch.gather(sequence, 1, positions)                                   # (B, P, H)
    return hf_model.cls.predictions(gathered), hf_model.cls.seq_relationship(output.pooler_output)


def torch_row_mean(per_slot, weights):
    return (per_slot * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def torch_pretraining_loss(hf_model, batch: dict):
    import torch.nn.functional as F

    logits, nsp = torch_pretraining_logits(hf_model, batch)
    token_loss = F.cross_entropy(logits.transpose(1, 2), batch["masked_labels"], reduction="none")     # (B, P)
    return (torch_row_mean(token_loss, batch["masked_weights"])
            + F.cross_entropy(nsp, batch["next_sentence_label"].reshape(-1), reduction="none")).mean()


def torch_distill_loss(student, teacher, batch: dict, ratio: float = 0.5):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        teacher_logits, _ = torch_pretraining_logits(teacher, batch)
    logits, nsp = torch_pretraining_logits(student, batch)
    hard = F.cross_entropy(logits.transpose(1, 2), batch["masked_labels"], reduction="none")
    soft = F.cross_entropy(logits.transpose(1, 2), F.softmax(teacher_logits, -1).transpose(1, 2), reduction="none")
    per_slot = ratio * hard + (1 - ratio) * soft
    return (torch_row_mean(per_slot, batch["masked_weights"])
            + F.cross_entropy(nsp, batch["next_sentence_label"].reshape(-1), reduction="none")).mean()


def torch_transfer_loss(student, teacher, batch: dict, layer: int, factors=(100.0, 1.0, 5000.0, 5.0)):
    """Layer `layer`'s four transfer losses (distillation.layer_transfer_losses, in torch)."""
    import torch
    import torch.nn.functional as F

    inputs = {name: batch[name] for name in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher.mobilebert(**inputs, output_hidden_states=True, output_attentions=True)
    s = student.mobilebert(**inputs, output_hidden_states=True, output_attentions=True)
    th, sh = t.hidden_states[layer + 1], s.hidden_states[layer + 1]
    ta, sa = t.attentions[layer], s.attentions[layer]
    weights = batch["attention_mask"].float()

    def row_mean(per_token):
        if per_token.ndim == 3:
            return (per_token * weights.unsqueeze(1)).sum((1, 2)) / (per_token.shape[1] * weights.sum(1))
        return (per_token * weights).sum(1) / weights.sum(1)

    def norm(x):
        return F.layer_norm(x, x.shape[-1:], eps=1e-12)

    feature = row_mean(((norm(th) - norm(sh)) ** 2).mean(-1))
    attention = row_mean(-(ta * torch.log(sa.clamp(min=torch.finfo(sa.dtype).tiny))).sum(-1))
    tm, sm = th.mean(-1), sh.mean(-1)
    tv, sv = ((th - tm.unsqueeze(-1)) ** 2).mean(-1), ((sh - sm.unsqueeze(-1)) ** 2).mean(-1)
    beta, gamma = row_mean((tm - sm) ** 2), row_mean((tv - sv).abs())
    hidden, attention_factor, beta_factor, gamma_factor = factors
    return (hidden * feature + attention_factor * attention + beta_factor * beta + gamma_factor * gamma).mean()


# --------------------------------------------------------------------------------------------
# Our side: the real Trainer, built as the commands build it
# --------------------------------------------------------------------------------------------

def our_trainer(task, config, model, data, output: Path):
    from mobilebert_paddle.training.trainer import Trainer

    return Trainer(task, config, model, None, data, [], output)


def finetune_case(batch: int, length: int, output: Path, seed: int) -> dict:
    import numpy as np
    import paddle

    from mobilebert_paddle.cli import parse_command_args
    from mobilebert_paddle.model.config import load_config
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering
    from mobilebert_paddle.tasks.registry import get_task
    from mobilebert_paddle.training.finetune import resolve_config

    task = get_task("squad1")
    args = parse_command_args("finetune", ["squad1", "--model", "unused", "--output", str(output),
                                           "--batch-size", str(batch), "--max-steps", "100000",
                                           "--max-seq-length", str(length), "--seed", str(seed)])
    config = resolve_config(args, task)
    model_config = load_config("mobilebert").replace(**task.config_changes())
    model_config.architectures = [MobileBertForQuestionAnswering.architecture]
    paddle.seed(seed)
    model = MobileBertForQuestionAnswering(model_config)
    rng = np.random.default_rng(seed)
    rows = 8 * batch
    lengths = rng.integers(length // 2, length + 1, rows)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int8)
    data = {"input_ids": (rng.integers(1000, model_config.vocab_size, (rows, length)) * mask).astype(np.int32),
            "token_type_ids": (np.arange(length)[None, :] >= 24).astype(np.int8) * mask,
            "attention_mask": mask,
            "start_positions": rng.integers(24, length // 2, rows), "end_positions": rng.integers(24, length // 2, rows)}
    trainer = our_trainer(task, config, model, data, output)
    hf = torch_twin(model, model_config, "MobileBertForQuestionAnswering")
    optimizer = torch_optimizer(hf, config, model)

    def torch_loss(batch_arrays):
        tensors = torch_tensors(batch_arrays)
        return hf(input_ids=tensors["input_ids"], token_type_ids=tensors["token_type_ids"],
                  attention_mask=tensors["attention_mask"], start_positions=tensors["start_positions"],
                  end_positions=tensors["end_positions"]).loss

    def rows_of(indices, step):
        return {name: value[indices] for name, value in data.items()}

    return {"trainer": trainer, "torch": (hf, optimizer, torch_loss), "rows_of": rows_of, "clip": config.max_grad_norm,
            "shape": f"{batch}x{length}"}


def pretraining_case(model_config, data_dir: Path, batch: int, optimizer_name: str, output: Path, seed: int,
                     extra: list | None = None) -> dict:
    import paddle

    from mobilebert_paddle.cli import parse_command_args
    from mobilebert_paddle.model.network import MobileBertForPreTraining
    from mobilebert_paddle.pretraining.pretrain import resolve_run_config
    from mobilebert_paddle.pretraining.task import MaskingSettings, PretrainingTask, masked_rows, open_data

    args = parse_command_args("pretrain", ["--config", "mobilebert", "--data", str(data_dir), "--output", str(output),
                                           "--batch-size", str(batch), "--max-steps", "100000", "--warmup-steps", "10",
                                           "--optimizer", optimizer_name, "--seed", str(seed), *(extra or [])])
    config = resolve_run_config(args)
    data = open_data(data_dir)
    task = PretrainingTask(MaskingSettings.from_args(config))
    model_config.architectures = ["MobileBertForPreTraining"]
    paddle.seed(seed)
    model = MobileBertForPreTraining(model_config)
    trainer = our_trainer(task, config, model, data, output)
    hf = torch_twin(model, model_config, "MobileBertForPreTraining")
    optimizer = torch_optimizer(hf, config, model)

    def rows_of(indices, step):
        return masked_rows(data, indices, task.masking, step)

    return {"trainer": trainer, "torch": (hf, optimizer, lambda arrays: torch_pretraining_loss(hf, torch_tensors(arrays))),
            "rows_of": rows_of, "clip": config.max_grad_norm, "shape": f"{batch}x{data.max_seq_length}"}


def distill_case(data_dir: Path, batch: int, output: Path, seed: int, size: str = "tiny") -> dict:
    """The tests' tiny teacher and student (size "tiny"), or the full-size IB-BERT teacher and
    MobileBERT student ("full"); one Trainer whose state.step is set to a stage-1 step of the
    last phase or to a stage-2 step before each timed step."""
    import paddle

    from mobilebert_paddle.cli import parse_command_args
    from mobilebert_paddle.model.config import MobileBertConfig, load_config
    from mobilebert_paddle.model.network import MobileBertForPreTraining
    from mobilebert_paddle.pretraining.distillation import (
        DistillationTask,
        LayerSchedule,
        copy_from_teacher,
        resolve_distill_config,
    )
    from mobilebert_paddle.pretraining.distillation_losses import TransferFactors
    from mobilebert_paddle.pretraining.task import MaskingSettings, masked_rows, open_data

    data = open_data(data_dir)
    if size == "tiny":
        configs = {name: MobileBertConfig(vocab_size=data.vocab_size, **values)
                   for name, values in (("teacher", TINY_TEACHER), ("student", TINY_STUDENT))}
    else:
        configs = {"teacher": load_config("ib-bert"), "student": load_config("mobilebert")}
    output.mkdir(parents=True, exist_ok=True)
    paddle.seed(seed)
    models = {}
    for name, model_config in configs.items():
        model_config.architectures = ["MobileBertForPreTraining"]
        models[name] = MobileBertForPreTraining(model_config)
    copy_from_teacher(models["teacher"], models["student"])
    phases = configs["student"].num_hidden_layers
    transfer_steps = 1000 * phases
    args = parse_command_args("distill", ["--teacher", "unused", "--student", "unused", "--data", str(data_dir),
                                          "--output", str(output), "--batch-size", str(batch), "--transfer-steps",
                                          str(transfer_steps), "--distill-steps", "100000", "--warmup-steps", "10",
                                          "--max-predictions-per-seq", "20", "--seed", str(seed)])
    config = resolve_distill_config(args)
    schedule = LayerSchedule(phases, transfer_steps, config.layer_schedule)
    task = DistillationTask(models["teacher"], schedule, TransferFactors(), config.distill_ground_truth_ratio,
                            config.distill_temperature, MaskingSettings.from_args(config))
    trainer = our_trainer(task, config, models["student"], data, output)
    torch_teacher = torch_twin(models["teacher"], configs["teacher"], "MobileBertForPreTraining", "eager").eval()
    for parameter in torch_teacher.parameters():
        parameter.requires_grad_(False)
    torch_student = torch_twin(models["student"], configs["student"], "MobileBertForPreTraining", "eager")
    optimizer = torch_optimizer(torch_student, config, models["student"])
    last_phase_step = transfer_steps - schedule.steps_per_phase // 2        # the middle of the last phase
    return {"trainer": trainer, "data": data, "task": task, "config": config, "schedule": schedule,
            "stages": {"stage 1 (last phase)": (last_phase_step, lambda arrays: torch_transfer_loss(
                           torch_student, torch_teacher, torch_tensors(arrays), phases - 1)),
                       "stage 2": (transfer_steps + 100, lambda arrays: torch_distill_loss(
                           torch_student, torch_teacher, torch_tensors(arrays), config.distill_ground_truth_ratio))},
            "torch_optimizer": optimizer, "torch_student": torch_student,
            "rows_of": lambda indices, step: masked_rows(data, indices, task.masking, step),
            "clip": config.max_grad_norm, "shape": f"{batch}x{data.max_seq_length}", "size": size}


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def our_step(trainer, step: int):
    """Trainer.run_step at update `step` (the batch and, for distillation, the stage follow from it)."""
    def run():
        trainer.state.step = step
        trainer.run_step()
    return run


def batch_rows(trainer, step: int):
    epoch, number = divmod(step, trainer.steps_per_epoch)
    trainer.sampler.set_epoch(epoch)
    return trainer.sampler.local_batch(number)


def torch_step(hf, optimizer, loss_fn, arrays: dict, clip: float):
    import torch

    def run():
        loss = loss_fn(arrays)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in hf.parameters() if p.grad is not None], clip)
        optimizer.step()
        optimizer.zero_grad()
    return run


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def time_interleaved(paths: dict, rounds: int, warmup: int) -> dict:
    """{name: [seconds per step]}: every path once per round, in order; warm-up rounds dropped."""
    times: dict = {name: [] for name in paths}
    for round_number in range(warmup + rounds):
        for name, run in paths.items():
            start = clock()
            run()
            elapsed = clock() - start
            if round_number >= warmup:
                times[name].append(elapsed)
        print(f"  round {round_number + 1}/{warmup + rounds}: " + ", ".join(
            f"{name} {1000 * elapsed[-1]:.0f} ms" for name, elapsed in times.items() if elapsed), file=sys.stderr,
            flush=True)
    return times


def eval_loss_check(our_loss, torch_loss) -> float:
    """Relative difference of the two losses on one batch (both models in eval mode)."""
    return abs(our_loss - torch_loss) / max(abs(torch_loss), 1e-12)


def summarise(times: dict, reference: str) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {name: {"median_ms": 1000 * medians[name], "min_ms": 1000 * min(values),
                   "ratio_to_torch": medians[name] / medians[reference], "steps": len(values)}
            for name, values in times.items()}


def run_simple_case(name: str, case: dict, rounds: int, warmup: int, first_step: int = 0) -> dict:
    """Ours vs PyTorch on the batches of steps first_step, first_step + 1, ... (the same rows for both)."""
    import paddle
    import torch

    trainer, (hf, optimizer, loss_fn), rows_of = case["trainer"], case["torch"], case["rows_of"]
    check_rows = batch_rows(trainer, first_step)
    arrays = rows_of(check_rows, first_step)
    trainer.raw_model.eval()
    hf.eval()
    with paddle.no_grad():
        inputs, labels = trainer.task.make_batch(trainer.data, check_rows, first_step)
        ours = float(trainer.task.compute_loss(trainer.model, inputs, labels, first_step)[0].mean())
    with torch.no_grad():
        theirs = float(loss_fn(arrays))
    trainer.raw_model.train()
    hf.train()
    counter = {"ours": first_step, "torch": first_step}

    def ours_step():
        our_step(trainer, counter["ours"])()
        counter["ours"] += 1

    def torch_one():
        step = counter["torch"]
        rows = batch_rows(trainer, step)
        step_arrays = rows_of(rows, step)
        torch_step(hf, optimizer, loss_fn, step_arrays, case["clip"])()
        counter["torch"] += 1

    times = time_interleaved({"PyTorch": torch_one, "ours": ours_step}, rounds, warmup)
    result = {"case": name, "shape": case["shape"], "loss_check": {"ours": ours, "torch": theirs,
                                                                   "relative_difference": eval_loss_check(ours, theirs)},
              "paths": summarise(times, "PyTorch")}
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def run_distill_case(case: dict, rounds: int, warmup: int) -> list:
    """Each stage on its own (as a run takes them: a stretch of stage-1 steps, then stage 2),
    ours and PyTorch interleaved on the same step's batch."""
    import paddle
    import torch

    trainer = case["trainer"]
    results, medians, checks = [], {}, {}
    for stage, (first_step, loss_fn) in case["stages"].items():     # every check before any update
        rows = batch_rows(trainer, first_step)
        arrays = case["rows_of"](rows, first_step)
        trainer.raw_model.eval()
        case["torch_student"].eval()
        with paddle.no_grad():
            inputs, labels = trainer.task.make_batch(trainer.data, rows, first_step)
            ours = float(trainer.task.compute_loss(trainer.model, inputs, labels, first_step)[0].mean())
        with torch.no_grad():
            theirs = float(loss_fn(arrays))
        checks[stage] = {"ours": ours, "torch": theirs, "relative_difference": eval_loss_check(ours, theirs)}
    trainer.raw_model.train()
    case["torch_student"].train()
    for stage, (first_step, loss_fn) in case["stages"].items():
        check = checks[stage]
        counter = {"step": first_step}

        def ours_step(counter=counter):
            our_step(trainer, counter["step"])()

        def torch_one(counter=counter, loss_fn=loss_fn):
            step = counter["step"]
            step_arrays = case["rows_of"](batch_rows(trainer, step), step)
            torch_step(case["torch_student"], case["torch_optimizer"], loss_fn, step_arrays, case["clip"])()
            counter["step"] += 1       # ours runs first in a round: both take this step's batch

        times = time_interleaved({"ours": ours_step, "PyTorch": torch_one}, rounds, warmup)
        medians[stage] = statistics.median(times["ours"])
        result = {"case": f"distill {stage}, {case['size']}", "shape": case["shape"], "loss_check": check,
                  "paths": summarise(times, "PyTorch")}
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    stage1, stage2 = (medians[stage] for stage in case["stages"])
    results.append({"case": f"distill stage 2 / stage 1 (ours), {case['size']}", "ratio": stage2 / stage1})
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def machine() -> dict:
    import paddle
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
            "mkl_dispatch": os.environ.get("MKL_DEBUG_CPU_TYPE", "default"),
            "paddle": paddle.__version__, "torch": torch.__version__, "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d")}


def table(results: list) -> str:
    lines = ["| step | shape | PyTorch ms median (min) | ours ms median (min) | ours / PyTorch |",
             "|---|---|---|---|---|"]
    for result in results:
        if "paths" not in result:
            continue
        paths = result["paths"]
        torch_row, ours_row = paths["PyTorch"], paths["ours"]
        lines.append(f"| {result['case']} | {result['shape']} | {torch_row['median_ms']:.0f} ({torch_row['min_ms']:.0f}) | "
                     f"{ours_row['median_ms']:.0f} ({ours_row['min_ms']:.0f}) | {ours_row['ratio_to_torch']:.2f} |")
    for result in results:
        if "ratio" in result:
            lines.append(f"\n{result['case']}, medians: {result['ratio']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="work dir (data dirs are reused)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--shapes", default="4x128,2x384", help="full-size shapes (BxT)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                        help="wall: elapsed time (the figure that counts, on an idle machine); cpu: the "
                             "process's CPU time (steadier on a busy machine with --threads 1)")
    parser.add_argument("--plain-mkl", action="store_true",
                        help="leave Paddle's MKL to its own CPU dispatch (the CLI picks AVX2 on AMD processors)")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if not args.plain_mkl:
        from mobilebert_paddle.core.device import use_avx2_mkl_on_amd

        use_avx2_mkl_on_amd()             # as the CLI does
    import torch

    from mobilebert_paddle.core.device import select_device
    from mobilebert_paddle.model.config import MobileBertConfig, load_config

    select_device("cpu")                  # as every command does (with its CPU kernel settings)
    torch.set_num_threads(args.threads)
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    cases = [case for case in args.cases.split(",") if case]
    shapes = [tuple(int(part) for part in shape.split("x")) for shape in args.shapes.split(",")]
    lengths = sorted({length for _, length in shapes} | {64}) if set(cases) - {"finetune-qa"} else []
    data_dirs = prepare_data(root, lengths)
    results = []
    for case in cases:
        if case == "finetune-qa":
            for batch, length in shapes:
                results.append(run_simple_case("finetune QA (AdamW)", finetune_case(batch, length, root / "run", args.seed),
                                               args.rounds, args.warmup))
        elif case == "pretrain":
            for batch, length in shapes:
                for optimizer_name in ("lamb", "adamw"):
                    built = pretraining_case(load_config("mobilebert"), data_dirs[length], batch, optimizer_name,
                                             root / "run", args.seed)
                    results.append(run_simple_case(f"pretrain MobileBERT ({optimizer_name.upper()})", built,
                                                   args.rounds, args.warmup))
        elif case == "pretrain-tiny":
            for name, values in (("IB-BERT-layout tiny teacher", TINY_TEACHER), ("tiny MobileBERT student", TINY_STUDENT)):
                model_config = MobileBertConfig(vocab_size=30522, **values)
                built = pretraining_case(model_config, data_dirs[64], 32, "lamb", root / "run", args.seed)
                results.append(run_simple_case(f"pretrain {name} (LAMB)", built, args.rounds, args.warmup))
        elif case == "distill":
            results.extend(run_distill_case(distill_case(data_dirs[64], 32, root / "run", args.seed),
                                            args.rounds, args.warmup))
        elif case == "distill-full":
            batch, length = shapes[0]
            results.extend(run_distill_case(distill_case(data_dirs[length], batch, root / "run", args.seed, "full"),
                                            args.rounds, args.warmup))
        else:
            raise SystemExit(f"unknown case {case!r} (one of {', '.join(CASES)})")
    report = {"machine": machine(), "settings": vars(args), "results": results}
    (root / "training_speed.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["machine"]))
    print(table(results))


if __name__ == "__main__":
    main()
