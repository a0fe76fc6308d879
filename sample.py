"""sample.py: continue a prompt with a trained checkpoint, in one command (as nanoGPT's sample.py).

    python sample.py --out_dir=out --start="The river"
    python sample.py --start=FILE:prompt.txt --num_samples=5 --max_new_tokens=300 --top_p=0.9
    python sample.py --ckpt=out/last.pt --temperature=0 --num_samples=1       # greedy

Each sample is printed as it is generated, after a line of dashes; the speed goes to stderr. Sample i
is drawn with seed + i, so the same command prints the same samples again, and the first samples do
not change when --num_samples grows. An empty --start begins a new document (the model sees the
end-of-text token that separates documents in training). serve.py serves many clients at once;
this is the one-shot command.
"""

import sys
import time
from pathlib import Path


from core import checkpoint, configurator, inference, tasks
from core.streaming import TextStream

SPEC = {
    "out_dir": ("out", "the run's folder: samples from <out_dir>/best.pt"),
    "ckpt": ("", "a checkpoint file to use instead of <out_dir>/best.pt"),
    "start": ("", "the prompt, or FILE:<path> to read it from a file; empty: a new document"),
    "num_samples": (3, "how many samples to draw"),
    "max_new_tokens": (200, "tokens generated per sample (an end-of-text token ends one sooner)"),
    "temperature": (0.8, "0: greedy (always the likeliest token); higher: more varied"),
    "top_k": (200, "sample from the k likeliest tokens only (0: all)"),
    "top_p": (1.0, "sample from the smallest set of tokens whose probability reaches p (1: all)"),
    "seed": (1337, "random seed; sample i uses seed + i"),
    **inference.OPTIONS,  # device, dtype, compile
    "raw_prompt": (False, "send start as it is to a checkpoint fine-tuned on a task, instead of "
                          "rendering it in the task's prompt template"),
}


def read_prompt(start):
    """The prompt text: start itself, or the contents of the file that FILE:<path> names."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
        raise configurator.ConfigError(f"start=FILE:{path}: cannot read the prompt file: {reason}") from None


def check_settings(cfg):
    """Refuse values that generate() would trip over later, naming the key."""
    checks = [("num_samples", cfg["num_samples"] >= 1, "must be at least 1"),
              ("max_new_tokens", cfg["max_new_tokens"] >= 1, "must be at least 1"),
              ("temperature", cfg["temperature"] >= 0, "must be 0 (greedy) or positive"),
              ("top_k", cfg["top_k"] >= 0, "must be 0 (all tokens) or positive"),
              ("top_p", 0 < cfg["top_p"] <= 1, "must be in (0, 1]")]
    for key, ok, rule in checks:
        if not ok:
            raise configurator.ConfigError(f"{key}={cfg[key]!r} {rule}")


def text_deltas(stream, tokenizer):
    """(new text, tokens so far) after each step of one sample's token stream; a UTF-8 character
    whose bytes have not all arrived yet is held back (it would print as U+FFFD)."""
    text, count = TextStream(tokenizer.decode), 0
    for token_lists in stream:
        count = len(token_lists[0])
        text.update(token_lists[0])
        delta = text.release()
        if delta:
            yield delta, count
    delta = text.release(final=True)  # still held back at the end: the model did write U+FFFD
    if delta:
        yield delta, count


def draw_samples(model, tokenizer, prompt, cfg):
    """Print num_samples continuations of prompt, each as it is generated; returns their texts."""
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    samples = []
    for i in range(cfg["num_samples"]):
        print("-" * 72 + "\n" + prompt, end="", flush=True)
        t0, pieces, count = time.perf_counter(), [], 0
        stream = model.generate_stream([prompt_ids], cfg["max_new_tokens"], cfg["temperature"],
                                       cfg["top_k"] or None, cfg["top_p"],
                                       stop_tokens=[tokenizer.eot_id], seed=cfg["seed"] + i)
        for piece, count in text_deltas(stream, tokenizer):
            print(piece, end="", flush=True)
            pieces.append(piece)
        seconds = time.perf_counter() - t0
        print(flush=True)
        print(f"[sample {i + 1}: {count} tokens in {seconds:.2f} s, {count / seconds:.1f} tokens/s]",
              file=sys.stderr, flush=True)
        samples.append("".join(pieces))
    return samples


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="sample.py")
    with configurator.errors_exit(checkpoint.CheckpointError, ValueError):
        check_settings(cfg)
        prompt = read_prompt(cfg["start"])
        model, tokenizer, ckpt = inference.load_for_inference(
            cfg["ckpt"] or Path(cfg["out_dir"]) / "best.pt", cfg["device"], cfg["dtype"],
            cfg["compile"])
    if ckpt.get("prompt_template") and not cfg["raw_prompt"]:  # fine-tuned on a task: ask it so
        prompt = tasks.render_prompt(prompt, ckpt["prompt_template"])
    return draw_samples(model, tokenizer, prompt, cfg)


if __name__ == "__main__":
    main()
