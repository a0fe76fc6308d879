"""optim.py: train.py's optimizers and learning-rate schedules.

    optimizer="adamw"  AdamW on every parameter (GPT-2, nanoGPT): weight decay on matrices only.
    optimizer="muon"   Muon (torch.optim.Muon: momentum, then the update orthogonalised by
                       Newton-Schulz iterations) on the blocks' weight matrices, AdamW on the rest
                       (embeddings, the LM head, gains, biases, mixing scalars), which Muon is not
                       meant for.

    lr_schedule="cosine"  linear warmup, cosine decay to min_lr at lr_decay_iters (GPT-2, nanoGPT)
    lr_schedule="wsd"     warmup-stable-decay: linear warmup, constant, then linear decay to min_lr
                          over the last cooldown_fraction of lr_decay_iters (the speedrun's trapezoid)

Every parameter group keeps its own peak and final rates (group["peak_lr"], group["min_lr"]; Muon's
final rate is min_lr / learning_rate of its peak), so one schedule drives optimizers with
different rates.
"""

import math

import torch

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def make_optimizers(model, cfg, device_type):
    """A list of optimizers over all of the model's trainable parameters, each parameter in one."""
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer={cfg['optimizer']!r} must be one of {OPTIMIZERS}")
    if cfg["lr_schedule"] not in SCHEDULES:  # checked here, at set-up, not at the first step
        raise ValueError(f"lr_schedule={cfg['lr_schedule']!r} must be one of {SCHEDULES}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    hidden = {name for name, p in params.items()
              if cfg["optimizer"] == "muon" and name.startswith("transformer.h.") and p.dim() == 2}
    matrices = [p for name, p in params.items() if p.dim() >= 2 and name not in hidden]
    vectors = [p for p in params.values() if p.dim() < 2]
    adamw = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg["weight_decay"]},
         {"params": vectors, "weight_decay": 0.0}],
        lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), fused=device_type == "cuda")
    for group in adamw.param_groups:
        group.update(peak_lr=cfg["learning_rate"], min_lr=cfg["min_lr"])
    if not hidden:
        return [adamw]
    muon = torch.optim.Muon([params[name] for name in sorted(hidden)], lr=cfg["muon_learning_rate"],
                            momentum=cfg["muon_momentum"], weight_decay=0.0, adjust_lr_fn="original")
    muon.param_groups[0].update(peak_lr=cfg["muon_learning_rate"],
                                min_lr=cfg["muon_learning_rate"] * cfg["min_lr"] / cfg["learning_rate"])
    return [adamw, muon]


def scheduled_lr(it, cfg, peak, minimum):
    """The learning rate at step it of a group whose rate peaks at peak and ends at minimum
    (lr_schedule checked by make_optimizers)."""
    if not cfg["decay_lr"]:
        return peak
    if it < cfg["warmup_iters"]:
        return peak * (it + 1) / (cfg["warmup_iters"] + 1)
    if cfg["lr_schedule"] == "wsd":
        cooldown = max(1, round(cfg["cooldown_fraction"] * cfg["lr_decay_iters"]))
        left = max(0, cfg["lr_decay_iters"] - it)  # steps until the end of the decay
        return peak if left >= cooldown else minimum + (peak - minimum) * left / cooldown
    if it > cfg["lr_decay_iters"]:
        return minimum
    ratio = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    return minimum + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - minimum)


def set_learning_rates(optimizers, it, cfg):
    """Every group's rate for step it; returns AdamW's (learning_rate's schedule), for the logs."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(it, cfg, group["peak_lr"], group["min_lr"])
    return scheduled_lr(it, cfg, cfg["learning_rate"], cfg["min_lr"])
