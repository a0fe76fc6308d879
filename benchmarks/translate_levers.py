"""bench.py translate_levers: what the levers that need no new training buy a finished translator.

    python bench.py translate_levers                          # on out/translate (make translate)
    python bench.py translate_levers --out_dir=out/t2 --decodings=1:1.0,4:1.5 --averages=2,4

On the validation books only (Ruth, Jonah, Philippians, 1 John), as a recipe is chosen; Acts is
scored once per finished recipe, by bench.py translate itself. Three levers:
  room        how many validation and test references do not fit beside their prompt in a context
              of each --block_sizes (the prompt in the task's template, the reference and its
              end-of-text token), as eval.py counts the room it answers in
  decoding    the run's best.pt answering with each --decodings (beams:length penalty)
  averaging   the weights of the last K checkpoints the training kept (ckpt_<step>.pt, every
              checkpoint_interval steps), averaged, for each K of --averages, answering with the
              run's own decoding
Prints Markdown rows (BLEU per direction, the change against the run's own validate stage) and
writes them, with every score, to out_dir/levers.json.
"""

import json
from pathlib import Path

from benchmarks import translate
from core import atomic, checkpoint, configurator, tasks
from core.tokenizer import Tokenizer

SPEC = {
    "out_dir": ("out/translate", "a finished `bench.py translate` run (its summary.json)"),
    "decodings": ("1:1.0,2:1.0,2:1.5,4:1.5", "beams:length penalty pairs to answer with, comma-separated"),
    "averages": ("2,4", "numbers of the last kept checkpoints to average, comma-separated"),
    "block_sizes": ("128,256", "contexts to count the references with no room in, comma-separated"),
    "batch_size": (64, "verses answered together"),
}


def references_without_room(task_folder, block_sizes):
    """{split: {block_size: share of references that do not fit in the room eval.py answers in}}:
    the context left after the prompt in the task's template, at most twice its length plus 8
    (evaluation/task_eval.py), against the reference's tokens and its end-of-text token."""
    tokenizer = Tokenizer.load(task_folder / "tokenizer.json")
    shares = {}
    for split in ("val", "test"):
        pairs = [json.loads(line) for line in (task_folder / f"{split}.jsonl").read_text().splitlines()]
        lengths = [(len(tokenizer.encode(tasks.render_prompt(p["prompt"]))), len(tokenizer.encode(p["response"])) + 1)
                   for p in pairs]
        shares[split] = {block: sum(answer > min(block - prompt, 2 * prompt + 8) for prompt, answer in lengths)
                         / len(lengths) for block in block_sizes}
    return shares


def averaged_checkpoint(checkpoints, path):
    """The last of checkpoints with its weights replaced by the mean of all of theirs, saved to path."""
    states = [checkpoint.load(c)["model"] for c in checkpoints]
    last = checkpoint.load(checkpoints[-1])
    last["model"] = {name: (sum(s[name].double() for s in states) / len(states)).to(tensor.dtype)
                     if tensor.is_floating_point() else tensor for name, tensor in states[-1].items()}
    checkpoint.save(last, path)
    return path


def items(value):
    """The comma-separated items of an option ("2,4" arrives as the tuple (2, 4): as text again)."""
    return [item for item in str(value).strip("()[] ").replace(" ", "").split(",") if item]


def bleu(scores):
    return {direction: round(systems["model"]["bleu"], 2) for direction, systems in scores.items()}


def row(lever, setting, scores, reference):
    changes = ", ".join(f"{d} {v - reference[d]:+.2f}" for d, v in scores.items())
    return f"| {lever} | {setting} | " + " | ".join(f"{v:.2f}" for v in scores.values()) + f" | {changes} |"


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="bench.py translate_levers")
    out = Path(cfg["out_dir"])
    with configurator.errors_exit(configurator.ConfigError):
        if not (out / "summary.json").exists():
            raise configurator.ConfigError(f"{out / 'summary.json'} not found: run `python bench.py "
                                           f"translate --out_dir={out}` to the end first")
    run = json.loads((out / "summary.json").read_text())["config"]
    paths = translate.stage_paths(run)
    reference = bleu(json.loads((out / "summary.json").read_text())["stages"]["validate"]["result"])
    results = {"validate": reference, "room": references_without_room(
        paths["task"], [int(b) for b in items(cfg["block_sizes"])])}
    lines = ["| lever | setting | BLEU en-es | BLEU es-en | against the run |", "|---|---|---:|---:|---|",
             row("the run", f"best.pt, {run['beam_size']} beams, length penalty {run['length_penalty']}",
                 reference, reference)]
    for decoding in items(cfg["decodings"]):
        beams, penalty = decoding.split(":")
        scores = bleu(translate.evaluate({**run, "beam_size": int(beams), "length_penalty": float(penalty),
                                          "batch_size": cfg["batch_size"]}, paths["train"] / "best.pt",
                                         out / "levers" / f"decoding_{beams}_{penalty}", "val"))
        results[f"decoding {decoding}"] = scores
        lines.append(row("decoding", f"{beams} beam{'s' * (beams != '1')}, length penalty {penalty}", scores, reference))
    kept = sorted(paths["train"].glob("ckpt_*.pt"))
    for count in [int(k) for k in items(cfg["averages"])]:
        if count > len(kept):
            print(f"averaging {count}: only {len(kept)} checkpoints kept; skipped", flush=True)
            continue
        folder = out / "levers" / f"average_{count}"
        folder.mkdir(parents=True, exist_ok=True)
        averaged = averaged_checkpoint(kept[-count:], folder / "averaged.pt")
        scores = bleu(translate.evaluate({**run, "batch_size": cfg["batch_size"]}, averaged, folder, "val"))
        results[f"average {count}"] = scores
        steps = ", ".join(str(int(c.stem.split("_")[1])) for c in kept[-count:])
        lines.append(row("weight averaging", f"the last {count} checkpoints (steps {steps})", scores, reference))
    for split, shares in results["room"].items():
        lines.append(f"\nreferences with no room beside their prompt ({split}): " + ", ".join(
            f"{share:.1%} at block_size {block}" for block, share in shares.items()))
    print("\n".join(lines), flush=True)
    atomic.write_text(out / "levers.json", json.dumps({**results, "lines": lines}, indent=1))
    return 0
