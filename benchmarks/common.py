"""What several benchmark suites use: the machine's description, model sizes read from config/*.py,
train.py's own training step on random tokens, and timing settings in turns."""

import contextlib
import functools
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import train
from core import configurator
from core.tokenizer import Tokenizer
from model import GPT, GPTConfig

SMALL = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0, bias=True)  # nanoGPT's


def machine():
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def model_of(*train_arguments, vocab_size=32000):
    """GPTConfig keyword arguments of train.py's command-line arguments (a config/*.py and
    overrides): the model sizes benchmarked are the ones the configs train."""
    cfg = configurator.parse(train.SPEC, list(train_arguments))
    return dict({k: cfg[k] for k in train.MODEL_KEYS}, vocab_size=vocab_size)


def mini_lm():
    """config/mini_lm.py's model."""
    return model_of("config/mini_lm.py")


def sized(name, model_args):
    """name with the model's parameter count, as the tables print it: "mini_lm (64.2M)"."""
    with torch.device("meta"):
        total = GPT(GPTConfig(**model_args)).parameter_breakdown()["total"]
    return f"{name} ({total / 1e6:.1f}M)"


@functools.lru_cache(maxsize=None)
def random_dataset(vocab_size, n_tokens=262_144):
    """A folder laid out as prepare.py writes one (train.bin, val.bin, meta.json, tokenizer.json)
    holding uniformly random tokens, so train.py's set-up runs unchanged; kept until exit."""
    folder = tempfile.TemporaryDirectory(prefix="bench-data-")
    path = Path(folder.name)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, vocab_size, n_tokens, dtype=np.uint16).tofile(path / f"{split}.bin")
    (path / "meta.json").write_text(json.dumps({"vocab_size": vocab_size, "dtype": "uint16"}))
    # a tokenizer with the same number of ids (single bytes, then two-byte strings): train.py
    # only saves it into checkpoints and samples with it, neither of which a benchmark does
    n = vocab_size - 1
    tokens = [bytes([i]) for i in range(min(256, n))] + [bytes(divmod(i, 256)) for i in range(n - 256)]
    Tokenizer(tokens).save(path / "tokenizer.json")
    return folder


def training_step(model_kwargs, batch, device="cpu", **settings):
    """train.py's set-up (train.set_up) and optimizer step (train.train_step) on random tokens:
    model_kwargs are GPTConfig's (vocab_size among them), settings any other train.py keys (dtype,
    compile, attention, kernels, keep_freed_memory ...). The step has already run twice (compiling,
    if asked). Returns (step function, tokens per step, first step's seconds, train.Run)."""
    import torch

    model_kwargs = dict(model_kwargs)
    data = Path(random_dataset(model_kwargs.pop("vocab_size")).name)
    out_dir = tempfile.mkdtemp(prefix="bench-out-")
    cfg = configurator.parse(train.SPEC, [])
    cfg.update(model_kwargs, data_root=str(data.parent), dataset=data.name, out_dir=out_dir,
               device=device, batch_size=batch, gradient_accumulation_steps=1, tensorboard=False,
               sample_interval=0, compile=False, keep_freed_memory=False)
    cfg.update(settings)
    with contextlib.redirect_stdout(io.StringIO()):  # set_up prints the settings it chose
        run, _ = train.set_up(cfg, False, 0, 1, torch.device(device))
    run.model.train()
    step = functools.partial(_synchronised_step, run)
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()
    return step, batch * cfg["block_size"], first, run


def _synchronised_step(run):
    """train.train_step, then wait for the GPU (train_step reads the loss before the optimizer
    step, so without this the update's time would land in the next step's)."""
    import torch
    train.train_step(run)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)


def interleaved_rates(steps, rounds):
    """Median tokens/s of each {label: (step function, tokens per step)}, timed in turns (one step of
    each per round), so that a machine whose speed drifts affects every setting alike."""
    times = {label: [] for label in steps}
    for _ in range(rounds):
        for label, (step, _) in steps.items():
            t0 = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - t0)
    return {label: steps[label][1] / statistics.median(times[label]) for label in steps}
