"""bench.py gemv: how fast can a batch-1 decoding step's weight products be on this CPU?

mini_lm's matrix-vector products (every layer's QKV, output projection and two MLP products, then
the LM head), in the model's order, timed beside the memory-bandwidth limit `bench.py model` uses
(cpu.stream_bandwidth: a float32 matrix of the same size read once by MKL), three ways:

- PyTorch's F.linear, eager (what an eager decoding step runs);
- the same products compiled as load_for_inference compiles a CPU decoding step
  (checkpoint.CPU_DECODE_COMPILE: the weights frozen in, Inductor's C++ GEMM templates);
- a hand-written AVX-512 kernel (GEMV_SOURCE below, compiled here with the system's C compiler):
  the plainest kernel that streams each weight row once, four rows at a time, accumulating in
  fp32 (bf16 through the CPU's bf16 dot-product instruction).

Each with one thread and with every core. The products are only part of a step (attention,
normalisation and the compiled graph's own work come on top), so their share of the limit is an
upper bound on a whole step's. Needs a C compiler and an x86-64 CPU with AVX-512 BF16; elsewhere
it says so and stops.
"""

import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.common import machine, mini_lm
from benchmarks.cpu import stream_bandwidth
from model import GPT, GPTConfig
from training import checkpoint

GEMV_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

/* y[n] = sum_k W[n, k] x[k], W row-major (N x K) float32. The threads split the rows; each takes
   four rows at a time with one 16-lane accumulator per row, and sums the lanes at the row's end.
   N % 4 == 0, K % 16 == 0. */
void gemv_f32(const float *W, const float *x, float *y, int N, int K) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n += 4) {
        const float *r = W + (int64_t)n * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + K + k), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 2 * K + k), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 3 * K + k), xv, a3);
        }
        y[n] = _mm512_reduce_add_ps(a0);
        y[n + 1] = _mm512_reduce_add_ps(a1);
        y[n + 2] = _mm512_reduce_add_ps(a2);
        y[n + 3] = _mm512_reduce_add_ps(a3);
    }
}

/* The same for bfloat16 W and x, y in float32: one vdpbf16ps multiplies 32 bf16 pairs of a row
   and x and adds each adjacent two products into one of 16 fp32 lanes. K % 32 == 0. */
void gemv_bf16(const uint16_t *W, const uint16_t *x, float *y, int N, int K) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n += 4) {
        const uint16_t *r = W + (int64_t)n * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K; k += 32) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(r + k), xv);
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(r + K + k), xv);
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(r + 2 * K + k), xv);
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(r + 3 * K + k), xv);
        }
        y[n] = _mm512_reduce_add_ps(a0);
        y[n + 1] = _mm512_reduce_add_ps(a1);
        y[n + 2] = _mm512_reduce_add_ps(a2);
        y[n + 3] = _mm512_reduce_add_ps(a3);
    }
}

void set_threads(int n) { omp_set_num_threads(n); }
"""

REQUIRED_FLAGS = ("avx512f", "avx512_bf16")


def c_compiler():
    """$CC, else cc or gcc on the PATH, else None."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def unsupported_reason():
    """Why the hand-written kernel can't run here, or None when it can."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")),
                         [])
    except OSError:
        return "no /proc/cpuinfo (the kernel is for x86-64 Linux)"
    missing = [flag for flag in REQUIRED_FLAGS if flag not in flags]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    if not c_compiler():
        return "no C compiler (set CC, or install gcc)"
    return None


def build_kernels(folder):
    """GEMV_SOURCE compiled into folder and loaded: the library, with argument types set."""
    compiler = c_compiler()
    source, library = os.path.join(folder, "gemv.c"), os.path.join(folder, "libgemv.so")
    with open(source, "w") as f:
        f.write(GEMV_SOURCE)
    result = subprocess.run([compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC",
                             source, "-o", library], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{compiler} could not build the GEMV kernels:\n{result.stderr}")
    lib = ctypes.CDLL(library)
    for kernel in (lib.gemv_f32, lib.gemv_bf16):
        kernel.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2
    lib.set_threads.argtypes = [ctypes.c_int]
    return lib


def decoding_shapes(config):
    """(out, in) of every weight product of a batch-1 decoding step, in the model's order: the
    Linear layers of GPT(config), built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**config))
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def hand_gemv(lib, weight, x, out):
    """out = weight @ x through the hand-written kernel: weight (N, K) row-major float32 or
    bfloat16 with N a multiple of 4 and K of 32, x (K,) in weight's dtype, out (N,) float32."""
    n, k = weight.shape
    if n % 4 or k % 32 or x.shape != (k,) or out.shape != (n,) or x.dtype != weight.dtype \
            or out.dtype != torch.float32 or not all(t.is_contiguous() for t in (weight, x, out)):
        raise ValueError(f"hand_gemv takes a contiguous (N, K) weight with N % 4 == 0 and "
                         f"K % 32 == 0, x (K,) of its dtype and a float32 out (N,); got weight "
                         f"{tuple(weight.shape)} {weight.dtype}, x {tuple(x.shape)} {x.dtype}, "
                         f"out {tuple(out.shape)} {out.dtype}")
    kernel = lib.gemv_bf16 if weight.dtype == torch.bfloat16 else lib.gemv_f32
    kernel(weight.data_ptr(), x.data_ptr(), out.data_ptr(), *weight.shape)
    return out


def check_kernel(lib, weights, inputs, outputs):
    """Each hand-written product against F.linear in fp32 on the same values; raises if any
    differs by more than fp32 accumulation in another order explains."""
    for weight, out in zip(weights, outputs):
        x = inputs[weight.shape[1]]
        hand_gemv(lib, weight, x, out)
        reference = F.linear(x.float(), weight.float())
        tolerance = 1e-4 * reference.abs().max().item() + 1e-6
        error = (out - reference).abs().max().item()
        if error > tolerance:
            raise AssertionError(f"hand-written {weight.dtype} GEMV {tuple(weight.shape)} differs "
                                 f"from F.linear by {error:.3g} (> {tolerance:.3g})")


class Products(torch.nn.Module):
    """The step's weight products as one module, so that Inductor can freeze the weights into the
    compiled code as it does for a decoding step. Every product's output is returned (none is
    dead code)."""

    def __init__(self, weights):
        super().__init__()
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(w, requires_grad=False)
                                              for w in weights)

    def forward(self, x_narrow, x_wide):
        return [F.linear(x_narrow if w.shape[1] == x_narrow.shape[1] else x_wide, w)
                for w in self.weights]


def compiled_products(weights, inputs):
    """A function running Products(weights) compiled with CPU_DECODE_COMPILE, called once (the
    call that compiles)."""
    widths = sorted(inputs)
    x_narrow, x_wide = (inputs[k][None] for k in (widths[0], widths[-1]))
    compiled = torch.compile(Products(weights).eval())

    def run():
        with torch._inductor.config.patch(checkpoint.CPU_DECODE_COMPILE):
            return compiled(x_narrow, x_wide)
    run()
    return run


def chain_ms(run, repeats):
    """Median milliseconds of run() (all the step's products once) after two warm-up calls."""
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(lib, dtype, shapes, rounds, repeats, compile_):
    """(MB, {name: [value per round]}) for the plain read's GB/s and each way's milliseconds
    (PyTorch, compiled when compile_, hand-written), taken in turns within each round (this
    machine's speed drifts)."""
    generator = torch.Generator().manual_seed(0)
    weights = [(torch.randn(n, k, generator=generator) * 0.02).to(dtype) for n, k in shapes]
    inputs = {k: torch.randn(k, generator=generator).to(dtype) for _, k in shapes}
    outputs = [torch.empty(n) for n, _ in shapes]
    check_kernel(lib, weights, inputs, outputs)
    nbytes = sum(w.numel() * w.element_size() for w in weights)

    def run_torch():
        for w in weights:
            F.linear(inputs[w.shape[1]][None], w)

    def run_hand():
        for w, out in zip(weights, outputs):
            hand_gemv(lib, w, inputs[w.shape[1]], out)

    runs = {"PyTorch": run_torch, "hand-written": run_hand}
    figures = {"read": [], "PyTorch": [], "compiled": [], "hand-written": []}
    if compile_:
        with torch.inference_mode():
            runs["compiled"] = compiled_products(weights, inputs)
    for _ in range(rounds):
        figures["read"].append(stream_bandwidth(nbytes))
        with torch.inference_mode():
            for name, run in runs.items():
                figures[name].append(chain_ms(run, repeats))
    return nbytes / 1e6, figures


def bench_gemv(quick=False):
    """Print the products' times and shares of the limit, per thread count and dtype; return the
    rows. quick: 2 layers, vocabulary 4,096, one round, no compiled column."""
    reason = unsupported_reason()
    if reason:
        print(f"bench.py gemv: the hand-written kernel can't run here: {reason}")
        return None
    config = dict(mini_lm(), n_layer=2, vocab_size=4096) if quick else mini_lm()
    shapes = decoding_shapes(config)
    rounds, repeats = (1, 3) if quick else (3, 20)
    print(f"\nA decoding step's weight products alone ({len(shapes)}, mini_lm's shape"
          f"{' reduced' if quick else ''}), {machine()}; median of {rounds} round(s), each a "
          f"median of {repeats}; share = the limit's time / the products' time:\n")
    print("| threads | weights | MB | plain read GB/s (rounds) | limit tokens/s | PyTorch eager ms "
          "(share) | compiled ms (share) | hand-written ms (share) |\n"
          "|---:|---|---:|---|---:|---:|---:|---:|")
    cores, rows = torch.get_num_threads(), []
    with tempfile.TemporaryDirectory() as folder:
        lib = build_kernels(folder)
        try:
            for threads in sorted({1, cores}):
                torch.set_num_threads(threads)
                lib.set_threads(threads)
                for dtype in (torch.float32, torch.bfloat16):
                    rows.append(table_row(lib, threads, dtype, shapes, rounds, repeats, quick))
        finally:
            torch.set_num_threads(cores)
    return rows


def table_row(lib, threads, dtype, shapes, rounds, repeats, quick):
    """Measure one thread count and dtype, print its row of the table, return it as a dict."""
    mb, figures = measure(lib, dtype, shapes, rounds, repeats, compile_=not quick)
    row = dict(threads=threads, dtype=str(dtype).replace("torch.", ""), mb=mb,
               **{name: statistics.median(values) if values else None
                  for name, values in figures.items()})
    limit_ms = mb / row["read"]  # MB / (GB/s) = ms
    cells = [f"{row[name]:.2f} ({limit_ms / row[name]:.0%})" if row[name] else "-"
             for name in ("PyTorch", "compiled", "hand-written")]
    print(f"| {threads} | {row['dtype']} | {mb:,.0f} | {row['read']:.1f} "
          f"({', '.join(f'{r:.1f}' for r in figures['read'])}) | "
          f"{1e3 / limit_ms:,.0f} | {' | '.join(cells)} |", flush=True)
    return row
