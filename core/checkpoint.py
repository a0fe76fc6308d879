"""A checkpoint file: written by train.py, read by every script that uses a model.

A checkpoint is one self-contained file: model weights and config, the tokenizer, optimizer and
scaler state, schedule and data position, RNG states, the training config and the metric history.
It is written atomically (temporary file, fsync, rename), so a crash mid-write leaves the previous
file intact, and read with torch.load(weights_only=True), so loading one cannot run code.
"""

from pathlib import Path

import torch

from core import atomic, hardware
from core.tokenizer import Tokenizer
from model import GPT, GPT2_RECIPE, GPTConfig

FORMAT_VERSION = 1
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
