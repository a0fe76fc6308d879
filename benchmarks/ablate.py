"""bench.py ablate: each change of the speedrun recipe measured alone against GPT-2's, and all together.

    python bench.py ablate config/cpu_demo.py                      # every variant, the demo's steps
    python bench.py ablate config/cpu_demo.py --variants=gpt2,muon,all --max_iters=300
    python bench.py ablate config/cpu_demo.py --variants=all,all-softcap,all-softcap-zero_init,default

Every variant trains the given config with config/gpt2.py's recipe plus its change (CHANGES below;
"all" has every change, "all-softcap" every change but softcap, "default" the config's own recipe:
train.py's defaults with what the config sets),
on the same data with the same seed. GPT-2's recipe and each change alone over it take AdamW at
gpt2_lr_ratio of the config's rates (the config's are for the combined recipe, whose AdamW holds
only embeddings and gains, and GPT-2's recipe trains worse at them: BENCHMARKS.md); the
combinations take the config's own. The variants take their optimizer steps in turns, one step each
per round, so a machine whose speed drifts slows them all alike; only the steps are timed
(train.train_step, the step train.py takes). Every eval_interval steps each is evaluated on the
same batches (train.evaluate). At the end each is scored on the whole validation split in bits per
byte (as eval.py does), beside the Kneser-Ney baseline on the same tokens, and writes a text
sample. Prints Markdown tables; writes out_dir/ablation.json and each variant's
out_dir/<variant>/log.jsonl.
"""

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from core import atomic
from core import configurator
from core import hardware
from core import metrics
from training import optim
import train

# Each change over GPT-2's recipe, as train.py keys (the values the speedrun's records used, scaled
# to a small model where they name a size).
CHANGES = {
    "wsd": dict(lr_schedule="wsd"),
    "rotary": dict(position="rotary"),
    "muon": dict(optimizer="muon"),
    "relu2": dict(activation="relu2"),
    "qk_norm": dict(qk_norm=True),
    "zero_init": dict(zero_init=True),
    "untied_head": dict(tied_head=False),
    "value_embeddings": dict(value_embeddings=1),
    "softcap": dict(logit_softcap=15.0),
    "epoch_batches": dict(batch_order="epoch"),
}
VARIANTS = ["gpt2", *CHANGES, "all"]
GPT2_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gpt2.py"
SPEC = {
    **train.SPEC,
    "variants": (",".join(VARIANTS), "comma-separated variants to train: gpt2, the CHANGES, all, "
                                     "all-<change>[-<change>...] (all but those), default"),
    "ngram_order": (3, "order of the Kneser-Ney baseline"),
    "gpt2_lr_ratio": (0.125, "gpt2 and each change alone train at this fraction of learning_rate and "
                             "min_lr (GPT-2's recipe needs a lower rate than the combined one; 1: same; "
                             "0.125 gives the demo's GPT-2 rate, 2e-3)"),
}


def gpt2_recipe():
    """The keys and values config/gpt2.py sets."""
    return configurator.read_config_file(str(GPT2_CONFIG), list(train.SPEC))


def variant_changes(name):
    """The train.py keys variant `name` sets over GPT-2's recipe, or None for an unknown name."""
    if name == "gpt2":
        return {}
    if name == "default":  # train.py's defaults for every recipe key
        return {k: train.SPEC[k][0] for k in gpt2_recipe()}
    if name in CHANGES:
        return CHANGES[name]
    left_out = name.split("-")[1:]
    if name.split("-")[0] != "all" or not set(left_out) <= set(CHANGES):
        return None
    return {k: v for change, keys in CHANGES.items() if change not in left_out for k, v in keys.items()}


def variant_configs(cfg, names):
    """{variant: train.py config}: cfg under config/gpt2.py's recipe, plus the variant's changes."""
    changes = {name: variant_changes(name) for name in names}
    if "default" in changes:  # the config's own recipe: train.py's defaults and what the config sets
        changes["default"] = {k: cfg.get(k, v) for k, v in changes["default"].items()}
    unknown = [name for name, change in changes.items() if change is None]
    if unknown or not names:
        raise configurator.ConfigError(f"unknown variant(s) {unknown}: choose from {VARIANTS}, "
                                       f"default, or all-<change>[-<change>...]")
    base = {**{k: v for k, v in cfg.items() if k in train.SPEC}, **gpt2_recipe()}
    ratio = cfg["gpt2_lr_ratio"]
    if not ratio > 0:
        raise configurator.ConfigError(f"gpt2_lr_ratio={ratio!r} must be above 0 (1: the config's rates)")
    gpt2_rates = dict(learning_rate=base["learning_rate"] * ratio, min_lr=base["min_lr"] * ratio)
    return {name: {**base, **(gpt2_rates if name == "gpt2" or name in CHANGES else {}), **change,
                   "out_dir": str(Path(cfg["out_dir"]) / name)}
            for name, change in changes.items()}


def train_in_turns(runs, cfg):
    """Train every run to max_iters, one step each per round; evaluate all every eval_interval.
    Returns {variant: {"seconds": step time so far, "curve": [(step, seconds, val loss)]}}."""
    progress = {name: {"seconds": 0.0, "curve": []} for name in runs}
    for step in range(cfg["max_iters"] + 1):
        for name, run in runs.items():
            lr = optim.set_learning_rates(run.optimizers, step, run.cfg)
            if step % cfg["eval_interval"] == 0 or step == cfg["max_iters"]:
                losses = train.evaluate(run)
                progress[name]["curve"].append((step, progress[name]["seconds"], losses["val"]))
                run.loggers.record("eval", {"iter": step, "val_loss": losses["val"],
                                            "train_loss": losses["train"], "lr": lr,
                                            "seconds": progress[name]["seconds"]})
            if step == cfg["max_iters"]:
                continue
            t0 = time.perf_counter()
            loss, _, finite = train.train_step(run)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            progress[name]["seconds"] += time.perf_counter() - t0
            if not finite:
                raise train.TrainingStopped(f"variant {name} has a non-finite loss at step {step}")
        if step % cfg["eval_interval"] == 0:
            print(f"step {step}: " + ", ".join(f"{name} {p['curve'][-1][2]:.3f}"
                                                 for name, p in progress.items()), flush=True)
    return progress


def reached(curve, target):
    """(step, seconds) of the first evaluation at or below target, or (None, None)."""
    return next(((step, sec) for step, sec, loss in curve if loss <= target), (None, None))


def report(runs, progress, cfg):
    """Whole-split bits per byte of every variant beside the Kneser-Ney baseline, the steps and
    seconds each took to reach GPT-2's final loss, and a sample from each."""
    first = next(iter(runs.values()))
    val = np.asarray(first.batches.data["val"], dtype=np.int64)
    tokenizer, vocab = first.tokenizer, first.raw_model.config.vocab_size
    kn = metrics.KneserNey(np.asarray(first.batches.data["train"], dtype=np.int64), vocab,
                           cfg["ngram_order"])
    kn_nll = kn.nll(val)
    kn_bpb = metrics.bits_per_byte(kn_nll, metrics.scored_bytes(val, len(kn_nll), tokenizer))
    target = progress["gpt2"]["curve"][-1][2] if "gpt2" in progress else None
    gpt2_steps, gpt2_seconds = (cfg["max_iters"], progress["gpt2"]["seconds"]) if target else (0, 0)
    print(f"\nWhole validation split ({len(val):,} tokens); Kneser-Ney {cfg['ngram_order']}-gram "
          f"baseline: {kn_bpb:.3f} bits per byte.\n")
    print("| variant | val bits/byte | val loss (eval batches) | step time | reaches gpt2's final loss "
          "| steps | time |\n|---|---:|---:|---:|---|---:|---:|")
    results = {"config": cfg, "kneser_ney_bits_per_byte": kn_bpb, "variants": {}}
    for name, run in runs.items():
        block = run.raw_model.config.block_size  # eval.py's default stride: half a block
        nll = metrics.sliding_window_nll(run.raw_model, val, block // 2, run.cfg["batch_size"], run.device)
        bpb = metrics.bits_per_byte(nll, metrics.scored_bytes(val, len(nll), tokenizer))
        curve, seconds = progress[name]["curve"], progress[name]["seconds"]
        step, at = reached(curve, target) if target else (None, None)
        share = (f"at step {step}, {at:.0f} s" if step is not None else "no") if target else "n/a"
        ratios = (f"{step / gpt2_steps:.0%} | {at / gpt2_seconds:.0%}" if step is not None
                  else "- | -")
        print(f"| {name} | {bpb:.3f} | {curve[-1][2]:.4f} | {seconds / cfg['max_iters'] * 1e3:.0f} ms "
              f"| {share} | {ratios} |", flush=True)
        prompt = tokenizer.encode(cfg["sample_prompt"]) or [tokenizer.eot_id]
        new = run.raw_model.generate([prompt], cfg["sample_tokens"], temperature=0.8, top_k=200,
                                     seed=cfg["seed"])[0]
        results["variants"][name] = {"changes": {k: run.cfg[k] for k in gpt2_recipe()},
                                     "bits_per_byte": bpb, "curve": curve, "seconds": seconds,
                                     "sample": cfg["sample_prompt"] + tokenizer.decode(new)}
    print("\nSamples (temperature 0.8, top-k 200, the same seed):\n")
    for name, result in results["variants"].items():
        print(f"- {name}: {result['sample']!r}")
    atomic.write_text(Path(cfg["out_dir"]) / "ablation.json", json.dumps(results, indent=1, default=str))
    return results


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="bench.py ablate")
    names = [n.strip() for n in cfg["variants"].split(",") if n.strip()]
    device = hardware.resolve_device(cfg["device"])
    with configurator.errors_exit(ValueError, train.TrainingStopped):
        configs = variant_configs(cfg, names)
        runs = {}
        for name, variant in configs.items():
            with contextlib.redirect_stdout(io.StringIO()):  # set_up's settings dump, per variant
                runs[name], _ = train.set_up(variant, False, 0, 1, device)
            runs[name].model.train()
        first = next(iter(runs.values()))
        print(f"{len(runs)} variants of {first.raw_model.parameter_breakdown()['total'] / 1e6:.2f}M "
              f"parameters, {cfg['max_iters']} steps of {first.tokens_per_step:,} tokens each, in "
              f"turns; device {device}", flush=True)
        progress = train_in_turns(runs, cfg)
    results = report(runs, progress, cfg)
    for run in runs.values():
        run.loggers.close()
    return results

