"""optim.py: train.py's optimizers and learning-rate schedules.

    optimizer="adamw"  AdamW on every parameter (GPT-2, nanoGPT): weight decay on matrices only.
    optimizer="muon"   Muon (below: momentum, then the update orthogonalised by Newton-Schulz
                       iterations) on the blocks' weight matrices, AdamW on the rest (embeddings,
                       the LM head, gains, biases, mixing scalars), which Muon is not meant for.

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
    muon = Muon([params[name] for name in sorted(hidden)], lr=cfg["muon_learning_rate"],
                momentum=cfg["muon_momentum"],
                orthogonalize_dtype=torch.bfloat16 if device_type == "cuda" else torch.float32)
    muon.param_groups[0].update(peak_lr=cfg["muon_learning_rate"],
                                min_lr=cfg["muon_learning_rate"] * cfg["min_lr"] / cfg["learning_rate"])
    return [adamw, muon]


def orthogonalize(update, dtype, steps=5, eps=1e-7):
    """Newton-Schulz: update -> roughly U V^T, where U S V^T is update's SVD (every singular value
    pushed towards 1, so each direction of the step moves the weights by about as much).

    X is scaled so its spectral norm is <= 1 (the Frobenius norm bounds it), then each step applies
    the odd quintic X <- a X + b (X X^T) X + c (X X^T)^2 X, which maps every singular value s to
    a s + b s^3 + c s^5. The coefficients (Keller Jordan's) maximise the slope at 0, so small singular
    values grow fast; after five steps they land in roughly [0.7, 1.2] rather than exactly 1, which
    trains as well. X X^T is the smaller Gram matrix when X is wide, so tall matrices are transposed.
    The matmuls run in dtype: bfloat16 on GPUs (what Muon's authors use), float32 on CPUs, where
    bfloat16 matmuls are many times slower than float32 ones (docs/experiments.md, "Muon on CPU").
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b XX^T + c (XX^T)^2
        x = torch.addmm(x, polynomial, x, beta=a)  # a X + polynomial X
    return (x.T if tall else x).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then the step orthogonalised (MomentUm Orthogonalized by Newton-Schulz), for 2-D
    weight matrices: buf <- m buf + (1 - m) g; update = g + m (buf - g) (Nesterov);
    W <- W - lr * orthogonalize(update). The same rule as torch.optim.Muon with
    adjust_lr_fn="original" and no weight decay, but with the orthogonalisation's dtype a choice,
    since torch's always multiplies in bfloat16 (test: equal to torch's in bfloat16)."""

    def __init__(self, params, lr, momentum, orthogonalize_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.orthogonalize_dtype = orthogonalize_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # the key torch.optim.Muon uses: old checkpoints resume
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5  # "original": tall matrices step more
                p.add_(orthogonalize(update, self.orthogonalize_dtype), alpha=-group["lr"] * scale)


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
