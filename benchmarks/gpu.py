"""bench.py gpu: on a CUDA device, the kernel and model tests, the Triton kernels' GB/s against
PyTorch eager and compiled, train.py's training step (tokens/s, MFU), generation, and train.py
itself with a resume. --quick runs the same code paths on CPU with tiny shapes."""

import time
from pathlib import Path

from benchmarks.common import interleaved_rates, mini_lm, training_step

from model import GPT, GPTConfig
from core import hardware
import fused_kernels


GPU_PARTS = ("tests", "kernels", "step", "generation", "train")


def bench_gpu(quick=False, parts=GPU_PARTS):
    import subprocess
    import sys

    import torch
    if not torch.cuda.is_available() and not quick:
        raise SystemExit("no CUDA device: `python bench.py gpu` is for a GPU machine "
                         "(--quick runs its code paths on CPU with tiny shapes)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke test)"
    print(f"device: {name}, torch {torch.__version__}\n")
    start = time.perf_counter()

    def section(title):  # with the elapsed time: GPU time is budgeted
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
    config = mini_lm() if not quick else dict(mini_lm(), n_layer=2, block_size=32, vocab_size=300)
    if "step" in parts:
        section("Training step, mini_lm (train.py's recipe), batch 16 x 1024, compiled")
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
                lambda: fused_kernels.layer_norm(x, w, None, backend="triton"),
                lambda: fused_kernels.layer_norm_torch(x, w, None), (x, w), torch.randn_like(x))
    for t, heads in ([(1024, 8), (1024, 12)] if not quick else [(16, 2)]):
        s = torch.randn(batch, heads, t, t, device=device, dtype=dt, requires_grad=True)
        compare("causal softmax", f"{batch}x{heads}x{t}x{t}", 2 * s.numel() * 2, 5 * s.numel() * 2,
                lambda: fused_kernels.causal_softmax(s, scale, backend="triton"),
                lambda: fused_kernels.causal_softmax_torch(s, scale), (s,), torch.randn_like(s))
    for n, v in ([(16 * 1024, 32000), (8 * 1024, 50257)] if not quick else [(32, 300)]):
        logits = torch.randn(n, v, device=device, dtype=dt, requires_grad=True)
        targets = torch.randint(v, (n,), device=device)
        ours = lambda: fused_kernels.cross_entropy(logits, targets, backend="triton")
        eager = lambda: fused_kernels.cross_entropy_torch(logits, targets)
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

    batch = 16 if not quick else 2
    peak_flops = hardware.peak_flops(torch.device(device))
    print(f"(MFU against the dense bf16 peak of {name}: {peak_flops / 1e12:,.0f} TFLOP/s; "
          "hardware.PEAK_FLOPS)\n" if peak_flops else "(no MFU: not a GPU with a known peak)\n")
    print("| dtype | kernels | attention | tokens/s | MFU |\n|---|---|---|---:|---:|", flush=True)
    for dtype, kernel_backend, attention in ((torch.bfloat16, "auto", "sdpa"),
                                             (torch.bfloat16, "torch", "sdpa"),
                                             (torch.bfloat16, "auto", "triton")):
        try:
            step, tokens, _, run = training_step(
                config, batch, device, compile=True, dtype=str(dtype).split(".")[1],
                kernels=kernel_backend, attention=attention)
            rate = interleaved_rates({"": (step, tokens)}, 3 if quick else 10)[""]
        except Exception as e:  # noqa: BLE001
            print(f"| {'bf16 autocast' if dtype else 'fp32'} | {kernel_backend} | {attention} | "
                  f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} | |", flush=True)
            continue
        mfu = f"{run.flops_per_token * rate / peak_flops:.1%}" if peak_flops else "n/a"
        print(f"| {'bf16 autocast' if dtype else 'fp32'} | {kernel_backend} | {attention} | "
              f"{rate:,.0f} | {mfu} |", flush=True)
        del step, run
    if device == "cuda":
        torch.cuda.empty_cache()


def bench_gpu_generation(device, quick, config):
    import torch

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
    """train.py itself for a few steps (bf16, compile, Muon + fused AdamW, checkpoints), then
    --init_from=resume for a few more: the training script's own log lines. Needs a prepared
    data/demo (run prepare.py first, or copy data/demo to the GPU machine, whose Python lacks
    datasketch)."""
    import subprocess
    import sys
    import tempfile
    if not (Path("data/demo") / "train.bin").exists():
        print("skipped: no data/demo (python prepare.py first, or copy data/demo to the GPU machine)")
        return
    args = [sys.executable, "train.py", "config/mini_lm.py", "--dataset=demo", "--tensorboard=False",
            "--eval_interval=10", "--eval_iters=5", "--log_interval=5", "--checkpoint_interval=10",
            "--sample_interval=20", f"--device={device}"]
    if quick:
        args += ["--n_layer=2", "--n_embd=64", "--n_head=2", "--block_size=64", "--batch_size=2",
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
