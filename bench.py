"""bench.py: the project's benchmarks; prints Markdown rows for BENCHMARKS.md.

    python bench.py prepare            # data pipeline on the offline default corpus (run prepare.py first)
    python bench.py prepare --hf       # also HF `tokenizers` BPE side by side (pip install tokenizers)
    python bench.py model              # CPU: training step tokens/s, loss memory, generation tokens/s
    python bench.py gpu                # CUDA: kernel tests, kernel GB/s, memory, bf16 training + MFU
    python bench.py train              # train.py itself: tokens/s and peak memory per setting
    python bench.py eval               # tokens/s of eval.py's perplexity pass
    python bench.py serve              # serve.py: one stream, 8 concurrent clients, latency
    python bench.py all                # model, then gpu when CUDA is present (--gpu forces it)

Figures are wall-clock on whatever machine runs them; the machine is printed with them.
"""

import contextlib
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path



def machine():
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def row(what, seconds, docs=None, chars=None, note=""):
    rate = []
    if docs:
        rate.append(f"{docs / seconds:,.0f} docs/s")
    if chars:
        rate.append(f"{chars / seconds / 1e6:.2f} MB/s")
    print(f"| {what} | {seconds:.2f} s | {', '.join(rate)} | {note} |", flush=True)


def bench_prepare(args):
    # imported here: the GPU machine lacks some of the data pipeline's packages
    import prepare
    import sources
    from tokenizer import Tokenizer, count_chunks_parallel, train_bpe
    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    data = Path(cfg["data_root"]) / cfg["dataset"]
    if not (data / "curated" / "stats.json").exists():
        raise SystemExit(f"run `python prepare.py` first: {data}/curated is missing")
    specs = sources.resolve_sources(cfg["sources"])
    print(f"machine: {machine()}\n")
    print("| stage | time | rate | note |\n|---|---:|---:|---|")

    # 1. collect alone (reading files and JSON)
    t0 = time.perf_counter()
    items = [item for spec in specs for item in sources.iter_source(spec, lambda *a: None)]
    t_collect = time.perf_counter() - t0
    raw_chars = sum(len(r) for _, _, r in items)
    row("collect (read files + JSON)", t_collect, len(items), raw_chars, "1 process")

    # 2. clean + filter + MinHash signatures, one process (process_batch is what the workers run)
    import filters
    t0 = time.perf_counter()
    texts = []
    for batch in prepare._batched(items, 128):
        cleaned = [filters.clean(raw, doc_type, pii=True) for _, doc_type, raw in batch]
        filters.filter_batch(cleaned, [d for _, d, _ in batch], cfg)
        texts.extend(cleaned)
    t_filter = time.perf_counter() - t0
    row("clean + quality filters", t_filter, len(items), raw_chars, "1 process")

    # where the filtering time goes: each rule on its own over the same cleaned documents
    t0 = time.perf_counter()
    for _, doc_type, raw in items:
        filters.clean(raw, doc_type, pii=True)
    per_rule = {"clean (incl. PII)": time.perf_counter() - t0}
    for name in dict.fromkeys([*filters.PROSE_RULES, *filters.CODE_RULES]):
        if name == "toxicity":
            continue
        t0 = time.perf_counter()
        for text, (_, doc_type, _) in zip(texts, items):
            if name in filters.RULES[doc_type]:
                filters.RULES[doc_type][name](text, cfg)
        per_rule[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in prepare._batched(texts, 128):
        filters.toxicity_scores(batch)
    per_rule["toxicity (batches of 128)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for text in texts[:2000]:
        filters.toxicity_scores([text])
    per_rule["toxicity (one call per doc, extrapolated)"] = (time.perf_counter() - t0) * len(texts) / 2000
    top = sorted(per_rule.items(), key=lambda kv: -kv[1])
    print("|  where clean + filter time goes (all documents, each rule alone) | | | "
          + ", ".join(f"{k} {v:.1f} s" for k, v in top if v >= 0.1) + " |")

    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=cfg["minhash_threshold"], num_perm=cfg["minhash_num_perm"])
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=cfg["minhash_num_perm"], seed=1, scheme="affine32")
        m.update_batch([s.encode() for s in prepare.shingles(text, cfg["minhash_shingle_words"])])
        if not lsh.query(m):
            lsh.insert(str(i), m)
    t_minhash = time.perf_counter() - t0
    row("MinHash signatures + LSH query/insert", t_minhash, len(texts), sum(map(len, texts)),
        f"{cfg['minhash_num_perm']} perms, {cfg['minhash_shingle_words']}-word shingles, 1 process")

    # 3. the whole curate stage as prepare.py runs it
    for workers in (1, os.cpu_count()):
        bench_cfg = {**cfg, "data_root": str(data.parent / "bench"), "workers": workers}
        out = Path(bench_cfg["data_root"]) / cfg["dataset"]
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        prepare.curate(bench_cfg, specs, out)
        row("curate stage (collect+clean+filter+dedup+shards)", time.perf_counter() - t0,
            len(items), raw_chars, f"workers={workers}")

    # 4. tokenizer training on the default sample
    stats = json.loads((data / "curated" / "stats.json").read_text())
    total = sum(s["chars_kept"] for s in stats.values())
    keep = min(1.0, cfg["tokenizer_sample_bytes"] / total)
    sample = [d["text"] for spec in specs for d in prepare.iter_curated(data / "curated", spec["name"])
              if prepare.fraction_of(f"{d['source']}/{d['id']}") < keep]
    sample_chars = sum(map(len, sample))
    workers = os.cpu_count()
    t0 = time.perf_counter()
    chunks = count_chunks_parallel(sample, cfg["tokenizer_pattern"], workers)
    t_split = time.perf_counter() - t0
    tokens = train_bpe(chunks, cfg["vocab_size"])
    t_merge = time.perf_counter() - t0 - t_split
    ours = t_split + t_merge
    row("BPE: regex pre-split + count", t_split, None, sample_chars,
        f"{len(chunks):,} unique chunks, workers={workers}")
    row(f"BPE: {len(tokens) - 256:,} merges", t_merge, None, None, "vocab "
        f"{cfg['vocab_size']:,}")
    row("BPE training, ours in total", ours, None, sample_chars)
    if args.hf:
        from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(cfg["tokenizer_pattern"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=cfg["vocab_size"], special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        t0 = time.perf_counter()
        hf.train_from_iterator(sample, trainer)
        t_hf = time.perf_counter() - t0
        row("BPE training, HF tokenizers (Rust)", t_hf, None, sample_chars,
            f"vocab {hf.get_vocab_size():,}; ours/HF = {ours / t_hf:.1f}x")

    # 5. encoding with tiktoken through our Encoding
    tok = Tokenizer.load(data / "tokenizer.json")
    corpus = [d["text"] for spec in specs for d in prepare.iter_curated(data / "curated", spec["name"])]
    corpus_bytes = sum(len(t.encode("utf-8")) for t in corpus)
    for threads in (1, os.cpu_count()):
        t0 = time.perf_counter()
        n_tokens = sum(map(len, tok.encode_batch(corpus, threads)))
        dt = time.perf_counter() - t0
        print(f"| tiktoken encode, {threads} thread(s) | {dt:.2f} s | {corpus_bytes / dt / 1e6:.1f} MB/s"
              f" | {n_tokens:,} tokens, {corpus_bytes / n_tokens:.2f} bytes/token |", flush=True)


# ------------------------------------------------------------------------------------- the model

def model_of(config_file, vocab_size=32000):
    """GPTConfig keyword arguments of a training config (config/*.py over train.py's defaults):
    the model sizes benchmarked are the ones the configs train."""
    import configurator
    import train
    cfg = configurator.parse(train.SPEC, [config_file])
    return dict({k: cfg[k] for k in train.MODEL_KEYS}, vocab_size=vocab_size)


def mini_lm():
    """config/mini_lm.py's model. A function, not a module constant: reading a config imports
    train.py and so kernels/, which must see TRITON_INTERPRET first where a suite sets it."""
    return model_of("config/mini_lm.py")


SMALL = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0, bias=True)  # nanoGPT's


def train_step(model_kwargs, batch, compile_=False, device="cpu", dtype=None, **config):
    """A full training step (forward, backward, AdamW) on fixed random tokens, already run twice
    (compiling, if asked); returns (step function, tokens per step, first step's seconds, model)."""
    import torch

    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**model_kwargs, **config})).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device)
    run = torch.compile(model) if compile_ else model
    t = model.config.block_size
    x = torch.randint(model.config.vocab_size, (batch, t), device=device)
    y = torch.randint(model.config.vocab_size, (batch, t), device=device)
    autocast = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()

    def step():
        with autocast:
            _, loss = run(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()
    return step, batch * t, first, model


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


def train_step_rate(model_kwargs, batch, steps, compile_=False, device="cpu", dtype=None,
                    **config):
    """Median tokens/s of full training steps, the first step's time, and the model."""
    step, tokens, first, model = train_step(model_kwargs, batch, compile_, device, dtype, **config)
    return interleaved_rates({"": (step, tokens)}, steps)[""], first, model


def sgemm_gflops(n=2048, repeats=5):
    """The CPU's float32 matrix-multiply throughput (GFLOP/s) on a large square product."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def step_time_breakdown(model_kwargs, batch, steps=3):
    """Where an eager float32 training step's time goes (profiler self time): the Linear layers'
    matrix products, attention (sdpa, forward and backward) and everything else; plus the
    matrix products' GFLOP/s (6 x tokens x Linear weights per step, forward and backward)."""
    import torch.nn as nn
    from torch.profiler import profile
    step, tokens, _, model = train_step(model_kwargs, batch)
    with profile() as prof:
        for _ in range(steps):
            step()
    shares = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = ("matmul" if event.key in ("aten::mm", "aten::addmm", "aten::bmm") else
                "attention" if "scaled_dot_product" in event.key else "other")
        shares[kind] += event.self_cpu_time_total / 1e6 / steps  # seconds per step
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    gflops = 6 * tokens * linear / shares["matmul"] / 1e9
    return shares, gflops


def saved_for_backward_bytes(loss_fn, logits, targets):
    """Bytes that a loss keeps alive between forward and backward, beyond its inputs."""
    import torch
    inputs = {logits.untyped_storage().data_ptr(), targets.untyped_storage().data_ptr()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits, targets)
    return sum(saved.values())


def weight_bytes_per_token(model):
    """Bytes of weights one batch-1 decoding step reads: every matrix once (the tied embedding is
    read as the LM head), plus one position-embedding row."""
    import torch.nn as nn
    linear = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                 if isinstance(m, nn.Linear))
    return linear + model.config.n_embd * model.lm_head.weight.element_size()


def matvec_bandwidth(dtype, megabytes=168, repeats=20):
    """Best GB/s of a vector-matrix product over a weight of that size, in both memory layouts."""
    import torch
    k = 2560
    n = int(megabytes * 1e6 / (k * torch.tensor([], dtype=dtype).element_size()))
    w = torch.randn(n, k).to(dtype)
    x = torch.randn(1, k).to(dtype)
    best = 0.0
    for weight in (w, w.t().contiguous().t()):
        for _ in range(3):
            torch.nn.functional.linear(x, weight)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, weight)
        best = max(best, w.numel() * w.element_size() * repeats / (time.perf_counter() - t0) / 1e9)
    return best


def weights_only_rate(model, repeats=10):
    """Decoding steps/s if a step did nothing but multiply one vector by each of the model's weight
    matrices, in its own layout: the floor of its weight reads, which attention, LayerNorm, GELU and
    Python add to. Median of repeats; the weights (191 MB for mini_lm) do not fit in cache."""
    import torch
    import torch.nn as nn
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(vectors[w.shape[1]], w)
            times.append(time.perf_counter() - t0)
    return 1 / statistics.median(times[1:])


def bench_model_cpu(quick=False):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # only the loss-memory check runs a kernel on CPU
    import torch

    import kernels
    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    # generation first, in a process that has run nothing else yet, as in serve.py or eval.py (after
    # the compiled training steps below it ran slower and less steadily: BENCHMARKS.md)
    bench_generation_cpu(quick)
    steps = 2 if quick else 8
    small = dict(SMALL, block_size=32) if quick else SMALL
    batch = 2 if quick else 16

    print("\nTraining step, float32, batch "
          f"{batch} x {small['block_size']}, {small['n_layer']} layers x {small['n_embd']}:\n")
    print("| vocab | attention | mode | tokens/s | first step | vs eager sdpa |\n|---:|---|---|---:|---:|---:|")
    eager_rate = {}
    for vocab in (222, 32000):
        settings = [("sdpa", False), ("eager", False), ("triton", False), ("sdpa", True)]
        if vocab == 32000:
            settings = [("sdpa", False), ("sdpa", True)]
        steps_by_setting, firsts = {}, {}
        for attention, compile_ in settings:
            step, tokens, firsts[attention, compile_], _ = train_step(
                dict(small, vocab_size=vocab), batch, compile_, attention=attention)
            steps_by_setting[attention, compile_] = (step, tokens)
        rates = interleaved_rates(steps_by_setting, steps)
        base = eager_rate[vocab] = rates["sdpa", False]
        for (attention, compile_), rate in rates.items():
            print(f"| {vocab:,} | {attention} | {'compiled' if compile_ else 'eager'} | {rate:,.0f} | "
                  f"{firsts[attention, compile_]:.1f} s | {rate / base:.2f}x |", flush=True)
        del steps_by_setting

    shares, gflops = step_time_breakdown(dict(small, vocab_size=222), batch, 1 if quick else 3)
    total = sum(shares.values())
    peak = sgemm_gflops(512 if quick else 2048)
    print(f"\nWhere an eager step's time goes at vocab 222 (profiler, {total * 1e3:.0f} ms/step "
          f"profiled): Linear matrix products {shares['matmul'] / total:.0%}, attention "
          f"{shares['attention'] / total:.0%}, everything else {shares['other'] / total:.0%}. The "
          f"matrix products run at {gflops:.0f} GFLOP/s against {peak:.0f} GFLOP/s for a "
          f"{512 if quick else 2048}-square float32 product in this run, so even a compiler that "
          f"removed all the rest would make the step at most {total / (total - shares['other']):.2f}x"
          f" faster.")

    print("\nLoss at vocab 32,000 (float32 logits):\n")
    n, v = (64, 32000) if quick else (batch * small["block_size"], 32000)
    logits = torch.randn(n, v, requires_grad=True)
    targets = torch.randint(v, (n,))
    for _ in range(2):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(logits, targets).backward()
        dt = time.perf_counter() - t0
    torch_saved = saved_for_backward_bytes(
        lambda a, b: torch.nn.functional.cross_entropy(a, b), logits[:8], targets[:8])
    fused_saved = saved_for_backward_bytes(
        lambda a, b: kernels.cross_entropy(a, b, backend="triton"),
        logits[:8].detach().requires_grad_(), targets[:8])
    print(f"- PyTorch cross-entropy forward+backward over {n:,} x {v:,} logits: {dt * 1e3:.0f} ms.")
    print(f"- Kept for backward per token: PyTorch {torch_saved / 8:,.0f} bytes (the log-probabilities),"
          f" fused kernel {fused_saved / 8:,.0f} bytes (one log-sum-exp): at {n:,} tokens that is "
          f"{torch_saved / 8 * n / 1e6:,.0f} MB against {fused_saved / 8 * n / 1e3:,.1f} kB.")

    # last, because it cannot be undone in this process: what train.py does on CPU by default
    import cpu_memory
    if cpu_memory.keep_freed_memory():
        print("\nVocab 32,000 again, with freed memory kept in the process (cpu_memory.py, train.py's "
              "default on CPU), the two settings timed in turns:\n")
        print("| vocab | attention | mode | tokens/s | vs eager sdpa above |\n|---:|---|---|---:|---:|")
        steps_by_setting = {compile_: train_step(dict(small, vocab_size=32000), batch, compile_)[:2]
                            for compile_ in (False, True)}
        for compile_, rate in interleaved_rates(steps_by_setting, steps).items():
            print(f"| 32,000 | sdpa | {'compiled' if compile_ else 'eager'} | {rate:,.0f} | "
                  f"{rate / eager_rate[32000]:.2f}x |", flush=True)


def bench_generation_cpu(quick=False):
    """Batch-1 generation tokens/s of the mini_lm size against its memory-bandwidth limit."""
    import torch

    from model import GPT, GPTConfig, KVCache
    print("\nGeneration, batch 1, mini_lm size (random weights), 16-token prompt:\n")
    new = 20 if quick else 500
    config = dict(mini_lm(), n_layer=2) if quick else mini_lm()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config)).eval()
    limits = {}
    print("| weights | KV cache | new tokens | tokens/s (median) | runs | memory-bound limit | "
          "share of limit | weight products alone | share of those |\n"
          "|---|---|---:|---:|---|---:|---:|---:|---:|")
    for dtype, use_cache in ((torch.float32, True), (torch.float32, False), (torch.bfloat16, True)):
        model = model.to(dtype).optimize_for_decoding()
        if dtype not in limits:
            limits[dtype] = matvec_bandwidth(dtype) * 1e9 / weight_bytes_per_token(model)
        model.generate([[1] * 16], 3, temperature=0, use_cache=use_cache)
        rates, floors = [], []
        for _ in range(3 if use_cache else 1):  # uncached is slow, and its figure is far off anyway
            floors.append(weights_only_rate(model))  # beside each run: this machine's speed drifts
            t0 = time.perf_counter()
            out = model.generate([[1] * 16], new, temperature=0, use_cache=use_cache)
            rates.append(len(out[0]) / (time.perf_counter() - t0))
        rate, floor = statistics.median(rates), statistics.median(floors)
        print(f"| {str(dtype).split('.')[1]} | {'yes' if use_cache else 'no'} | {len(out[0])} | "
              f"{rate:,.1f} | {', '.join(f'{r:,.1f}' for r in rates)} | {limits[dtype]:,.0f} | "
              f"{rate / limits[dtype]:.0%} | {floor:,.0f} | {rate / floor:.0%} |", flush=True)
    cfg = model.config
    kv_bytes = cfg.n_layer * 2 * cfg.n_embd * (16 + new / 2) * 4  # fp32 cache, mean position
    print(f"\n(limit = best matrix-vector bandwidth measured in this run / "
          f"{weight_bytes_per_token(model.float()) / 1e6:.0f} MB of fp32 weights read per token; "
          f"the KV cache adds {kv_bytes / 1e6:.1f} MB per token on average over {new} new tokens, "
          f"not counted in the limit)")
    model = model.float().optimize_for_decoding()
    prompt = torch.randint(cfg.vocab_size, (1, min(1000, cfg.block_size - 1)))
    prefill = {False: [], True: []}
    with torch.inference_mode():
        for _ in range(3):
            for last_only in (False, True):  # in turns
                t0 = time.perf_counter()
                model(prompt, cache=KVCache(cfg, 1, "cpu", torch.float32), last_only=last_only)
                prefill[last_only].append(time.perf_counter() - t0)
    every, last = statistics.median(prefill[False]), statistics.median(prefill[True])
    print(f"\nPrefill of a {prompt.shape[1]}-token prompt (float32, the time to a first token): "
          f"{last * 1e3:,.0f} ms with the LM head on the last position only (what generation "
          f"does), {every * 1e3:,.0f} ms with every position's logits: {every / last:.2f}x.")


# ------------------------------------------------------------------------------------- train.py

def bench_train(quick=False):
    """Runs train.py in fresh processes (so peak memory is each setting's own) and reads its
    log.jsonl."""
    import subprocess
    import sys
    import tempfile
    base = ["config/cpu_demo.py", "--eval_interval=100000", "--sample_interval=0",
            "--log_interval=1", "--tensorboard=False", "--checkpoint_interval=0"]
    mini = base + ["--n_layer=10", "--n_head=8", "--n_embd=512", "--block_size=1024", "--batch_size=4",
                   f"--max_iters={4 if quick else 8}"]
    base = base + [f"--max_iters={4 if quick else 24}"]
    if quick:
        mini = base + ["--n_layer=2", "--block_size=64", "--batch_size=2"]
    print(f"machine: {machine()}\n\n| model | setting | tokens/s (median of last steps) | peak memory |\n"
          "|---|---|---:|---:|")
    for label, args in (("cpu_demo (4.9M)", base), ("mini_lm size (48M), batch 4 x 1024", mini)):
        # gradient checkpointing's memory is compared with freed memory handed back, where peak
        # memory is the tensors' own (kept memory holds the heap near its peak whatever they need)
        for setting in ([], ["--compile=True"], ["--keep_freed_memory=False"],
                        ["--keep_freed_memory=False", "--gradient_checkpointing=True"]):
            with tempfile.TemporaryDirectory() as out:
                result = subprocess.run([sys.executable, "train.py", *args, *setting, f"--out_dir={out}"],
                                        capture_output=True, text=True)
                if result.returncode:
                    raise SystemExit(result.stderr[-2000:])
                steps = [r for r in map(json.loads, open(Path(out) / "log.jsonl")) if r["kind"] == "step"]
            rate = statistics.median(r["tokens_per_s"] for r in steps[len(steps) // 2:])
            print(f"| {label} | {' '.join(setting) or 'eager'} | {rate:,.0f} | "
                  f"{steps[-1]['memory_gb']:.2f} GB |", flush=True)


# -------------------------------------------------------------------------------------- eval.py

def bench_eval(quick=False):
    """Tokens/s of the sliding-window perplexity pass (no grad, batched, fp32), random weights,
    with freed memory kept in the process as eval.py does on CPU (cpu_memory.py)."""
    import numpy as np
    import torch

    import cpu_memory
    import metrics
    from model import GPT, GPTConfig
    cpu_memory.keep_freed_memory()
    cpu_demo = model_of("config/cpu_demo.py")
    print(f"machine: {machine()}, {torch.get_num_threads()} threads\n\n"
          "| model | block | stride | batch | tokens | tokens/s |\n|---|---:|---:|---:|---:|---:|")
    for label, config in (("cpu_demo (4.9M)", cpu_demo), ("mini_lm (48.4M)", mini_lm())):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**config)).eval()
        block = config["block_size"]
        n = 2_000 if quick else 50_000 if block <= 128 else 20_000
        tokens = np.random.default_rng(0).integers(0, config["vocab_size"], n)
        for stride in (block // 2, block):
            metrics.sliding_window_nll(model, tokens[:2 * block], stride, 8)
            t0 = time.perf_counter()
            nll = metrics.sliding_window_nll(model, tokens, stride, 8)
            rate = len(nll) / (time.perf_counter() - t0)
            print(f"| {label} | {block} | {stride} | 8 | {len(nll):,} | {rate:,.0f} |", flush=True)


# ------------------------------------------------------------------------------------- serve.py

def bench_serve(quick=False):
    """A real serve.py process per model size (random weights, the demo tokenizer), driven over HTTP."""
    import concurrent.futures
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request
    from dataclasses import asdict
    from pathlib import Path

    import torch

    import checkpoint
    from model import GPT, GPTConfig
    from tokenizer import Tokenizer
    tokenizer = Tokenizer.load(Path("data/demo/tokenizer.json"))
    cpu_demo = model_of("config/cpu_demo.py")
    print(f"machine: {machine()}\n\n| model | weights | one stream tokens/s | 8 clients: aggregate "
          "tokens/s | 64-token completion p50 / p95 (8 clients) |\n|---|---|---:|---:|---:|")

    def post(url, body):
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.loads(r.read())
        return out, time.perf_counter() - t0

    for label, config in (("cpu_demo (4.9M)", cpu_demo), ("mini_lm (48.4M)", mini_lm())):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**config))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            checkpoint.save({"format_version": checkpoint.FORMAT_VERSION, "model": model.state_dict(),
                             "model_args": asdict(model.config), "tokenizer": tokenizer.to_dict(),
                             "config": {}}, path)
            for dtype in ("float32", "bfloat16"):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                proc = subprocess.Popen([sys.executable, "serve.py", f"--ckpt={path}", f"--port={port}",
                                         f"--dtype={dtype}"], stdout=subprocess.DEVNULL)
                url = f"http://127.0.0.1:{port}"
                try:
                    for _ in range(600):
                        try:
                            urllib.request.urlopen(url + "/health", timeout=1)
                            break
                        except OSError:
                            time.sleep(0.1)
                    n = 16 if quick else 128
                    body = {"prompt": "The river", "max_tokens": n, "temperature": 0, "stop": ["\u0000"]}
                    post(url + "/generate", body)
                    single = [post(url + "/generate", body)[0]["tokens_per_second"] for _ in range(3)]
                    body64 = {"prompt": "The river", "max_tokens": 16 if quick else 64, "temperature": 0,
                              "stop": ["\u0000"]}
                    requests = 2 if quick else 4
                    t0 = time.perf_counter()
                    with concurrent.futures.ThreadPoolExecutor(8) as pool:
                        results = list(pool.map(lambda _: post(url + "/v1/completions", body64),
                                                range(8 * requests)))
                    wall = time.perf_counter() - t0
                    tokens = sum(r[0]["usage"]["completion_tokens"] for r in results)
                    latencies = sorted(r[1] for r in results)
                    p50 = latencies[len(latencies) // 2]
                    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
                    print(f"| {label} | {dtype} | {statistics.median(single):,.1f} | {tokens / wall:,.1f} | "
                          f"{p50:.2f} s / {p95:.2f} s |", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)


# --------------------------------------------------------------------------------------- the GPU

GPU_PARTS = ("tests", "kernels", "step", "generation", "train")


def bench_gpu(quick=False, parts=GPU_PARTS):
    import subprocess
    import sys

    import torch
    if not torch.cuda.is_available() and not quick:
        raise SystemExit("no CUDA device: `python bench.py gpu` is for a GPU machine "
                         "(--quick runs its code paths on CPU with tiny shapes)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports kernels/
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke test)"
    print(f"device: {name}, torch {torch.__version__}\n")
    start = time.perf_counter()

    def section(title):  # elapsed time too: the whole suite has to fit in one short GPU lease
        print(f"\n[{time.perf_counter() - start:.0f} s] {title}\n", flush=True)

    unknown = set(parts) - set(GPU_PARTS)
    if unknown:
        raise SystemExit(f"error: unknown gpu part(s) {sorted(unknown)}: choose from {GPU_PARTS}")
    if device == "cuda" and "tests" in parts:
        section("Kernel and model tests on CUDA")
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_kernels.py",
                                 "tests/test_model.py"], capture_output=True, text=True)
        lines = (result.stdout + result.stderr).strip().splitlines() or ["(no output)"]
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        print("kernel and model tests on CUDA: " + lines[-1], *failed[:20], "", sep="\n", flush=True)

    def timed(fn):
        if device == "cuda":
            import triton.testing
            return triton.testing.do_bench(fn, warmup=25, rep=100)
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    if "kernels" in parts:
        section("Kernels against PyTorch (bf16 inputs)")
        bench_gpu_kernels(device, quick, timed)
    config = mini_lm() if not quick else dict(mini_lm(), n_layer=1, block_size=32, vocab_size=300)
    if "step" in parts:
        section("Training step, mini_lm (48M), batch 16 x 1024, compiled, AdamW fused")
        bench_gpu_step(device, quick, config, name)
    if "generation" in parts:
        section("Generation, batch 1, mini_lm size (random weights), 16-token prompt, KV cache")
        bench_gpu_generation(device, quick, config)
    if "train" in parts:
        section("train.py on CUDA: config/mini_lm.py on the demo data, then resumed")
        train_on_device(device, quick)
    section("done")


def bench_gpu_kernels(device, quick, timed):
    import torch

    import kernels
    copy_src = torch.empty(2 ** 28 if device == "cuda" else 2 ** 16, dtype=torch.uint8, device=device)
    peak_bw = 2 * copy_src.numel() / timed(lambda: copy_src.clone()) / 1e6
    print(f"device copy bandwidth (read + write): {peak_bw:,.0f} GB/s\n")
    print("| kernel | shape | pass | ours GB/s | torch eager GB/s | torch.compile GB/s | ours / best |\n"
          "|---|---|---|---:|---:|---:|---:|", flush=True)
    dt = torch.bfloat16
    scale = 1 / 8
    rows = [(1024, 512), (1024, 768)] if not quick else [(64, 40)]

    def compare(label, shape, bytes_fwd, bytes_fwd_bwd, fwd_ours, fwd_torch, inputs, grad_out):
        """GB/s of forward and forward+backward: ours, PyTorch eager, and PyTorch compiled."""
        fns = {"ours": fwd_ours, "eager": fwd_torch, "compiled": torch.compile(fwd_torch)}
        for pass_name, nbytes, backward in (("fwd", bytes_fwd, False), ("fwd+bwd", bytes_fwd_bwd, True)):
            gbs = {}
            for key, fn in fns.items():
                run = (lambda fn=fn: torch.autograd.grad(fn(), inputs, grad_out)) if backward else fn
                try:  # one failing kernel must not cost the rest of a scarce GPU session
                    gbs[key] = nbytes / timed(run) / 1e6
                except Exception as e:  # noqa: BLE001
                    print(f"| {label} | {shape} | {pass_name} | {key} failed: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]} | | | |", flush=True)
                    gbs[key] = float("nan")
            print(f"| {label} | {shape} | {pass_name} | {gbs['ours']:,.0f} | {gbs['eager']:,.0f} | "
                  f"{gbs['compiled']:,.0f} | {gbs['ours'] / max(gbs['eager'], gbs['compiled']):.2f} |",
                  flush=True)

    batch = 16 if not quick else 2
    for t, c in rows:
        x = torch.randn(batch * t, c, device=device, dtype=dt, requires_grad=True)
        w = torch.randn(c, device=device, requires_grad=True)
        # bytes: forward reads x, writes y; backward reads x and dy, writes dx (weights are small)
        compare("LayerNorm", f"{batch * t}x{c}", 2 * x.numel() * 2, 5 * x.numel() * 2,
                lambda: kernels.layer_norm(x, w, None, backend="triton"),
                lambda: kernels.layer_norm_torch(x, w, None), (x, w), torch.randn_like(x))
    for t, heads in ([(1024, 8), (1024, 12)] if not quick else [(16, 2)]):
        s = torch.randn(batch, heads, t, t, device=device, dtype=dt, requires_grad=True)
        compare("causal softmax", f"{batch}x{heads}x{t}x{t}", 2 * s.numel() * 2, 5 * s.numel() * 2,
                lambda: kernels.causal_softmax(s, scale, backend="triton"),
                lambda: kernels.causal_softmax_torch(s, scale), (s,), torch.randn_like(s))
    for n, v in ([(16 * 1024, 32000), (8 * 1024, 50257)] if not quick else [(32, 300)]):
        logits = torch.randn(n, v, device=device, dtype=dt, requires_grad=True)
        targets = torch.randint(v, (n,), device=device)
        ours = lambda: kernels.cross_entropy(logits, targets, backend="triton")
        eager = lambda: kernels.cross_entropy_torch(logits, targets)
        # bytes: forward reads the logits; backward reads them again and writes their gradient
        compare("cross-entropy", f"{n}x{v}", logits.numel() * 2, 3 * logits.numel() * 2, ours, eager,
                (logits,), None)
        if device == "cuda":
            for label, fn in (("fused", ours), ("PyTorch", eager)):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                try:
                    torch.autograd.grad(fn(), logits)
                except Exception as e:  # noqa: BLE001
                    print(f"| cross-entropy peak extra memory | {n}x{v} | fwd+bwd | {label} "
                          f"failed: {type(e).__name__} | | | |", flush=True)
                    continue
                torch.cuda.synchronize()
                extra = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                print(f"| cross-entropy peak extra memory | {n}x{v} | fwd+bwd | {label}: "
                      f"{extra:,.0f} MiB | | | |", flush=True)



def bench_gpu_step(device, quick, config, name):
    import torch

    import hardware
    batch = 16 if not quick else 2
    peak_flops = hardware.peak_flops(torch.device(device))
    print(f"(MFU against the dense bf16 peak of {name}: {peak_flops / 1e12:,.0f} TFLOP/s; "
          "hardware.PEAK_FLOPS)\n" if peak_flops else "(no MFU: not a GPU with a known peak)\n")
    print("| dtype | kernels | attention | tokens/s | MFU |\n|---|---|---|---:|---:|", flush=True)
    for dtype, kernel_backend, attention in ((torch.bfloat16, "auto", "sdpa"),
                                             (torch.bfloat16, "torch", "sdpa"),
                                             (torch.bfloat16, "auto", "triton")):
        try:
            rate, _, model = train_step_rate(config, batch, 3 if quick else 10, compile_=True,
                                             device=device, dtype=dtype, kernels=kernel_backend,
                                             attention=attention)
        except Exception as e:  # noqa: BLE001
            print(f"| {'bf16 autocast' if dtype else 'fp32'} | {kernel_backend} | {attention} | "
                  f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} | |", flush=True)
            continue
        mfu = f"{model.flops_per_token() * rate / peak_flops:.1%}" if peak_flops else "n/a"
        print(f"| {'bf16 autocast' if dtype else 'fp32'} | {kernel_backend} | {attention} | "
              f"{rate:,.0f} | {mfu} |", flush=True)
        del model
    if device == "cuda":
        torch.cuda.empty_cache()


def bench_gpu_generation(device, quick, config):
    import torch

    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config)).to(device).eval()
    print("| weights | new tokens | tokens/s |\n|---|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        model.generate([[1] * 16], 3, temperature=0)
        t0 = time.perf_counter()
        out = model.generate([[1] * 16], 20 if quick else 300, temperature=0)
        print(f"| {str(dtype).split('.')[1]} | {len(out[0])} | "
              f"{len(out[0]) / (time.perf_counter() - t0):,.0f} |", flush=True)
    del model


def train_on_device(device, quick):
    """train.py itself for a few steps (bf16, compile, fused AdamW, checkpoints), then --init_from=
    resume for a few more: the training script's own log lines. Needs a prepared data/demo (run
    prepare.py here and carry data/demo to the GPU machine, whose Python lacks datasketch)."""
    import subprocess
    import sys
    import tempfile
    if not (Path("data/demo") / "train.bin").exists():
        print("skipped: no data/demo (python prepare.py first; carry data/demo to the GPU machine)")
        return
    args = [sys.executable, "train.py", "config/mini_lm.py", "--dataset=demo", "--tensorboard=False",
            "--eval_interval=10", "--eval_iters=5", "--log_interval=5", "--checkpoint_interval=10",
            "--sample_interval=20", f"--device={device}"]
    if quick:
        args += ["--n_layer=1", "--n_embd=64", "--n_head=2", "--block_size=64", "--batch_size=2",
                 "--gradient_accumulation_steps=1", "--compile=False"]
    with tempfile.TemporaryDirectory() as out:
        for extra in (["--max_iters=20"], ["--max_iters=25", "--init_from=resume"]):
            result = subprocess.run([*args, *extra, f"--out_dir={out}"], capture_output=True, text=True,
                                    timeout=600)
            lines = (result.stdout + result.stderr).strip().splitlines()
            print(f"$ python train.py ... {' '.join(extra)}  (exit {result.returncode})")
            keep = ("model:", "step ", "iter ", "sample:", "warning", "stopped", "error", "Traceback")
            print(*[line for line in lines if result.returncode or line.startswith(keep)][-30:],
                  sep="\n", flush=True)


SUITES = ("prepare", "model", "train", "eval", "serve", "gpu", "all")
SPEC = {
    "gpu": (False, "all: run the GPU suite too"),
    "hf": (False, "prepare: compare with HF tokenizers"),
    "quick": (False, "model/gpu/train/eval/serve: tiny shapes and few steps, to check the script runs"),
    "parts": ("tests,kernels,step,generation,train", "gpu: the parts to run, comma-separated"),
}


def parse_args(argv):
    """(suite, options): the suite first, then --key value / --key=value options (configurator)."""
    import configurator
    if any(a in ("-h", "--help") for a in argv) or not argv:
        print(configurator.format_help(SPEC, __doc__, "bench.py SUITE").replace(
            "[config.py ...] ", ""))
        raise SystemExit(0 if argv else 2)
    if argv[0] not in SUITES:
        raise configurator.ConfigError(f"unknown suite {argv[0]!r}: one of {', '.join(SUITES)}")
    return argv[0], types.SimpleNamespace(**configurator.parse(SPEC, argv[1:]))


def main(argv=None):
    import configurator
    try:
        suite, args = parse_args(sys.argv[1:] if argv is None else argv)
    except configurator.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    args.suite = suite
    if args.suite == "prepare":
        bench_prepare(args)
    elif args.suite == "model":
        bench_model_cpu(args.quick)
    elif args.suite == "train":
        bench_train(args.quick)
    elif args.suite == "eval":
        bench_eval(args.quick)
    elif args.suite == "serve":
        bench_serve(args.quick)
    elif args.suite == "gpu":
        bench_gpu(args.quick, [p.strip() for p in args.parts.split(",") if p.strip()])
    else:
        import torch
        bench_model_cpu(args.quick)
        bench_train(args.quick)
        bench_eval(args.quick)
        bench_serve(args.quick)
        if args.gpu or torch.cuda.is_available():
            bench_gpu(args.quick, [p.strip() for p in args.parts.split(",") if p.strip()])


if __name__ == "__main__":
    main()
