"""Checkpoint I/O shared by train.py, eval.py and serve.py.

A checkpoint is one self-contained file: model weights and config, the tokenizer, optimizer and
scaler state, schedule and data position, RNG states, the training config and the metric history.
It is written atomically (temporary file, fsync, rename), so a crash mid-write leaves the previous
file intact, and read with torch.load(weights_only=True), so loading one cannot run code.
"""

import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from curation.tokenizer import Tokenizer
from fused_kernels import int8
from model import GPT, GPT2_RECIPE, GPTConfig
from training import atomic, configurator, hardware

FORMAT_VERSION = 1
# weights for generation and scoring: the training precisions, and float64 (exact comparisons in tests)
INFERENCE_DTYPES = {**hardware.DTYPES, "float64": torch.float64}


class CheckpointError(RuntimeError):
    pass


def save(obj, path):
    """torch.save to path atomically: readers see the old file or the new one, never a mix."""
    with atomic.replacing(path, "wb") as f:
        torch.save(obj, f)


def load(path, map_location="cpu"):
    """The checkpoint dict at path, with errors that say what is wrong and what to do."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unpickling refused
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it is truncated, corrupt or not a checkpoint of this project; use another one "
            "(out/last.pt and out/best.pt are written atomically, so one of them is whole)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a format-{FORMAT_VERSION} checkpoint of "
                              "this project (no or another format_version)")
    missing = {"model", "model_args", "tokenizer", "config"} - set(ckpt)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    # checkpoints written before the recipe options existed lack them, and were GPT-2's recipe
    ckpt["model_args"] = {**GPT2_RECIPE, **ckpt["model_args"]}
    return ckpt


def load_model(path, device="cpu"):
    """(model, tokenizer, checkpoint) from a checkpoint file, the model in eval mode on device."""
    ckpt = load(path)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        tokenizer = Tokenizer.from_dict(ckpt["tokenizer"], origin=f"{path} (tokenizer)")
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: model or tokenizer does not load: "
                              f"{str(e).splitlines()[0][:300]}") from None
    device = torch.device(device)
    backend, _ = hardware.choose_kernels(model.config.kernels, device)
    return model.to(device).use_kernels(backend).eval(), tokenizer, ckpt


def load_for_inference(path, device="auto", dtype="float32", compile=False):
    """(model, tokenizer, checkpoint) as sample.py, serve.py and eval.py use them: on the device
    ('auto': CUDA if present, else MPS, else CPU), weights in dtype (a name in INFERENCE_DTYPES, or
    'int8': bf16 with int8 Linear weights, on CPUs; fused_kernels/int8.py), Linear weights laid out
    for batch-1 decoding, and with compile: on a GPU the forward compiled (prefill and decoding),
    on a CPU the decoding step (model.decode_step) compiled for inference (CPU_DECODE_COMPILE),
    prefill eager. What this device cannot run is refused before any work."""
    if dtype not in INFERENCE_DTYPES and dtype != "int8":
        raise ValueError(f"dtype={dtype!r} must be one of {list(INFERENCE_DTYPES) + ['int8']}")
    device = hardware.resolve_device(device)
    torch_dtype = torch.bfloat16 if dtype == "int8" else INFERENCE_DTYPES[dtype]
    if dtype == "int8" and device.type != "cpu":
        raise ValueError(f"dtype=int8 runs on CPUs (PyTorch's int8-weight kernel), not {device}: "
                         "use bfloat16 on a GPU")
    model, tokenizer, ckpt = load_model(path, device)
    hardware.choose_kernels(model.config.kernels, device, torch_dtype)  # refuses what the GPU can't run
    hardware.check_weights_dtype(torch_dtype, device)
    hardware.check_compile(compile, torch_dtype, device)
    model = model.to(torch_dtype).optimize_for_decoding()
    if dtype == "int8":
        model = int8.quantize(model)
    # dynamic=True: the KV cache grows one token per step (and a server's batch changes size),
    # and each size would otherwise be compiled anew
    if compile and device.type == "cpu":
        model.decode_step = compile_for_cpu_decoding(model.decode_step)
    elif compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model, tokenizer, ckpt


# Inductor's settings for CPU decoding, where each step reads every weight once for a few rows of
# activations (BENCHMARKS.md, "Generation"): the weights frozen into the compiled code as constants
# (inference only; a second, repacked copy of them), and each product chosen by timing Inductor's
# C++ micro-kernel templates against PyTorch's (max-autotune; the compile takes tens of seconds).
CPU_DECODE_COMPILE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def compile_for_cpu_decoding(decode_step):
    """decode_step compiled with CPU_DECODE_COMPILE. The settings are applied around each call
    (compilation happens inside the first call, or any later one that recompiles) rather than
    through torch.compile's options, which did not turn freezing on, and rather than globally,
    which would change a later training compile in the same process. (Dropping dynamo's guards on
    the modules saves a little per step but let a second model reuse the first one's frozen
    weights: tests/test_decoding.py.)"""
    compiled = torch.compile(decode_step, dynamic=True)

    def step(tokens, cache, pad_lengths=None):
        with torch._inductor.config.patch(CPU_DECODE_COMPILE):
            return compiled(tokens, cache, pad_lengths)
    return step


# ------------------------------------------------------------------ a training run's checkpoints

def run_contents(run, state, rng):
    """Everything needed to evaluate, serve or resume a training run (train.py's Run and State),
    as one dict (rng: every rank's random states)."""
    return {
        "format_version": FORMAT_VERSION, "model": run.raw_model.state_dict(),
        "model_args": asdict(run.raw_model.config), "tokenizer": run.tokenizer.to_dict(),
        "optimizer": [o.state_dict() for o in run.optimizers], "scaler": run.scaler.state_dict(),
        "iter_num": state.iter_num, "best_val_loss": state.best_val_loss,
        "tokens_seen": state.tokens_seen, "train_generator": run.batches.generator.get_state(),
        "train_windows_drawn": run.batches.drawn,
        "rng": rng, "config": run.cfg, "history": state.history, "unigram_val_loss": run.unigram,
        "tracking": run.loggers.tracking,
        "dataset": {"path": str(run.folder), "vocab_size": run.batches.meta["vocab_size"]},
        # a fine-tuning task's prompt template (curation/tasks.py), which sample.py and serve.py
        # render prompts in; None for a corpus
        "prompt_template": run.batches.meta.get("task", {}).get("prompt_template"),
    }


def save_run(run, state, name):
    """Gather every rank's random state (a collective: all ranks call this), then rank 0 writes
    out_dir/name atomically."""
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
           "mps": torch.mps.get_rng_state() if run.device.type == "mps" else None}
    all_rng = [rng]
    if run.ddp:
        all_rng = [None] * run.world
        dist.all_gather_object(all_rng, rng)
    if run.master:
        save(run_contents(run, state, all_rng), run.out_dir / name)


def write_last(run, state):
    """last.pt, plus a step-numbered copy when keep_last > 0 (the oldest beyond it removed)."""
    save_run(run, state, "last.pt")
    keep = run.cfg["keep_last"]
    if keep > 0 and run.master:
        numbered = run.out_dir / f"ckpt_{state.iter_num:07d}.pt"
        with open(run.out_dir / "last.pt", "rb") as src, atomic.replacing(numbered, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        for old in sorted(run.out_dir.glob("ckpt_*.pt"))[:-keep]:
            old.unlink()


def restore_run(run, ckpt):
    """Put a training run's optimizer, scaler, batch order and this rank's random state back
    (train.py's Run); returns (iter_num, best_val_loss, tokens_seen, history) as written."""
    states = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]
    if len(states) != len(run.optimizers):
        raise configurator.ConfigError(f"the checkpoint holds {len(states)} optimizer state(s), "
                                       f"optimizer={run.cfg['optimizer']!r} needs {len(run.optimizers)}")
    for optimizer, saved in zip(run.optimizers, states):
        optimizer.load_state_dict(saved)
    run.batches.drawn = ckpt.get("train_windows_drawn", 0)
    run.scaler.load_state_dict(ckpt["scaler"])
    run.batches.generator.set_state(ckpt["train_generator"])
    rng = ckpt["rng"]
    if len(rng) == run.world:
        torch.set_rng_state(rng[run.rank]["torch"])
        if run.device.type == "cuda" and rng[run.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(rng[run.rank]["cuda"], run.device)
        if run.device.type == "mps" and rng[run.rank].get("mps") is not None:
            torch.mps.set_rng_state(rng[run.rank]["mps"])
    elif run.master:
        print(f"warning: the checkpoint was written by {len(rng)} ranks, this run has {run.world}: "
              "dropout masks will differ from an uninterrupted run", file=sys.stderr)
    return ckpt["iter_num"], ckpt["best_val_loss"], ckpt["tokens_seen"], ckpt["history"]
