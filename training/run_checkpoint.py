"""A training run's checkpoints: what train.py writes to out_dir (last.pt, best.pt, ckpt_<step>.pt)
and how --init_from=resume puts the run back exactly (core/checkpoint.py reads and writes the file).
"""

import shutil
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

from core import atomic, configurator
from core.checkpoint import FORMAT_VERSION, save

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
