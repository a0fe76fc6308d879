"""train.py: train the GPT on the bins prepare.py wrote.

    python train.py config/cpu_demo.py                      # the CPU demo (data: python prepare.py)
    python train.py config/mini_lm.py                       # the flagship run on one GPU
    torchrun --nproc_per_node=4 train.py                    # the same run on 4 GPUs
    python train.py config/cpu_demo.py --init_from=resume   # continue out/last.pt exactly
    python train.py CONFIG --init_from=out/best.pt          # fine-tune a checkpoint on CONFIG's data
    python train.py config/mini_lm.py --params_only         # the model's parameters, part by part

The defaults are the flagship run, mini_lm (config/mini_lm.py names the same values): its model and
schedule on data/mini_lm (python prepare.py config/prepare_mini_lm.py). Its tokens per optimizer
step stay the same on 1, 2, 4 or 8 ranks: the accumulation micro-steps are shared between ranks.

Mixed precision (bf16 autocast where the GPU has it natively, fp16 with a gradient scaler on older
GPUs such as the T4 and V100; core/hardware.py says why in the log), gradient accumulation
(synchronised across DDP ranks on the last micro-step only), gradient checkpointing, Muon on the
blocks' matrices and AdamW on the rest (warmup, then a warmup-stable-decay or cosine schedule),
gradient clipping, a guard against non-finite steps, periodic evaluation with a text sample,
TensorBoard logs, and self-contained checkpoints written atomically (out/last.pt, out/best.pt) from
which --init_from=resume continues with the same batches, learning rate and random streams.
Fine-tuning (init_from=PATH.pt) starts from a checkpoint's weights, model settings and tokenizer,
with a fresh optimizer and schedule; where the data has a loss mask (training/batches.py), only the
targets it marks count, each step's loss the mean over all of them on every rank.
"""

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from core import checkpoint, configurator, cpu_memory, hardware
from core.tokenizer import Tokenizer
from model import GPT, GPTConfig, MODEL_SPEC
from training import optim, ranks, run_checkpoint
from training.batches import Batches
from training.loggers import Loggers

SPEC = {
    # i/o
    "out_dir": ("out", "checkpoints (last.pt, best.pt), TensorBoard logs (tb/)"),
    "dataset": ("mini_lm", "folder under data_root written by prepare.py"),
    "data_root": ("data", "parent folder of datasets"),
    "init_from": ("scratch", "'scratch', 'resume' (from out_dir/last.pt), or a checkpoint file to "
                             "fine-tune (its weights, model and tokenizer; a fresh optimizer)"),
    "eval_interval": (200, "steps between evaluations (and best.pt updates)"),
    "eval_iters": (50, "batches per split in each evaluation"),
    "eval_only": (False, "evaluate once and exit"),
    "params_only": (False, "print the model's parameter breakdown and exit (no training; vocab_size from "
                           "the dataset's meta.json when it is prepared, else GPTConfig's)"),
    "log_interval": (10, "steps between log lines"),
    "checkpoint_interval": (200, "steps between writes of last.pt (0: only at the end)"),
    "checkpoint_minutes": (10.0, "also write last.pt when this many minutes passed since the last"),
    "keep_last": (0, "also keep the last K step-numbered checkpoints (ckpt_<step>.pt)"),
    "sample_interval": (200, "steps between printed text samples (0: never)"),
    "sample_prompt": ("The ", "prompt of the text samples"),
    "sample_tokens": (48, "new tokens per sample"),
    "tensorboard": (True, "log to out_dir/tb"),
    "wandb_log": (False, "log to Weights & Biases (pip install wandb; WANDB_MODE=offline: to "
                         "out_dir/wandb without a network)"),
    "wandb_project": ("mini-lm", "W&B project"),
    "mlflow_log": (False, "log to MLflow (pip install mlflow)"),
    "mlflow_tracking_uri": ("", "MLflow server or store (default: $MLFLOW_TRACKING_URI, else "
                                "MLflow's local default)"),
    "mlflow_experiment": ("mini-lm", "MLflow experiment"),
    # data and batches
    "batch_size": (16, "sequences per micro-step (per rank)"),
    "batch_order": ("epoch", "'random' windows (with replacement) or 'epoch' (each non-overlapping "
                             "window once per epoch, in a seeded order)"),
    "gradient_accumulation_steps": (8, "micro-steps per optimizer step, shared between all ranks"),
    # the model: GPTConfig's fields and defaults (model.py), vocab_size from the data
    **{key: value for key, value in MODEL_SPEC.items() if key != "vocab_size"},
    # optimizer and schedule (training/optim.py)
    "optimizer": ("muon", "'adamw', or 'muon' (Muon on the blocks' matrices, AdamW on the rest)"),
    "learning_rate": (1e-3, "AdamW's peak learning rate"),
    "muon_learning_rate": (0.02, "Muon's peak learning rate"),
    "muon_momentum": (0.95, "Muon's momentum"),
    "max_iters": (2000, "optimizer steps in total"),
    "max_minutes": (0.0, "also stop after this many minutes of training, evaluating and saving as at "
                         "max_iters (0: no limit); the schedule still follows lr_decay_iters"),
    "weight_decay": (0.1, "AdamW weight decay on matrices"),
    "beta1": (0.9, "AdamW beta1"),
    "beta2": (0.95, "AdamW beta2"),
    "grad_clip": (1.0, "clip the global gradient norm to this (0: no clipping)"),
    "decay_lr": (True, "decay the learning rate after warmup (else constant)"),
    "lr_schedule": ("wsd", "'cosine' (decay from warmup to lr_decay_iters) or 'wsd' (constant, then "
                           "linear decay over the last cooldown_fraction of lr_decay_iters)"),
    "cooldown_fraction": (0.4, "wsd: the share of lr_decay_iters over which the rate decays"),
    "warmup_iters": (100, "linear warmup steps"),
    "lr_decay_iters": (2000, "step at which the decay reaches min_lr (usually max_iters)"),
    "min_lr": (1e-4, "learning rate at the end of the decay (~learning_rate / 10; Muon's in proportion)"),
    "max_bad_steps": (5, "stop after this many consecutive steps with a non-finite loss or gradient"),
    # system
    "device": ("auto", "'auto' (cuda if present, else mps on an Apple GPU, else cpu), 'cpu', 'cuda', "
                       "'cuda:1', 'mps' ..."),
    "dtype": ("auto", "'auto' (bf16 on GPUs with native bf16, fp16 with a gradient scaler on older "
                      "GPUs, fp32 on CPU), 'float32', 'bfloat16', 'float16'"),
    "compile": (True, "torch.compile the model"),
    "seed": (1337, "seeds the weights, the batch order and dropout"),
    "peak_flops": (0.0, "device peak FLOP/s for MFU (0: known GPUs detected, otherwise no MFU)"),
    "keep_freed_memory": (True, "CPU: keep freed memory in the process for reuse (core/cpu_memory.py; "
                                "faster steps for more resident memory, see BENCHMARKS.md)"),
}
# Keys that may differ between a run and its resumption without breaking exactness.
RESUME_MAY_CHANGE = {"out_dir", "init_from", "max_iters", "max_minutes", "eval_only", "params_only",
                     "log_interval", "device",
                     "tensorboard", "wandb_log", "mlflow_log", "mlflow_tracking_uri",
                     "checkpoint_interval", "checkpoint_minutes", "keep_last", "sample_interval", "compile",
                     "keep_freed_memory"}
MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]
# the model keys a fine-tune may set; the others are the checkpoint's
FINE_TUNE_MAY_SET = {"dropout", "attention", "kernels", "gradient_checkpointing"}


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite steps); the message says why and what to change."""


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="train.py")
    with configurator.errors_exit(checkpoint.CheckpointError, TrainingStopped, ValueError):
        if cfg["params_only"]:
            return print_parameters(cfg)
        return train(cfg)


def print_parameters(cfg):
    """The model's settings, then its parameters per part in millions (tied weights counted once)."""
    meta_path = Path(cfg["data_root"]) / cfg["dataset"] / "meta.json"
    vocab_size = (json.loads(meta_path.read_text())["vocab_size"] if meta_path.exists()
                  else GPTConfig.vocab_size)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = GPT(GPTConfig(**{k: cfg[k] for k in MODEL_KEYS}, vocab_size=vocab_size))
    print({f.name: getattr(model.config, f.name) for f in fields(GPTConfig)})
    for name, n in model.parameter_breakdown().items():
        print(f"{name:>32}: {n / 1e6:8.2f}M")


def train(cfg):
    """Set up torch.distributed when launched by torchrun, run the training, always tear it down."""
    device = hardware.resolve_device(cfg["device"])
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_training(cfg, False, 0, 1, device)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    ranks.micro_steps_per_rank(cfg["gradient_accumulation_steps"], world, cfg["batch_size"])  # early
    hardware.check_ddp(device, world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    try:
        return run_training(cfg, True, rank, world, device)
    finally:
        dist.destroy_process_group()


@dataclass
class Run:
    """What stays fixed for the whole run: settings, data, model, optimizer, where output goes."""
    cfg: dict
    ddp: bool
    rank: int
    world: int
    device: torch.device
    micro_steps: int              # micro-batches per optimizer step on each rank
    autocast: object              # torch.autocast, or a null context for fp32
    out_dir: Path
    folder: Path                  # the prepared dataset
    batches: Batches
    tokenizer: Tokenizer
    model: torch.nn.Module        # what the training step calls: compiled and/or DDP-wrapped
    raw_model: GPT                # the plain module: evaluation, sampling, state_dict
    optimizers: list              # optim.make_optimizers: AdamW, and Muon if chosen
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    loggers: Loggers
    unigram: float                # the unigram baseline's validation loss
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float             # 0: unknown device, no MFU

    @property
    def master(self):
        return self.rank == 0


@dataclass
class State:
    """What changes as training goes; a checkpoint stores it and resuming restores it."""
    iter_num: int = 0
    best_val_loss: float = math.inf
    tokens_seen: int = 0
    history: list = field(default_factory=list)  # one record per evaluation


def model_arguments(cfg, meta, ckpt, folder):
    """GPTConfig arguments: the checkpoint's when resuming, else the config's with the data's
    vocabulary."""
    if ckpt is not None:
        args = ckpt["model_args"]
    else:
        args = {k: cfg[k] for k in MODEL_KEYS}
        args["vocab_size"] = meta["vocab_size"]
    if args["vocab_size"] != meta["vocab_size"]:
        raise configurator.ConfigError(f"the checkpoint's vocab_size {args['vocab_size']} differs "
                                       f"from {folder}'s {meta['vocab_size']}: another tokenizer")
    return args


def load_start_checkpoint(cfg, out_dir, master):
    """The checkpoint the run starts from: out_dir/last.pt for init_from='resume' (warning about
    settings that changed), the file named for a fine-tune, None for 'scratch'."""
    if cfg["init_from"] == "scratch":
        return None
    if cfg["init_from"] != "resume":
        if not cfg["init_from"].endswith(".pt"):
            raise configurator.ConfigError(f"init_from={cfg['init_from']!r} must be 'scratch', "
                                           "'resume' or a checkpoint file (.pt) to fine-tune")
        return checkpoint.load(cfg["init_from"])
    ckpt = checkpoint.load(out_dir / "last.pt")
    changed = {k: (ckpt["config"].get(k), v) for k, v in cfg.items()
               if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v}
    if changed and master:
        print(f"warning: resuming with settings that differ from the checkpoint's (the run "
              f"will not match an uninterrupted one): {changed}", file=sys.stderr)
    return ckpt


def set_up(cfg, ddp, rank, world, device):
    """(Run, State): precision and kernels for the device, the data, the model (restored from
    last.pt when resuming), optimizer, scaler and loggers; prints what was chosen and why."""
    master = rank == 0
    if device.type == "cpu" and cfg["keep_freed_memory"]:
        cpu_memory.keep_freed_memory()
    micro_steps = ranks.micro_steps_per_rank(cfg["gradient_accumulation_steps"], world,
                                             cfg["batch_size"])
    dtype, dtype_reason = hardware.choose_dtype(cfg["dtype"], device)
    backend, backend_reason = hardware.choose_kernels(cfg["kernels"], device, dtype)
    hardware.check_compile(cfg["compile"], dtype, device)
    out_dir, folder = Path(cfg["out_dir"]), Path(cfg["data_root"]) / cfg["dataset"]
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_start_checkpoint(cfg, out_dir, master)
    fine_tune = ckpt is not None and cfg["init_from"] != "resume"
    resume = ckpt is not None and not fine_tune
    if fine_tune:  # the model it starts from, block_size included
        cfg = {**cfg, **{k: ckpt["model_args"][k] for k in MODEL_KEYS if k not in FINE_TUNE_MAY_SET}}
    batches = Batches(folder, cfg["block_size"], cfg["batch_size"], cfg["seed"], cfg["batch_order"])
    tokenizer = Tokenizer.load(folder / batches.meta.get("tokenizer", "tokenizer.json"))
    if fine_tune and tokenizer.to_dict() != ckpt["tokenizer"]:
        raise configurator.ConfigError(f"{folder} was tokenized with another tokenizer than "
                                       f"{cfg['init_from']}'s; prepare it with the checkpoint's")
    torch.manual_seed(cfg["seed"])
    raw_model = GPT(GPTConfig(**model_arguments(cfg, batches.meta, None if fine_tune else ckpt,
                                                folder)))
    if ckpt:
        raw_model.load_state_dict(ckpt["model"])
    raw_model.to(device).use_kernels(backend)
    model = torch.compile(raw_model) if cfg["compile"] else raw_model
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = raw_model.parameter_breakdown()
    config = raw_model.config
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    optimizers = optim.make_optimizers(raw_model, cfg, device.type)
    run = Run(cfg=cfg, ddp=ddp, rank=rank, world=world, device=device, micro_steps=micro_steps,
              autocast=autocast, out_dir=out_dir, folder=folder, batches=batches,
              tokenizer=tokenizer, model=model, raw_model=raw_model, optimizers=optimizers,
              scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
              loggers=Loggers(cfg, master, ckpt.get("tracking") if resume else None),
              unigram=batches.unigram_loss(),
              tokens_per_step=cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"],
              flops_per_token=raw_model.flops_per_token(cfg["block_size"]),
              peak_flops=hardware.peak_flops(device, cfg["peak_flops"]))
    state = State(*run_checkpoint.restore_run(run, ckpt)) if resume else State()
    if master:
        print(json.dumps(cfg, indent=1, default=str))
        parts = ", ".join(f"{v / 1e6:.2f}M {k}" for k, v in params.items() if v and k != "total")
        print(f"model: {params['total'] / 1e6:.2f}M parameters ({parts}"
              f"{'; the LM head is the token embedding' if config.tied_head else ''}); "
              f"{world} rank(s), {run.tokens_per_step:,} tokens per step ({micro_steps} micro-step(s) "
              f"of {cfg['batch_size']} sequences per rank); unigram baseline val loss {run.unigram:.3f}")
        print(f"device: {hardware.describe_device(device)}")
        print(f"precision: {dtype_reason}")
        print(f"kernels: {backend_reason}")
        print(f"attention: {hardware.describe_attention(config.attention, backend, device)}")
        print(f"compile: {hardware.describe_compile(cfg['compile'], device)}", flush=True)
        if fine_tune:
            print(f"fine-tuning {cfg['init_from']}: its weights, model and tokenizer, a fresh "
                  f"optimizer and schedule; loss on {'masked' if batches.masks else 'all'} targets")
        run.loggers.text("config", "```\n" + json.dumps(cfg, indent=1, default=str) + "\n```",
                         state.iter_num)
    return run, state


@torch.no_grad()
def evaluate(run):
    """Mean loss over the same eval_iters batches of each split every time."""
    cfg = run.cfg
    run.raw_model.eval()
    generator = torch.Generator().manual_seed(cfg["seed"] + 1)
    result = {}
    for split in ("train", "val"):
        total, count = 0.0, 0  # each batch's mean loss weighed by the targets it counts
        for _ in range(cfg["eval_iters"]):
            starts = run.batches.windows(split, cfg["batch_size"], generator)
            x, y = run.batches.get(split, starts, run.device)
            n = run.batches.targets(split, starts)
            if n:
                with run.autocast:
                    total += run.raw_model(x, y)[1].item() * n
                count += n
        result[split] = total / count if count else math.nan
    run.raw_model.train()
    return result


def train_step(run):
    """One optimizer step: micro_steps micro-batches on each rank, gradients averaged over all
    ranks (synchronised on the last micro-step only), clipped, and applied unless non-finite.
    Returns (mean loss on this rank, gradient norm, whether both were finite)."""
    cfg, model, scaler = run.cfg, run.model, run.scaler
    starts = run.batches.train_windows(cfg["gradient_accumulation_steps"] * cfg["batch_size"])
    step_targets = run.batches.targets("train", starts)  # over every rank's windows
    loss_sum, count = torch.zeros((), device=run.device), 0
    for micro in range(run.micro_steps):
        first = (run.rank * run.micro_steps + micro) * cfg["batch_size"]
        mine = starts[first:first + cfg["batch_size"]]
        x, y = run.batches.get("train", mine, run.device)
        n = run.batches.targets("train", mine)
        sync = not run.ddp or micro == run.micro_steps - 1
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with run.autocast:
                logits, loss = model(x, y)
            # a micro-batch weighs its share of the step's targets (1 / micro_steps without a loss
            # mask; DDP then averages the ranks, hence world): the step's loss is the mean over
            # all of them. One without targets joins with a zero gradient, as DDP needs.
            weighted = loss / (step_targets / (n * run.world)) if n else logits.sum() * 0.0
            scaler.scale(weighted).backward()
        if n:
            loss_sum += loss.detach().float() * n  # read once per step: no sync per micro-step
            count += n
    for optimizer in run.optimizers:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(),
                                               cfg["grad_clip"] if cfg["grad_clip"] > 0 else math.inf)
    loss_sum = loss_sum.item()
    finite = math.isfinite(loss_sum) and bool(torch.isfinite(grad_norm))
    if scaler.is_enabled():
        for optimizer in run.optimizers:
            scaler.step(optimizer)  # skips the step itself when fp16 gradients overflowed
        scaler.update()
    elif finite:
        for optimizer in run.optimizers:
            optimizer.step()
    for optimizer in run.optimizers:
        optimizer.zero_grad(set_to_none=True)
    return loss_sum / max(count, 1), float(grad_norm), finite


def evaluate_and_report(run, state, lr):
    """Evaluate, record and print the losses, write best.pt on a new best, print a text sample;
    returns the updated state."""
    cfg, step = run.cfg, state.iter_num
    losses = evaluate(run)
    record = {"iter": step, "tokens": state.tokens_seen, "train_loss": losses["train"],
              "val_loss": losses["val"], "val_ppl": math.exp(min(losses["val"], 50)), "lr": lr}
    if not state.history or state.history[-1]["iter"] != step:
        state = replace(state, history=state.history + [record])
    if run.master:
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
              f"val perplexity {record['val_ppl']:.2f} (unigram baseline loss {run.unigram:.3f})",
              flush=True)
        run.loggers.scalars({"loss/train": losses["train"], "loss/val": losses["val"],
                             "perplexity/val": record["val_ppl"]}, step)
        run.loggers.record("eval", record)
    if losses["val"] < state.best_val_loss and step > 0 and not cfg["eval_only"]:
        state = replace(state, best_val_loss=losses["val"])
        run_checkpoint.save_run(run, state, "best.pt")
    if cfg["sample_interval"] and step % cfg["sample_interval"] == 0 and run.master \
            and cfg["sample_tokens"] > 0:
        prompt = run.tokenizer.encode(cfg["sample_prompt"]) or [run.tokenizer.eot_id]
        new = run.raw_model.generate([prompt], cfg["sample_tokens"], temperature=0.8, top_k=200,
                                     seed=cfg["seed"])[0]
        text = cfg["sample_prompt"] + run.tokenizer.decode(new)
        print(f"sample: {text!r}", flush=True)
        run.loggers.text("sample", text, step)
    return state


def log_step(run, state, lr, loss, grad_norm, seconds, pace):
    """The log line and the logged scalars of one step: loss, lr, grad norm, tokens/s, MFU, memory;
    pace: seconds per step since this process started training, evaluations included, for the
    minutes left (one step's time would swing with a busy machine)."""
    tokens_per_s = run.tokens_per_step / seconds
    mfu = run.flops_per_token * tokens_per_s / run.peak_flops if run.peak_flops else None
    memory_gb = hardware.peak_memory_gb(run.device)
    minutes_left = (run.cfg["max_iters"] - state.iter_num) * pace / 60
    print(f"iter {state.iter_num}: loss {loss:.4f}, lr {lr:.2e}, grad norm {grad_norm:.3f}, "
          f"{seconds * 1000:.0f} ms, {tokens_per_s:,.0f} tokens/s"
          + (f", MFU {mfu:.1%}" if mfu is not None else "") + f", memory {memory_gb:.2f} GB, "
          f"~{minutes_left:.1f} min to step {run.cfg['max_iters']:,}", flush=True)
    values = {"loss/train_step": loss, "lr": lr, "grad_norm": grad_norm,
              "tokens_per_s": tokens_per_s, "memory_gb": memory_gb}
    if mfu is not None:
        values["mfu"] = mfu
    run.loggers.scalars(values, state.iter_num)
    run.loggers.record("step", {"iter": state.iter_num, "tokens": state.tokens_seen, "loss": loss,
                                "lr": lr, "grad_norm": grad_norm, "seconds": seconds,
                                "tokens_per_s": tokens_per_s, "mfu": mfu, "memory_gb": memory_gb})


def run_training(cfg, ddp, rank, world, device):
    run, state = set_up(cfg, ddp, rank, world, device)
    status = "FAILED"  # the tracked run's status unless training ends or is stopped
    try:
        with ranks.StopRequest() as stop:
            state = train_loop(run, state, stop)
        if not run.cfg["eval_only"] and stop.signal is None:
            run_checkpoint.write_last(run, state)
        status = "FINISHED" if stop.signal is None else "KILLED"
    finally:
        run.loggers.close(status)
    return run.out_dir


def train_loop(run, state, stop):
    """Train until max_iters, max_minutes or a stop request (SIGTERM/SIGINT); the final state."""
    cfg, device = run.cfg, run.device  # a fine-tune's model settings are its checkpoint's
    started = last_save = time.time()
    first_step, bad_steps, time_up = state.iter_num, 0, False
    run.model.train()
    while True:
        # the learning rates of this step: linear warmup, then the schedule's decay to min_lr
        lr = optim.set_learning_rates(run.optimizers, state.iter_num, cfg)

        # evaluate every eval_interval steps and at the end (loss, best.pt, a text sample)
        finished = cfg["eval_only"] or state.iter_num >= cfg["max_iters"] or time_up
        if state.iter_num % cfg["eval_interval"] == 0 or finished:
            state = evaluate_and_report(run, state, lr)
        if finished:
            if time_up and run.master:
                print(f"stopped at step {state.iter_num}: max_minutes={cfg['max_minutes']} "
                      "reached", flush=True)
            break

        # one optimizer step; a non-finite one is skipped, max_bad_steps of them in a row stop
        t0 = time.time()
        loss, grad_norm, finite = train_step(run)
        bad_steps = 0 if finite or run.scaler.is_enabled() else bad_steps + 1
        if bad_steps and run.master:
            print(f"warning: step {state.iter_num} has a non-finite loss or gradient norm; "
                  f"skipped ({bad_steps} in a row)", file=sys.stderr)
        if bad_steps >= cfg["max_bad_steps"]:
            raise TrainingStopped(f"{bad_steps} consecutive non-finite steps at step "
                                  f"{state.iter_num}: lower learning_rate, use float32 or "
                                  f"bfloat16, or check the data; {run.out_dir}/last.pt holds "
                                  "the last good state")
        state = replace(state, iter_num=state.iter_num + 1,
                        tokens_seen=state.tokens_seen + run.tokens_per_step)
        hardware.synchronize(device)
        if run.master and state.iter_num % cfg["log_interval"] == 0:
            pace = (time.time() - started) / (state.iter_num - first_step)
            log_step(run, state, lr, loss, grad_norm, time.time() - t0, pace)

        # last.pt on schedule; SIGTERM/SIGINT or max_minutes end the run, on every rank at once
        over_time = bool(cfg["max_minutes"]) and time.time() - started > 60 * cfg["max_minutes"]
        stopping, time_up = ranks.agree(run.ddp, run.device, stop.signal is not None, over_time)
        due = ((cfg["checkpoint_interval"] and state.iter_num % cfg["checkpoint_interval"] == 0)
               or time.time() - last_save > 60 * cfg["checkpoint_minutes"])
        if not stopping:
            (due,) = ranks.agree(run.ddp, run.device, due)
        if due or stopping:
            run_checkpoint.write_last(run, state)
            last_save = time.time()
        if stopping:
            if run.master:
                print(f"stopped at step {state.iter_num}; resume with --init_from=resume",
                      flush=True)
            break
    return state


if __name__ == "__main__":
    main()
