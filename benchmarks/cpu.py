"""bench.py model: on CPU, train.py's training step (tokens/s per attention and compile setting,
where its time goes), the loss's memory, and batch-1 generation against the memory-bandwidth limit."""

import copy
import statistics
import time

from benchmarks.common import SMALL, interleaved_rates, machine, mini_lm, training_step

from model import GPT, GPTConfig, KVCache
from core import cpu_memory, inference
import fused_kernels
from fused_kernels import int8


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
    step, tokens, _, run = training_step(model_kwargs, batch)
    model = run.raw_model
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
    read as the LM head; int8 matrices with their scales), plus one position-embedding row."""
    import torch.nn as nn
    linear = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                 if isinstance(m, nn.Linear))
    quantized = sum(m.weight.numel() + m.scales.numel() * m.scales.element_size()
                    for m in model.modules() if isinstance(m, int8.Int8Linear))
    return linear + quantized + model.config.n_embd * model.transformer.wte.weight.element_size()


def cache_bytes_per_token(model, positions):
    """Bytes of KV cache one decoding step reads at a mean of `positions` cached positions."""
    cfg, element = model.config, KVCache.for_model(model, 1).keys[0].element_size()
    return cfg.n_layer * 2 * cfg.n_embd * positions * element


def stream_bandwidth(nbytes, repeats=10):
    """Best GB/s of reading nbytes from memory, as a float32 vector-matrix product over a matrix
    of that size in both layouts (a step's weights and cache, read once each, in one matrix):
    what fits in the CPU's caches streams faster than what comes from DRAM, so the bandwidth of
    a model's decoding is measured at the size of what a step reads."""
    import torch
    k = 2560
    w = torch.randn(max(1, int(nbytes / (4 * k))), k)
    x = torch.randn(1, k)
    best = 0.0
    for weight in (w, w.t().contiguous().t()):
        for _ in range(3):
            torch.nn.functional.linear(x, weight)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            best = max(best, w.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def bench_model_cpu(quick=False):
    import torch

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
            step, tokens, firsts[attention, compile_], _ = training_step(
                dict(small, vocab_size=vocab), batch, compile=compile_, attention=attention)
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
    kernel_device = "cpu" if fused_kernels.INTERPRETED else "cuda"  # the interpreter runs on CPU
    fused_saved = saved_for_backward_bytes(
        lambda a, b: fused_kernels.cross_entropy(a, b, backend="triton"),
        logits[:8].detach().to(kernel_device).requires_grad_(), targets[:8].to(kernel_device))
    print(f"- PyTorch cross-entropy forward+backward over {n:,} x {v:,} logits: {dt * 1e3:.0f} ms.")
    print(f"- Kept for backward per token: PyTorch {torch_saved / 8:,.0f} bytes (the log-probabilities),"
          f" fused kernel {fused_saved / 8:,.0f} bytes (one log-sum-exp): at {n:,} tokens that is "
          f"{torch_saved / 8 * n / 1e6:,.0f} MB against {fused_saved / 8 * n / 1e3:,.1f} kB.")

    # last, because it cannot be undone in this process: what train.py does on CPU by default
    if cpu_memory.keep_freed_memory():
        print("\nVocab 32,000 again, with freed memory kept in the process (cpu_memory.py, train.py's "
              "default on CPU), the two settings timed in turns:\n")
        print("| vocab | attention | mode | tokens/s | vs eager sdpa above |\n|---:|---|---|---:|---:|")
        steps_by_setting = {compile_: training_step(dict(small, vocab_size=32000), batch,
                                                    compile=compile_)[:2]
                            for compile_ in (False, True)}
        for compile_, rate in interleaved_rates(steps_by_setting, steps).items():
            print(f"| 32,000 | sdpa | {'compiled' if compile_ else 'eager'} | {rate:,.0f} | "
                  f"{rate / eager_rate[32000]:.2f}x |", flush=True)


def decoding_models(base, dtype):
    """(eager, compiled) copies of base for batch-1 CPU decoding in dtype ('float32', 'bfloat16'
    or 'int8'), as inference.load_for_inference prepares them."""
    import torch
    model = copy.deepcopy(base).to(torch.bfloat16 if dtype == "int8" else getattr(torch, dtype))
    model = model.optimize_for_decoding()
    if dtype == "int8":
        model = int8.quantize(model)
    compiled = copy.deepcopy(model)
    compiled.decode_step = inference.compile_for_cpu_decoding(compiled.decode_step)
    return model, compiled


def bench_generation_cpu(quick=False):
    """Batch-1 generation tokens/s of the mini_lm size, eager and compiled, against the
    memory-bandwidth limit of each."""
    import torch

    print("\nGeneration, batch 1, mini_lm size (random weights), 16-token prompt, greedy:\n")
    new = 20 if quick else 500
    config = dict(mini_lm(), n_layer=2) if quick else mini_lm()
    torch.manual_seed(0)
    base = GPT(GPTConfig(**config)).eval()
    for p in base.parameters():  # no all-zero matrices (zero_init, the untied head's start)
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    print("| weights | decoding step | first call | tokens/s (median) | runs | MB read per token | "
          "GB/s at that size | memory-bound limit | share of limit |\n"
          "|---|---|---:|---:|---|---:|---:|---:|---:|")
    medians = {}
    for dtype in ("float32", "bfloat16", "int8"):
        models = dict(zip(("eager", "compiled"), decoding_models(base, dtype)))
        nbytes = (weight_bytes_per_token(models["eager"])
                  + cache_bytes_per_token(models["eager"], 16 + new / 2))
        firsts, rates = {}, {mode: [] for mode in models}
        for mode, model in models.items():  # the first call compiles
            t0 = time.perf_counter()
            model.generate([[1] * 16], 3, temperature=0)
            firsts[mode] = time.perf_counter() - t0
        bandwidth = stream_bandwidth(nbytes)
        for _ in range(3):  # in turns, beside each other: this machine's speed drifts
            for mode, model in models.items():
                t0 = time.perf_counter()
                out = model.generate([[1] * 16], new, temperature=0)
                rates[mode].append(len(out[0]) / (time.perf_counter() - t0))
        limit = bandwidth * 1e9 / nbytes
        for mode, runs in rates.items():
            medians[dtype, mode] = rate = statistics.median(runs)
            print(f"| {dtype} | {mode} | {firsts[mode]:.1f} s | {rate:,.1f} | "
                  f"{', '.join(f'{r:,.1f}' for r in runs)} | {nbytes / 1e6:,.0f} | "
                  f"{bandwidth:.1f} | {limit:,.0f} | {rate / limit:.0%} |", flush=True)
        del models
    fp32 = medians["float32", "eager"]
    print("\nAgainst eager float32 (the default), this run: " + ", ".join(
        f"{dtype} {mode} {rate / fp32:.2f}x" for (dtype, mode), rate in medians.items()))
    print(f"\n(MB read per token: the weights once, plus the KV cache at the mean position of "
          f"{new} new tokens after the prompt; limit = that / the bandwidth of reading that many "
          f"bytes, measured in this run)")
    cfg = base.config
    model = base.float().optimize_for_decoding()
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
