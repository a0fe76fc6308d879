"""eval.py: evaluate a checkpoint and write eval.json and report.md.

    python eval.py --ckpt=out/best.pt                         # on the validation split it trained against
    python eval.py --ckpt=out/best.pt --data=data/other       # another prepared folder (same tokenizer)
    python eval.py --ckpt=out/best.pt --text="['notes.txt']"  # raw text files

1. Likelihood: perplexity and bits per byte over the whole split with a sliding window (every token
   scored once, each with at least block_size - stride tokens of context), overall and per source,
   beside uniform, unigram and Kneser-Ney n-gram baselines scored on the same tokens (core/metrics.py).
2. Generation task: the first `gen_documents` held-out documents long enough are cut into a prompt
   (first `prompt_tokens` tokens) and a reference (the next `reference_tokens`); the model continues
   each prompt (greedy unless temperature > 0) and the continuations are scored against the
   references with sacrebleu (corpus BLEU, chrF; signatures in the report) and rouge-score
   (ROUGE-1/2/L F1 with stemming), and on their own: distinct-1/2/3, self-BLEU, repetition,
   coherence with the prompt and toxicity rate. Every case goes to generations.jsonl, and the scored
   texts to references.txt and hypotheses.txt, for sacrebleu's and rouge-score's own command lines.
3. Report: the tables, learning curves from the checkpoint's history, samples, the model and configs;
   metrics also go to TensorBoard (<out_dir>/tb).
"""

import json
from pathlib import Path

import numpy as np

from core import atomic, checkpoint, configurator, cpu_memory, hardware, inference, metrics, tracking
from core.tokenizer import Tokenizer
from curation import filters
from evaluation import task_eval

SPEC = {
    "ckpt": ("out/best.pt", "checkpoint to evaluate"),
    "data": ("", "prepared data folder (default: the one the checkpoint was trained on)"),
    "text": ([], "raw text files to evaluate instead of a data folder"),
    "split": ("val", "split of the data folder"),
    "out_dir": ("", "where eval.json, report.md and plots go (default: <ckpt folder>/eval)"),
    "stride": (0, "sliding-window stride in tokens (0: half of block_size)"),
    "batch_size": (8, "windows or prompts per forward pass"),
    "max_tokens": (0, "score at most this many tokens per source (0: all)"),
    **inference.OPTIONS,  # device, dtype, compile
    "gen_documents": (100, "documents in the generation task"),
    "prompt_tokens": (64, "prompt length in the generation task (cut to block_size - 1)"),
    "reference_tokens": (64, "reference continuation length = tokens generated"),
    "temperature": (0.0, "0 = greedy"),
    "task_split": ("test", "a fine-tuning task's pairs to answer: 'test' (to report) or 'val' (to "
                           "choose decoding settings on)"),
    "beam_size": (1, "a fine-tuning task's responses: 1 = greedy, more = beam search with this many beams"),
    "length_penalty": (1.0, "beam search ranks finished hypotheses by log probability / length ** this"),
    "top_k": (0, "sampling: keep the k likeliest tokens (0: all)"),
    "top_p": (1.0, "sampling: nucleus probability"),
    "seed": (1337, "sampling seed"),
    "ngram_order": (3, "order of the Kneser-Ney baseline"),
    "ngram_train_tokens": (20_000_000, "train tokens the n-gram baselines count (0: all)"),
    "tensorboard": (True, "also log the metrics to TensorBoard"),
    "track": (True, "add the figures to the MLflow / W&B run the checkpoint was trained in, when "
                    "train.py tracked it (mlflow_log, wandb_log)"),
    "keep_freed_memory": (True, "CPU: keep freed memory in the process for reuse (core/cpu_memory.py; "
                                "faster, for more resident memory: see BENCHMARKS.md)"),
}


class EvalError(ValueError):
    pass


def data_folder(cfg, ckpt):
    """(folder, its meta.json) to evaluate on: --data, else the one the checkpoint trained on."""
    folder = Path(cfg["data"] or ckpt.get("dataset", {}).get("path", ""))
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise EvalError(f"{meta_path} not found: build it with `{configurator.prepare_command(folder)}`, "
                        "or give --data=<a folder prepare.py wrote> or --text")
    return folder, json.loads(meta_path.read_text())


def evaluate_on_task(cfg, model, tokenizer, ckpt, folder, out_dir):
    """A fine-tuning task's evaluation (evaluation/task_eval.py): BLEU and chrF of the model's
    responses to the test pairs, beside copying the source and retrieval, per direction."""
    pairs = folder / f"{cfg['task_split']}.jsonl"
    if cfg["task_split"] not in ("val", "test") or not pairs.exists():
        raise EvalError(f"task_split={cfg['task_split']!r}: {pairs} not found (a task folder has "
                        f"val.jsonl and test.jsonl; `{configurator.prepare_command(folder)}` writes them)")
    if cfg["beam_size"] < 1 or cfg["length_penalty"] < 0:
        raise EvalError(f"beam_size={cfg['beam_size']} must be >= 1 and length_penalty="
                        f"{cfg['length_penalty']} >= 0")
    scores = task_eval.evaluate_task(model, tokenizer, folder, pairs, out_dir, cfg["batch_size"],
                                     cfg["beam_size"], cfg["length_penalty"])
    result = {"checkpoint": str(cfg["ckpt"]), "evaluated_on": str(pairs), "task": scores,
              "training": {"iter_num": ckpt.get("iter_num"), "config": ckpt["config"]},
              "eval_config": cfg}
    atomic.write_text(out_dir / "eval.json", json.dumps(result, indent=1, default=str))
    decoding = ("greedy" if cfg["beam_size"] == 1 else
                f"beam search, {cfg['beam_size']} beams, length penalty {cfg['length_penalty']}")
    lines = [f"# Evaluation of {cfg['ckpt']} on {pairs} ({decoding})", "",
             "| pairs | system | BLEU (± 95% interval) | chrF (± 95% interval) |", "|---|---|---:|---:|"]
    for group, row in scores.items():
        lines += [f"| {group} ({row['pairs']:,}) | {name} | {row[name]['bleu']:.2f} ± "
                  f"{row[name]['bleu_ci95']:.2f} | {row[name]['chrf']:.2f} ± {row[name]['chrf_ci95']:.2f} |"
                  for name in ("model", "copy", "retrieval")]
        print(f"{group}: {row['pairs']:,} pairs; BLEU model {row['model']['bleu']:.2f} ± "
              f"{row['model']['bleu_ci95']:.2f}, copy {row['copy']['bleu']:.2f}, retrieval "
              f"{row['retrieval']['bleu']:.2f}; chrF model {row['model']['chrf']:.2f} ± "
              f"{row['model']['chrf_ci95']:.2f}", flush=True)
    signatures = next(iter(scores.values()))["model"]
    lines += ["", f"BLEU signature: `{signatures['bleu_signature']}`; chrF: "
              f"`{signatures['chrf_signature']}`. Each direction's references and every system's "
              "hypotheses are in this folder, one pair per line: `sacrebleu DIRECTION.references.txt "
              "-i DIRECTION.model.txt -m bleu chrf` gives the same scores (`--confidence` the intervals).", ""]
    atomic.write_text(out_dir / "report.md", "\n".join(lines))
    print(f"wrote {out_dir}/report.md", flush=True)
    log_to_tracked_run(cfg, ckpt, {"task": scores}, out_dir)
    return result


def load_streams(cfg, tokenizer, ckpt):
    """{source: token array} to score, the train tokens for the baselines (or None), and a label."""
    if cfg["text"]:
        parts = []
        for path in cfg["text"]:
            try:
                parts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise EvalError(f"cannot read --text file {path}: {e.strerror}") from None
        ids = []
        for text in parts:
            ids += tokenizer.encode(text) + [tokenizer.eot_id]
        return {"text": np.array(ids, dtype=np.int64)}, None, ", ".join(cfg["text"])
    folder, meta = data_folder(cfg, ckpt)
    data_tokenizer = Tokenizer.load(folder / meta.get("tokenizer", "tokenizer.json"))
    if data_tokenizer.tokens != tokenizer.tokens or data_tokenizer.pattern != tokenizer.pattern:
        raise EvalError(f"{folder} was tokenized with a different tokenizer than {cfg['ckpt']}: its "
                        "token ids mean other strings; evaluate raw files with --text instead")
    if cfg["split"] not in meta["splits"]:
        raise EvalError(f"split {cfg['split']!r} not in {folder} (has {list(meta['splits'])})")
    data = np.memmap(folder / f"{cfg['split']}.bin", dtype=meta["dtype"], mode="r")
    streams = {name: np.asarray(data[start:end], dtype=np.int64)
               for name, (start, end) in meta["splits"][cfg["split"]]["source_ranges"].items()
               if end - start > 1}
    train = np.memmap(folder / "train.bin", dtype=meta["dtype"], mode="r")
    if cfg["ngram_train_tokens"]:
        train = train[:cfg["ngram_train_tokens"]]
    return streams, np.asarray(train, dtype=np.int64), f"{folder} ({cfg['split']})"


def generation_task(model, tokenizer, streams, cfg, device):
    """The held-out cases as text: (sources, prompts, references, continuations)."""
    block = model.config.block_size
    prompt_len = min(cfg["prompt_tokens"], block - 1)
    cases = []  # (source, prompt ids, reference ids)
    per_source = max(1, cfg["gen_documents"] // max(1, len(streams)))
    for source, tokens in streams.items():
        ends = np.flatnonzero(tokens == tokenizer.eot_id)
        starts = np.concatenate([[0], ends + 1])[:len(ends)]
        taken = 0
        for s, e in zip(starts, ends):
            if e - s >= prompt_len + cfg["reference_tokens"] and taken < per_source:
                cases.append((source, tokens[s:s + prompt_len].tolist(),
                              tokens[s + prompt_len:s + prompt_len + cfg["reference_tokens"]].tolist()))
                taken += 1
    outputs = []
    for i in range(0, len(cases), cfg["batch_size"]):
        prompts = [c[1] for c in cases[i:i + cfg["batch_size"]]]
        # a reference never crosses its document's end, so a continuation stops at end-of-text too
        outputs += model.generate(prompts, cfg["reference_tokens"], temperature=cfg["temperature"],
                                  top_k=cfg["top_k"] or None, top_p=cfg["top_p"],
                                  stop_tokens=(tokenizer.eot_id,), seed=cfg["seed"] + i)
    return ([c[0] for c in cases], [tokenizer.decode(c[1]) for c in cases],
            [tokenizer.decode(c[2]) for c in cases], [tokenizer.decode(o) for o in outputs])


def write_generations(out_dir, sources, prompts, references, hypotheses):
    """generations.jsonl: every case as generated; references.txt and hypotheses.txt: the one-line
    texts that were scored, line i of each being case i."""
    cases = [{"source": s, "prompt": p, "reference": r, "hypothesis": h}
             for s, p, r, h in zip(sources, prompts, references, hypotheses)]
    atomic.write_text(out_dir / "generations.jsonl",
                      "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases))
    for name, texts in (("references.txt", references), ("hypotheses.txt", hypotheses)):
        atomic.write_text(out_dir / name, "".join(metrics.one_line(t) + "\n" for t in texts))


def score_generations(prompts, references, hypotheses):
    """The generation task's scores. ROUGE and toxicity need packages a bare GPU machine may lack
    (rouge-score, alt-profanity-check): without them those rows are left out and `not_computed`
    says why, so the rest of an evaluation run is never lost to a missing package."""
    import sacrebleu

    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    result = {"documents": len(hypotheses), "not_computed": {}}
    if not hypotheses:
        return result
    result["bleu"] = bleu.corpus_score(hypotheses, [references]).score
    result["bleu_signature"] = str(bleu.get_signature())
    result["chrf"] = chrf.corpus_score(hypotheses, [references]).score
    result["chrf_signature"] = str(chrf.get_signature())
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        result["not_computed"]["rouge1, rouge2, rougeL"] = "rouge-score is not installed"
    else:
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        rouge = [scorer.score(r, h) for r, h in zip(references, hypotheses)]
        for key in ("rouge1", "rouge2", "rougeL"):
            result[key] = float(np.mean([s[key].fmeasure for s in rouge]))
    for n in (1, 2, 3):
        result[f"distinct_{n}"] = metrics.distinct_n(hypotheses, n)
    result["self_bleu"] = metrics.self_bleu(hypotheses)
    result["repetition_4gram"] = metrics.repetition_rate(hypotheses, 4)
    result["coherence"] = metrics.coherence(prompts, hypotheses)
    result["coherence_of_references"] = metrics.coherence(prompts, references)
    try:
        result["toxicity_rate"] = float(np.mean([s > 0.5 for s in filters.toxicity_scores(hypotheses)]))
    except ImportError:
        result["not_computed"]["toxicity_rate"] = "alt-profanity-check is not installed"
    return result


def evaluate(cfg):
    device = hardware.resolve_device(cfg["device"])
    if device.type == "cpu" and cfg["keep_freed_memory"]:
        cpu_memory.keep_freed_memory()
    model, tokenizer, ckpt = inference.load_for_inference(cfg["ckpt"], device, cfg["dtype"], cfg["compile"])
    print(f"device: {device}; kernels: "
          f"{hardware.choose_kernels(model.config.kernels, device)[1]}", flush=True)
    block = model.config.block_size
    stride = cfg["stride"] or max(1, block // 2)
    if not 0 < stride <= block:
        raise EvalError(f"stride={stride} must be between 1 and block_size={block}")
    out_dir = Path(cfg["out_dir"] or Path(cfg["ckpt"]).parent / "eval")
    if not cfg["text"]:
        folder, meta = data_folder(cfg, ckpt)
        if "task" in meta:
            out_dir.mkdir(parents=True, exist_ok=True)
            return evaluate_on_task(cfg, model, tokenizer, ckpt, folder, out_dir)
    streams, train, label = load_streams(cfg, tokenizer, ckpt)
    if cfg["max_tokens"]:
        streams = {k: v[:cfg["max_tokens"]] for k, v in streams.items()}
    if not streams:
        raise EvalError(f"nothing to evaluate in {label}")
    out_dir.mkdir(parents=True, exist_ok=True)

    likelihood, baselines = score_likelihood(model, tokenizer, streams, train, cfg, stride, device)

    sources, prompts, references, hypotheses = generation_task(model, tokenizer, streams, cfg, device)
    write_generations(out_dir, sources, prompts, references, hypotheses)
    generation = score_generations(prompts, [metrics.one_line(r) for r in references],
                                   [metrics.one_line(h) for h in hypotheses])
    samples = [{"prompt": p, "reference": r, "generated": h}
               for p, r, h in list(zip(prompts, references, hypotheses))[:5]]
    params = model.parameter_breakdown()
    result = {"checkpoint": str(cfg["ckpt"]), "evaluated_on": label, "stride": stride,
              "likelihood": likelihood, "baselines": baselines, "generation": generation,
              "samples": samples, "model": {"parameters": params, "config": ckpt["model_args"]},
              "training": {"iter_num": ckpt.get("iter_num"), "tokens_seen": ckpt.get("tokens_seen"),
                           "config": ckpt["config"]}, "eval_config": cfg}
    atomic.write_text(out_dir / "eval.json", json.dumps(result, indent=1, default=str))
    write_report(out_dir, result, ckpt.get("history", []))
    if cfg["tensorboard"]:
        log_to_tensorboard(out_dir / "tb", ckpt.get("iter_num") or 0, likelihood, generation)
    log_to_tracked_run(cfg, ckpt, {"likelihood": likelihood, "baselines": baselines,
                                   "generation": generation}, out_dir)
    print(f"overall perplexity {likelihood['overall']['perplexity']:.2f}, bits per byte "
          f"{likelihood['overall']['bits_per_byte']:.3f}"
          + "".join(f"; {k} {v['perplexity']:.2f}, {v['bits_per_byte']:.3f}"
                    for k, v in baselines.items() if k != "model")
          + (f"; BLEU {generation['bleu']:.2f}" if "bleu" in generation else "")
          + (f", ROUGE-L {generation['rougeL']:.3f}" if "rougeL" in generation else "")
          + f"; wrote {out_dir}/report.md", flush=True)
    return result


def score_likelihood(model, tokenizer, streams, train, cfg, stride, device):
    """(likelihood, baselines): the model's perplexity and bits per byte on every source and
    overall, and the same tokens scored by the uniform, unigram and Kneser-Ney baselines (the last
    two fitted on train, when it is known)."""
    vocab = model.config.vocab_size
    kn = metrics.KneserNey(train, vocab, cfg["ngram_order"]) if train is not None else None
    unigram = metrics.unigram_nll(train, np.arange(vocab), vocab) if train is not None else None
    rows, all_nll = {}, {"model": [], "uniform": [], "unigram": [], "kneser_ney": []}
    for source, tokens in streams.items():
        nll = metrics.sliding_window_nll(model, tokens, stride, cfg["batch_size"], device)
        n_bytes = metrics.scored_bytes(tokens, len(nll), tokenizer)
        row = {"tokens": len(nll), "bytes": n_bytes, "perplexity": metrics.perplexity(nll),
               "bits_per_byte": metrics.bits_per_byte(nll, n_bytes)}
        all_nll["model"].append(nll)
        all_nll["uniform"].append(metrics.uniform_nll(len(nll), vocab))
        if train is not None:
            all_nll["unigram"].append(unigram[tokens[1:]])
            all_nll["kneser_ney"].append(kn.nll(tokens))
        # this source's tokens under each baseline: the same bytes as the model's row
        row["baselines"] = {name: {"perplexity": metrics.perplexity(parts[-1]),
                                   "bits_per_byte": metrics.bits_per_byte(parts[-1], n_bytes)}
                            for name, parts in all_nll.items() if name != "model" and parts}
        rows[source] = row
        print(f"{source}: {len(nll):,} tokens, perplexity {row['perplexity']:.2f}, "
              f"bits per byte {row['bits_per_byte']:.3f}", flush=True)
    n_bytes = sum(row["bytes"] for row in rows.values())
    scores = {}
    for name, parts in all_nll.items():  # every baseline scores the model's tokens, so the same bytes
        if parts:
            nll = np.concatenate(parts)
            scores[name] = {"tokens": len(nll), "perplexity": metrics.perplexity(nll),
                            "loss": float(np.mean(nll)),
                            "bits_per_byte": metrics.bits_per_byte(nll, n_bytes)}
    if train is not None:
        scores["kneser_ney"].update(order=cfg["ngram_order"], train_tokens=len(train))
    likelihood = {"overall": dict(scores["model"]), "per_source": rows}
    return likelihood, scores


def log_to_tracked_run(cfg, ckpt, figures, out_dir):
    """Every number in figures as eval/... metrics, and eval.json and report.md, added to the
    MLflow / W&B run(s) the checkpoint's training logged to (none if it was not tracked)."""
    tracked = ckpt.get("tracking") or {}
    if not cfg["track"] or not tracked:
        return
    flat = tracking.flat_figures(figures, "eval")
    files = [out_dir / "eval.json", out_dir / "report.md"]
    for name in tracking.log_evaluation(tracked, flat, ckpt.get("iter_num") or 0, files):
        print(f"logged {len(flat)} figures to {name}", flush=True)


def log_to_tensorboard(folder, step, likelihood, generation):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder))
    writer.add_scalar("eval/perplexity", likelihood["overall"]["perplexity"], step)
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "distinct_2", "self_bleu",
                "repetition_4gram", "coherence", "toxicity_rate"):
        if key in generation:
            writer.add_scalar(f"eval/{key}", generation[key], step)
    writer.close()


def write_report(out_dir, result, history):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = [f"# Evaluation of {result['checkpoint']}", "",
             f"Evaluated on {result['evaluated_on']}; sliding window stride {result['stride']}.", "",
             "## Likelihood", "", "| | tokens | perplexity | bits per byte |", "|---|---:|---:|---:|"]
    for source, row in result["likelihood"]["per_source"].items():
        beside = ", ".join(f"{name} {b['bits_per_byte']:.3f}" for name, b in row["baselines"].items())
        lines.append(f"| {source} | {row['tokens']:,} | {row['perplexity']:.2f} | "
                     f"{row['bits_per_byte']:.3f} (baselines: {beside}) |")
    overall = result["likelihood"]["overall"]
    lines += [f"| **all** | {overall['tokens']:,} | {overall['perplexity']:.2f} | "
              f"{overall['bits_per_byte']:.3f} |", "",
              "## Baselines (same tokens)", "",
              "| model | loss (nats/token) | perplexity | bits per byte |", "|---|---:|---:|---:|"]
    for name, row in result["baselines"].items():
        lines.append(f"| {name} | {row['loss']:.3f} | {row['perplexity']:.2f} | "
                     f"{row['bits_per_byte']:.3f} |")
    g = result["generation"]
    lines += ["", f"## Generation task ({g['documents']} documents)", ""]
    if "bleu" in g:
        lines += ["| metric | value | range |", "|---|---:|---|"]
        for key, span in (("bleu", "0-100"), ("chrf", "0-100"), ("rouge1", "0-1"), ("rouge2", "0-1"),
                          ("rougeL", "0-1"), ("distinct_1", "0-1"), ("distinct_2", "0-1"),
                          ("distinct_3", "0-1"), ("self_bleu", "0-100, lower = more diverse"),
                          ("repetition_4gram", "0-1, lower = fewer loops"),
                          ("coherence", "0-1"), ("coherence_of_references", "0-1"),
                          ("toxicity_rate", "0-1")):
            if key in g:
                lines.append(f"| {key} | {g[key]:.4f} | {span} |")
        lines += [f"| {key} | not computed: {why} | |" for key, why in g["not_computed"].items()]
        lines += ["", f"BLEU signature: `{g['bleu_signature']}`; chrF: `{g['chrf_signature']}`", "",
                  "Every case is in `generations.jsonl`; `references.txt` and `hypotheses.txt` hold "
                  "the scored texts (line breaks as spaces), one case per line, for the scorers' own "
                  "command lines:", "", "```",
                  "sacrebleu references.txt -i hypotheses.txt -m bleu chrf -w 4",
                  "python -m rouge_score.rouge --target_filepattern=references.txt "
                  "--prediction_filepattern=hypotheses.txt --output_filename=rouge.csv "
                  "--use_stemmer=true --noaggregate   # the mean of each column is the table's",
                  "```"]
    if history:
        steps = [h["iter"] for h in history]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        axes[0].plot(steps, [h["train_loss"] for h in history], label="train")
        axes[0].plot(steps, [h["val_loss"] for h in history], label="val")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss (nats/token)")
        axes[0].legend()
        axes[1].plot([h["tokens"] / 1e6 for h in history], [h["val_ppl"] for h in history])
        axes[1].set_xlabel("tokens seen (millions)")
        axes[1].set_ylabel("validation perplexity")
        axes[1].set_yscale("log")
        fig.tight_layout()
        fig.savefig(out_dir / "learning_curves.png", dpi=100, metadata={"Software": None})
        plt.close(fig)
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
    lines += ["", "## Samples", ""]
    for s in result["samples"]:
        lines += ["**prompt**", "```", s["prompt"], "```", "**reference**", "```", s["reference"], "```",
                  "**generated**", "```", s["generated"], "```", ""]
    params = result["model"]["parameters"]
    lines += ["## Model, data and training", "",
              f"{params['total'] / 1e6:.2f}M parameters; model config `{result['model']['config']}`; "
              f"trained {result['training']['iter_num']} steps on {result['training']['tokens_seen']:,} "
              "tokens.", "", "```", json.dumps(result["training"]["config"], indent=1, default=str), "```"]
    atomic.write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="eval.py")
    with configurator.errors_exit(checkpoint.CheckpointError, ValueError):
        return evaluate(cfg)


if __name__ == "__main__":
    main()
