"""bench.py: the project's benchmarks; prints Markdown rows for BENCHMARKS.md.

    python bench.py prepare            # data pipeline on the offline default corpus (run prepare.py first)
    python bench.py prepare --hf       # also HF `tokenizers` BPE side by side (pip install tokenizers)
    python bench.py cleaning           # clean + filters: the corpus against 1 MB worst cases, MB/s
    python bench.py dedup              # near-dedup on data/demo's curated documents, step by step
    python bench.py warc               # the warc source: reading, each extractor, pages/s and MB/s
    python bench.py ray                # the curate stage: worker processes against Ray, per worker
    python bench.py model              # CPU: training step tokens/s, loss memory, generation tokens/s
    python bench.py gemv               # CPU: a decoding step's weight products alone, PyTorch and AVX-512
    python bench.py gpu                # CUDA: kernel tests, kernel GB/s, memory, bf16 training + MFU
    python bench.py train              # train.py itself: tokens/s and peak memory per setting
    python bench.py eval               # tokens/s of eval.py's perplexity pass
    python bench.py serve              # serve.py: one stream, 8 concurrent clients, latency
    python bench.py soak --ckpt=out/best.pt --clients=4 --minutes=5   # serve.py under mixed traffic
    python bench.py harness --ckpt=out/best.pt --lm_eval=lm_eval   # lm-evaluation-harness via serve.py
    python bench.py all                # model, then gpu when CUDA is present (--gpu forces it)

Each suite lives in benchmarks/ (data_pipeline.py, cpu.py, gemv.py, scripts.py, soak.py, gpu.py,
harness.py); training steps are train.py's own (benchmarks/common.py). Figures are wall-clock on whatever machine runs them; the
machine is printed with them.
"""

import os
import sys
import types

import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be switched on before the
# kernels' module is imported (as tests/conftest.py does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks import cpu, data_pipeline, gemv, gpu, harness, scripts, soak  # noqa: E402
from training import configurator  # noqa: E402

SUITES = ("prepare", "cleaning", "dedup", "warc", "ray", "model", "gemv", "train", "eval", "serve",
          "soak", "harness", "gpu", "all")
SPEC = {
    "gpu": (False, "all: run the GPU suite too"),
    "hf": (False, "prepare: compare with HF tokenizers"),
    "quick": (False, "model/gemv/gpu/train/eval/serve: tiny shapes and few steps, to check the script runs"),
    "parts": ("tests,kernels,step,generation,train", "gpu: the parts to run, comma-separated"),
    "ckpt": ("out/best.pt", "harness, soak: the checkpoint to score or serve"),
    "clients": (4, "soak: concurrent clients"),
    "minutes": (5.0, "soak: how long the clients send requests"),
    "serve_options": ("", "soak: serve.py options, space-separated (e.g. '--dtype=int8 --compile=True')"),
    "lm_eval": ("lm_eval", "harness: the lm_eval command (pip install lm-eval, in any venv)"),
}


def parse_args(argv):
    """(suite, options): the suite first, then --key value / --key=value options (configurator)."""
    if any(a in ("-h", "--help") for a in argv) or not argv:
        print(configurator.format_help(SPEC, __doc__, "bench.py SUITE").replace(
            "[config.py ...] ", ""))
        raise SystemExit(0 if argv else 2)
    if argv[0] not in SUITES:
        raise configurator.ConfigError(f"unknown suite {argv[0]!r}: one of {', '.join(SUITES)}")
    return argv[0], types.SimpleNamespace(**configurator.parse(SPEC, argv[1:]))


def main(argv=None):
    with configurator.errors_exit(configurator.ConfigError):
        suite, args = parse_args(sys.argv[1:] if argv is None else argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if suite == "prepare":
        data_pipeline.bench_prepare(args)
    elif suite == "cleaning":
        data_pipeline.bench_cleaning(args)
    elif suite == "dedup":
        data_pipeline.bench_dedup(args)
    elif suite == "warc":
        data_pipeline.bench_warc(args)
    elif suite == "ray":
        data_pipeline.bench_ray(args)
    elif suite == "model":
        cpu.bench_model_cpu(args.quick)
    elif suite == "gemv":
        gemv.bench_gemv(args.quick)
    elif suite == "train":
        scripts.bench_train(args.quick)
    elif suite == "eval":
        scripts.bench_eval(args.quick)
    elif suite == "serve":
        scripts.bench_serve(args.quick)
    elif suite == "soak":
        soak.bench_soak(args.ckpt, 2 if args.quick else args.clients,
                        0.5 if args.quick else args.minutes, args.serve_options.split())
    elif suite == "harness":
        harness.bench_harness(args.ckpt, args.lm_eval)
    elif suite == "gpu":
        gpu.bench_gpu(args.quick, parts)
    else:
        cpu.bench_model_cpu(args.quick)
        scripts.bench_train(args.quick)
        scripts.bench_eval(args.quick)
        scripts.bench_serve(args.quick)
        if args.gpu or torch.cuda.is_available():
            gpu.bench_gpu(args.quick, parts)


if __name__ == "__main__":
    main()
