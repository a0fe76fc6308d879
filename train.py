"""train.py: train the GPT on the bins prepare.py wrote.

    python train.py config/cpu_demo.py                      # the CPU demo (data: python prepare.py)
    python train.py config/mini_lm.py                       # the flagship run on one GPU
    torchrun --nproc_per_node=4 train.py                    # the same run on 4 GPUs
    python train.py config/cpu_demo.py --init_from=resume   # continue out/last.pt exactly

The defaults are the flagship run, mini_lm (config/mini_lm.py names the same values): its model and
schedule on data/mini_lm (python prepare.py config/prepare_mini_lm.py). Its tokens per optimizer
step stay the same on 1, 2, 4 or 8 ranks: the accumulation micro-steps are shared between ranks.

Mixed precision (bf16 autocast where the GPU has it natively, fp16 with a gradient scaler on older
GPUs such as the T4 and V100; hardware.py says why in the log), gradient accumulation (synchronised
across DDP ranks on the last micro-step only), gradient checkpointing, AdamW with warmup and cosine
decay, gradient clipping, a guard against non-finite steps, periodic evaluation with a text sample,
TensorBoard logs, and self-contained checkpoints written atomically (out/last.pt, out/best.pt) from
which --init_from=resume continues with the same batches, learning rate and random streams.
"""

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import configurator
import cpu_memory
import hardware
import metrics
from model import GPT, GPTConfig
from tokenizer import Tokenizer

SPEC = {
    # i/o
    "out_dir": ("out", "checkpoints (last.pt, best.pt), TensorBoard logs (tb/)"),
    "dataset": ("mini_lm", "folder under data_root written by prepare.py"),
    "data_root": ("data", "parent folder of datasets"),
    "init_from": ("scratch", "'scratch' or 'resume' (from out_dir/last.pt)"),
    "eval_interval": (200, "steps between evaluations (and best.pt updates)"),
    "eval_iters": (50, "batches per split in each evaluation"),
    "eval_only": (False, "evaluate once and exit"),
    "log_interval": (10, "steps between log lines"),
    "checkpoint_interval": (200, "steps between writes of last.pt (0: only at the end)"),
    "checkpoint_minutes": (10.0, "also write last.pt when this many minutes passed since the last"),
    "keep_last": (0, "also keep the last K step-numbered checkpoints (ckpt_<step>.pt)"),
    "sample_interval": (200, "steps between printed text samples (0: never)"),
    "sample_prompt": ("The ", "prompt of the text samples"),
    "sample_tokens": (48, "new tokens per sample"),
    "tensorboard": (True, "log to out_dir/tb"),
    "wandb_log": (False, "log to Weights & Biases (pip install wandb)"),
    "wandb_project": ("mini-lm", "W&B project"),
    "mlflow_log": (False, "log to MLflow (pip install mlflow)"),
    # data and batches
    "batch_size": (16, "sequences per micro-step (per rank)"),
    "block_size": (1024, "tokens per sequence"),
    "gradient_accumulation_steps": (8, "micro-steps per optimizer step, shared between all ranks"),
    # model (see model.GPTConfig)
    "n_layer": (10, "transformer blocks"),
    "n_head": (8, "attention heads"),
    "n_embd": (512, "model width"),
    "dropout": (0.0, "dropout probability"),
    "bias": (False, "biases in Linear and LayerNorm layers"),
    "attention": ("sdpa", "'sdpa', 'triton' or 'eager'"),
    "kernels": ("auto", "'auto' (Triton on GPUs of compute capability 8.0+), 'triton' or 'torch'"),
    "gradient_checkpointing": (False, "recompute activations in backward to save memory"),
    # optimizer and schedule
    "learning_rate": (1e-3, "peak learning rate"),
    "max_iters": (2000, "optimizer steps in total"),
    "max_minutes": (0.0, "also stop after this many minutes of training, evaluating and saving as at "
                         "max_iters (0: no limit); the schedule still follows lr_decay_iters"),
    "weight_decay": (0.1, "AdamW weight decay on matrices"),
    "beta1": (0.9, "AdamW beta1"),
    "beta2": (0.95, "AdamW beta2"),
    "grad_clip": (1.0, "clip the global gradient norm to this (0: no clipping)"),
    "decay_lr": (True, "cosine decay after warmup (else constant)"),
    "warmup_iters": (100, "linear warmup steps"),
    "lr_decay_iters": (2000, "step at which the cosine reaches min_lr (usually max_iters)"),
    "min_lr": (1e-4, "learning rate at the end of the decay (~learning_rate / 10)"),
    "max_bad_steps": (5, "stop after this many consecutive steps with a non-finite loss or gradient"),
    # system
    "device": ("auto", "'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1' ..."),
    "dtype": ("auto", "'auto' (bf16 on GPUs with native bf16, fp16 with a gradient scaler on older "
                      "GPUs, fp32 on CPU), 'float32', 'bfloat16', 'float16'"),
    "compile": (True, "torch.compile the model"),
    "seed": (1337, "seeds the weights, the batch order and dropout"),
    "peak_flops": (0.0, "device peak FLOP/s for MFU (0: known GPUs detected, otherwise no MFU)"),
    "keep_freed_memory": (True, "CPU: keep freed memory in the process for reuse (cpu_memory.py; "
                                "faster steps for more resident memory, see BENCHMARKS.md)"),
}
# Keys that may differ between a run and its resumption without breaking exactness.
RESUME_MAY_CHANGE = {"out_dir", "init_from", "max_iters", "max_minutes", "eval_only", "log_interval", "device",
                     "tensorboard", "wandb_log", "mlflow_log", "checkpoint_interval",
                     "checkpoint_minutes", "keep_last", "sample_interval", "compile",
                     "keep_freed_memory"}
MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]


class Batches:
    """Random windows of the token bins. The order comes from a seeded generator that every rank
    advances identically; each rank takes its own share of every step's windows."""

    def __init__(self, folder, block_size, batch_size, seed):
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise SystemExit(f"error: {meta_path} not found: run "
                             f"`{configurator.prepare_command(folder)}` first")
        self.meta = json.loads(meta_path.read_text())
        self.data = {}
        for split in ("train", "val"):
            data = np.memmap(folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
            if len(data) <= block_size + 1:
                raise SystemExit(f"error: {folder}/{split}.bin has {len(data)} tokens, fewer than "
                                 f"block_size+2={block_size + 2}: lower block_size or prepare more data")
            self.data[split] = data
        self.block_size, self.batch_size = block_size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def windows(self, split, n, generator):
        return torch.randint(len(self.data[split]) - self.block_size - 1, (n,), generator=generator)

    def get(self, split, starts, device):
        data = self.data[split]
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64))
                         for i in starts])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def unigram_loss(self):
        """Cross-entropy (nats) on val of a unigram model of train (add-one smoothing): the loss a
        model that ignores context would reach."""
        return float(np.mean(metrics.unigram_nll(self.data["train"], self.data["val"],
                                                 self.meta["vocab_size"])))


def learning_rate(it, cfg):
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if it > cfg["lr_decay_iters"]:
        return cfg["min_lr"]
    ratio = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg["learning_rate"] - cfg["min_lr"])


def micro_steps_per_rank(accumulation, world, batch_size):
    """Each rank's share of the accumulation micro-steps, or an error naming what would work."""
    if accumulation % world == 0:
        return accumulation // world
    ranks = [n for n in range(1, accumulation + 1) if accumulation % n == 0]
    sequences = accumulation * batch_size
    same = [(a, sequences // a) for a in range(world, sequences + 1, world) if sequences % a == 0]
    other = (f"keep the same {sequences} sequences per step on {world} ranks with "
             f"--gradient_accumulation_steps={same[0][0]} --batch_size={same[0][1]}" if same else
             f"set gradient_accumulation_steps to a multiple of {world} (no split keeps "
             f"{sequences} sequences per step on {world} ranks)")
    raise configurator.ConfigError(
        f"gradient_accumulation_steps={accumulation} cannot be shared by {world} ranks: run on "
        f"{', '.join(map(str, ranks))} ranks, or {other}")


class Loggers:
    """TensorBoard (and W&B / MLflow when enabled) on rank 0; nothing elsewhere."""

    def __init__(self, cfg, enabled):
        self.tb = self.wandb = self.mlflow = None
        if not enabled:
            return
        if cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(cfg["out_dir"]) / "tb"))
        try:
            if cfg["wandb_log"]:
                import wandb
                self.wandb = wandb
                wandb.init(project=cfg["wandb_project"], config=cfg)
            if cfg["mlflow_log"]:
                import mlflow
                self.mlflow = mlflow
                mlflow.start_run()
                mlflow.log_params({k: str(v)[:250] for k, v in cfg.items()})
        except ImportError as e:
            raise SystemExit(f"error: {e.name} is not installed: pip install {e.name}, "
                             f"or turn {e.name}_log off") from None

    def scalars(self, values, step):
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(values, step=step)
        if self.mlflow:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def text(self, tag, text, step):
        if self.tb:
            self.tb.add_text(tag, text, step)

    def close(self):
        if self.tb:
            self.tb.close()
        if self.mlflow:
            self.mlflow.end_run()


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves last.pt at the end of the step and exits."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: saving a checkpoint at the end of this step, then stopping",
              file=sys.stderr, flush=True)


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="train.py")
    try:
        return train(cfg)
    except (configurator.ConfigError, checkpoint.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def train(cfg):
    """Set up torch.distributed when launched by torchrun, run the training, always tear it down."""
    device = hardware.resolve_device(cfg["device"])
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_training(cfg, False, 0, 1, device)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    micro_steps_per_rank(cfg["gradient_accumulation_steps"], world, cfg["batch_size"])  # fail early
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    try:
        return run_training(cfg, True, rank, world, device)
    finally:
        dist.destroy_process_group()


def run_training(cfg, ddp, rank, world, device):
    master = rank == 0
    if device.type == "cpu" and cfg["keep_freed_memory"]:
        cpu_memory.keep_freed_memory()
    micro_steps = micro_steps_per_rank(cfg["gradient_accumulation_steps"], world, cfg["batch_size"])
    dtype, dtype_reason = hardware.choose_dtype(cfg["dtype"], device)
    backend, backend_reason = hardware.choose_kernels(cfg["kernels"], device, dtype)
    hardware.check_compile(cfg["compile"], dtype, device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    out_dir = Path(cfg["out_dir"])
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------- data and model
    folder = Path(cfg["data_root"]) / cfg["dataset"]
    batches = Batches(folder, cfg["block_size"], cfg["batch_size"], cfg["seed"])
    tokenizer = Tokenizer.load(folder / batches.meta.get("tokenizer", "tokenizer.json"))
    ckpt = None
    if cfg["init_from"] == "resume":
        ckpt = checkpoint.load(out_dir / "last.pt")
        changed = {k: (ckpt["config"].get(k), v) for k, v in cfg.items()
                   if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v}
        if changed and master:
            print(f"warning: resuming with settings that differ from the checkpoint's (the run "
                  f"will not match an uninterrupted one): {changed}", file=sys.stderr)
        model_args = ckpt["model_args"]
    elif cfg["init_from"] == "scratch":
        model_args = {k: cfg[k] for k in MODEL_KEYS}
        model_args["vocab_size"] = batches.meta["vocab_size"]
    else:
        raise configurator.ConfigError(f"init_from={cfg['init_from']!r} must be 'scratch' or 'resume'")
    if model_args["vocab_size"] != batches.meta["vocab_size"]:
        raise configurator.ConfigError(f"the checkpoint's vocab_size {model_args['vocab_size']} differs "
                                       f"from {folder}'s {batches.meta['vocab_size']}: another tokenizer")
    torch.manual_seed(cfg["seed"])
    model = GPT(GPTConfig(**model_args))
    if ckpt:
        model.load_state_dict(ckpt["model"])
    model.to(device).use_kernels(backend)
    optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"],
                                           (cfg["beta1"], cfg["beta2"]), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    iter_num, best_val_loss, history, tokens_seen = 0, math.inf, [], 0
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        history, tokens_seen = ckpt["history"], ckpt["tokens_seen"]
        batches.generator.set_state(ckpt["train_generator"])
        rng = ckpt["rng"]
        if len(rng) == world:
            torch.set_rng_state(rng[rank]["torch"])
            if device.type == "cuda" and rng[rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng[rank]["cuda"], device)
        elif master:
            print(f"warning: the checkpoint was written by {len(rng)} ranks, this run has {world}: "
                  "dropout masks will differ from an uninterrupted run", file=sys.stderr)
        ckpt = None  # free the memory
    raw_model = model
    if cfg["compile"]:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    params = raw_model.parameter_breakdown()
    tokens_per_step = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    unigram = batches.unigram_loss()
    if master:
        print(json.dumps(cfg, indent=1, default=str))
        print(f"model: {params['total'] / 1e6:.2f}M parameters ({params['blocks'] / 1e6:.2f}M in blocks, "
              f"{params['token embedding (tied LM head)'] / 1e6:.2f}M in the tied embedding); "
              f"{world} rank(s), {tokens_per_step:,} tokens per step ({micro_steps} micro-step(s) of "
              f"{cfg['batch_size']} sequences per rank); unigram baseline val loss {unigram:.3f}")
        print(f"device: {device}" + (f", {hardware.describe_gpu(device)}" if device.type == "cuda" else ""))
        print(f"precision: {dtype_reason}")
        print(f"kernels: {backend_reason}")
        print(f"attention: {hardware.describe_attention(raw_model.config.attention, backend, device)}")
        print(f"compile: {'torch.compile' if cfg['compile'] else 'off (eager)'}", flush=True)
    loggers = Loggers(cfg, master)
    if master:
        loggers.text("config", "```\n" + json.dumps(cfg, indent=1, default=str) + "\n```", iter_num)
    peak = hardware.peak_flops(device, cfg["peak_flops"])
    flops_per_token = (6 * (params["total"] - params["position embedding"])
                       + 12 * raw_model.config.n_layer * raw_model.config.n_embd * cfg["block_size"])

    @torch.no_grad()
    def evaluate():
        """Mean loss over the same eval_iters batches of each split every time."""
        raw_model.eval()
        generator = torch.Generator().manual_seed(cfg["seed"] + 1)
        result = {}
        for split in ("train", "val"):
            losses = []
            for _ in range(cfg["eval_iters"]):
                x, y = batches.get(split, batches.windows(split, cfg["batch_size"], generator), device)
                with autocast:
                    losses.append(raw_model(x, y)[1].item())
            result[split] = sum(losses) / len(losses)
        raw_model.train()
        return result

    def save(name):
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        all_rng = [rng]
        if ddp:
            all_rng = [None] * world
            dist.all_gather_object(all_rng, rng)
        if not master:
            return
        checkpoint.save({
            "format_version": checkpoint.FORMAT_VERSION, "model": raw_model.state_dict(),
            "model_args": asdict(raw_model.config), "tokenizer": tokenizer.to_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "iter_num": iter_num, "best_val_loss": best_val_loss, "tokens_seen": tokens_seen,
            "train_generator": batches.generator.get_state(), "rng": all_rng,
            "config": cfg, "history": history, "unigram_val_loss": unigram,
            "dataset": {"path": str(folder), "vocab_size": batches.meta["vocab_size"]},
        }, out_dir / name)

    def write_last():
        save("last.pt")
        if cfg["keep_last"] > 0 and master:
            numbered = out_dir / f"ckpt_{iter_num:07d}.pt"
            shutil.copyfile(out_dir / "last.pt", f"{numbered}.tmp")
            os.replace(f"{numbered}.tmp", numbered)
            for old in sorted(out_dir.glob("ckpt_*.pt"))[:-cfg["keep_last"]]:
                old.unlink()

    # ------------------------------------------------------------------------------------ the loop
    stop = StopRequest()
    last_save, bad_steps, started, time_up = time.time(), 0, time.time(), False
    model.train()
    while True:
        lr = learning_rate(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        finished = iter_num >= cfg["max_iters"] or time_up
        if iter_num % cfg["eval_interval"] == 0 or cfg["eval_only"] or finished:
            losses = evaluate()
            record = {"iter": iter_num, "tokens": tokens_seen, "train_loss": losses["train"],
                      "val_loss": losses["val"], "val_ppl": math.exp(min(losses["val"], 50)), "lr": lr}
            if not history or history[-1]["iter"] != iter_num:
                history.append(record)
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"val perplexity {record['val_ppl']:.2f} (unigram baseline loss {unigram:.3f})",
                      flush=True)
                loggers.scalars({"loss/train": losses["train"], "loss/val": losses["val"],
                                 "perplexity/val": record["val_ppl"]}, iter_num)
            if losses["val"] < best_val_loss and iter_num > 0 and not cfg["eval_only"]:
                best_val_loss = losses["val"]
                save("best.pt")
            if (cfg["sample_interval"] and iter_num % cfg["sample_interval"] == 0 and master
                    and cfg["sample_tokens"] > 0):
                prompt = tokenizer.encode(cfg["sample_prompt"]) or [tokenizer.eot_id]
                new = raw_model.generate([prompt], cfg["sample_tokens"], temperature=0.8, top_k=200,
                                         seed=cfg["seed"])[0]
                text = cfg["sample_prompt"] + tokenizer.decode(new)
                print(f"sample: {text!r}", flush=True)
                loggers.text("sample", text, iter_num)
        if cfg["eval_only"] or finished:
            if time_up and master:
                print(f"stopped at step {iter_num}: max_minutes={cfg['max_minutes']} reached",
                      flush=True)
            break

        # one optimizer step: micro_steps micro-batches on each rank, gradients averaged over all
        t0 = time.time()
        starts = batches.windows("train", cfg["gradient_accumulation_steps"] * cfg["batch_size"],
                                 batches.generator)
        loss_sum = torch.zeros((), device=device)
        for micro in range(micro_steps):
            first = (rank * micro_steps + micro) * cfg["batch_size"]
            x, y = batches.get("train", starts[first:first + cfg["batch_size"]], device)
            sync = not ddp or micro == micro_steps - 1
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with autocast:
                    _, loss = model(x, y)
                scaler.scale(loss / micro_steps).backward()
            loss_sum += loss.detach().float()  # read once per step: no sync per micro-step
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                   cfg["grad_clip"] if cfg["grad_clip"] > 0 else math.inf)
        loss_sum = loss_sum.item()
        finite = math.isfinite(loss_sum) and bool(torch.isfinite(grad_norm))
        if scaler.is_enabled():
            scaler.step(optimizer)  # skips the step itself when fp16 gradients overflowed
            scaler.update()
        elif finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not finite and not scaler.is_enabled():
            bad_steps += 1
            if master:
                print(f"warning: step {iter_num} has a non-finite loss or gradient norm; skipped "
                      f"({bad_steps} in a row)", file=sys.stderr)
            if bad_steps >= cfg["max_bad_steps"]:
                raise SystemExit(f"error: {bad_steps} consecutive non-finite steps at step {iter_num}: "
                                 "lower learning_rate, use float32 or bfloat16, or check the data; "
                                 f"{out_dir}/last.pt holds the last good state")
        else:
            bad_steps = 0
        iter_num += 1
        tokens_seen += tokens_per_step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.time() - t0

        if master and iter_num % cfg["log_interval"] == 0:
            tokens_per_s = tokens_per_step / dt
            mfu = flops_per_token * tokens_per_s / peak if peak else None
            memory_gb = (torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda"
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
            loss_value = loss_sum / micro_steps
            print(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, grad norm {float(grad_norm):.3f}, "
                  f"{dt * 1000:.0f} ms, {tokens_per_s:,.0f} tokens/s"
                  + (f", MFU {mfu:.1%}" if mfu is not None else "") + f", memory {memory_gb:.2f} GB",
                  flush=True)
            values = {"loss/train_step": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens_per_s": tokens_per_s, "memory_gb": memory_gb}
            if mfu is not None:
                values["mfu"] = mfu
            loggers.scalars(values, iter_num)

        stopping = stop.signal is not None
        time_up = bool(cfg["max_minutes"]) and time.time() - started > 60 * cfg["max_minutes"]
        if ddp:  # every rank must agree to stop, or the next all-reduce hangs
            flags = torch.tensor([float(stopping), float(time_up)], device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stopping, time_up = bool(flags[0].item()), bool(flags[1].item())
        due = ((cfg["checkpoint_interval"] and iter_num % cfg["checkpoint_interval"] == 0)
               or time.time() - last_save > 60 * cfg["checkpoint_minutes"])
        if ddp and not stopping:
            flag = torch.tensor([float(due)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        if due or stopping:
            write_last()
            last_save = time.time()
        if stopping:
            if master:
                print(f"stopped at step {iter_num}; resume with --init_from=resume", flush=True)
            break

    if not cfg["eval_only"] and stop.signal is None:
        write_last()
    loggers.close()
    return out_dir


if __name__ == "__main__":
    main()
