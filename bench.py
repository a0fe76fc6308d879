"""bench.py: the project's benchmarks, each started the same way; most print Markdown rows for
BENCHMARKS.md, with the machine they ran on.

    python bench.py SUITE [--key=value ...]       # SUITE below; --help after it: its options
    python bench.py model                         # CPU: training step tokens/s, loss memory, generation
    python bench.py ablate config/cpu_demo.py --variants=gpt2,muon,all   # the recipe's changes
    python bench.py gpu_run --budget_minutes=30   # a GPU machine: tests, kernels, train, eval, fine-tune

Each suite lives in benchmarks/ (SUITES below names the function). Suites with options of their own
(ablate, kernel_compile, gpu_run) take config files and --key=value as the scripts do; the others
share bench.py's few options (python bench.py --help).
"""

import os
import sys
import types

import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be switched on before the
# kernels' module is imported (as tests/conftest.py does); kernel_compile alone needs them compiled
# (for GPU targets, without a GPU), so the suite named on the command line decides.
if not torch.cuda.is_available() and sys.argv[1:2] != ["kernel_compile"]:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks import ablate, cpu, data_pipeline, gpu, gpu_run, harness, kernel_compile  # noqa: E402
from benchmarks import scripts, soak, translate, translate_levers  # noqa: E402
from core import configurator  # noqa: E402

# bench.py's options, for the suites that have none of their own
SPEC = {
    "gpu": (False, "all: run the GPU suite too"),
    "hf": (False, "prepare: compare with HF tokenizers (pip install tokenizers)"),
    "quick": (False, "model/gpu/train/eval/serve: tiny shapes and few steps, to check the suite runs"),
    "parts": ("tests,kernels,step,generation,train", "gpu: the parts to run, comma-separated"),
    "ckpt": ("out/best.pt", "harness, soak: the checkpoint to score or serve"),
    "clients": (4, "soak: concurrent clients"),
    "minutes": (5.0, "soak: how long the clients send requests"),
    "serve_options": ("", "soak: serve.py options, space-separated (e.g. '--dtype=int8 --compile=True')"),
    "lm_eval": ("lm_eval", "harness: the lm_eval command (pip install lm-eval, in any venv)"),
}


def run_all(o):
    cpu.bench_model_cpu(o.quick)
    scripts.bench_train(o.quick)
    scripts.bench_eval(o.quick)
    scripts.bench_serve(o.quick)
    if o.gpu or torch.cuda.is_available():
        gpu.bench_gpu(o.quick, parts(o))


def parts(o):
    return [p.strip() for p in o.parts.split(",") if p.strip()]


# {suite: (what it measures, the function that runs it)}: a function of bench.py's options (SPEC),
# or, for the suites in OWN_OPTIONS, of the arguments after the suite's name, which it parses as the
# scripts do (config files, --key=value, --help).
SUITES = {
    "prepare": ("data pipeline on the offline default corpus (run prepare.py first)",
                data_pipeline.bench_prepare),
    "cleaning": ("clean + filters: the corpus against 1 MB worst cases, MB/s", data_pipeline.bench_cleaning),
    "dedup": ("near-dedup on data/demo's curated documents, step by step", data_pipeline.bench_dedup),
    "warc": ("the warc source: reading, each extractor, pages/s and MB/s", data_pipeline.bench_warc),
    "ray": ("the curate stage: worker processes against Ray, per worker", data_pipeline.bench_ray),
    "model": ("CPU: training step tokens/s, the loss's memory, generation tokens/s",
              lambda o: cpu.bench_model_cpu(o.quick)),
    "train": ("train.py itself: tokens/s and peak memory per setting", lambda o: scripts.bench_train(o.quick)),
    "eval": ("tokens/s of eval.py's perplexity pass", lambda o: scripts.bench_eval(o.quick)),
    "serve": ("serve.py: one stream, 8 concurrent clients, latency", lambda o: scripts.bench_serve(o.quick)),
    "soak": ("serve.py under mixed traffic (--ckpt, --clients, --minutes, --serve_options)",
             lambda o: soak.bench_soak(o.ckpt, 2 if o.quick else o.clients, 0.5 if o.quick else o.minutes,
                                       o.serve_options.split())),
    "harness": ("lm-evaluation-harness through serve.py (--ckpt, --lm_eval)",
                lambda o: harness.bench_harness(o.ckpt, o.lm_eval)),
    "gpu": ("CUDA: kernel tests, kernel GB/s, memory, bf16 training and MFU (--parts)",
            lambda o: gpu.bench_gpu(o.quick, parts(o))),
    "all": ("model, train, eval, serve, then gpu when CUDA is present (--gpu forces it)", run_all),
    "ablate": ("each change of the recipe against GPT-2's, trained side by side", ablate.main),
    "kernel_compile": ("the Triton kernels compiled for GPU targets without a GPU: registers, spills, "
                       "shared memory", kernel_compile.main),
    "gpu_run": ("on a GPU machine, within a time budget: tests, kernels, mini_lm's training, "
                "evaluation and fine-tune, every figure into summary.json", gpu_run.main),
    "translate": ("the English <-> Spanish translator from raw text to BLEU on Acts, resumable "
                  "(make translate)", translate.main),
    "translate_levers": ("a finished translator's decoding, weight averaging and context room, on "
                         "the validation books", translate_levers.main),
}
OWN_OPTIONS = {"ablate", "kernel_compile", "gpu_run", "translate", "translate_levers"}


def usage():
    width = max(map(len, SUITES))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (what, _) in SUITES.items())
    return (configurator.format_help(SPEC, __doc__, "bench.py SUITE").replace("[config.py ...] ", "")
            + f"\n\nsuites:\n{rows}")


def parse_args(argv):
    """(suite, what its function takes): bench.py's options parsed, or the arguments as they are."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] not in SUITES:
        raise configurator.ConfigError(f"unknown suite {argv[0]!r}: one of {', '.join(SUITES)}")
    if argv[0] in OWN_OPTIONS:
        return argv[0], argv[1:]
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(usage())
        raise SystemExit(0)
    return argv[0], types.SimpleNamespace(**configurator.parse(SPEC, argv[1:]))


def main(argv=None):
    with configurator.errors_exit(configurator.ConfigError):
        suite, arguments = parse_args(sys.argv[1:] if argv is None else argv)
    status = SUITES[suite][1](arguments)
    return status if isinstance(status, int) else 0  # ablate returns its results


if __name__ == "__main__":
    raise SystemExit(main())
