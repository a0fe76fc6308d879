"""The Triton kernels compiled ahead of time for real NVIDIA GPUs, on a machine without one.

    python bench.py kernel_compile                  # per kernel and target: registers, spills, shared memory
    python bench.py kernel_compile --launches=True  # the same per launch
    python bench.py kernel_compile --json=F.json    # every launch's figures as JSON (the tests read it)

It needs the kernels compiled, not interpreted: bench.py leaves TRITON_INTERPRET unset for it.

Which launches: the real launchers (fused_kernels/*.py) are called on CPU tensors of the shapes the
CPU demo and mini_lm train and decode with (config/cpu_demo.py, config/mini_lm.py; fp32, bf16 and
fp16; forward and backward; with and without biases and padding), with every kernel's `run` replaced by a
recorder, so the block sizes, warps and dtypes compiled are the ones the launchers pick at run time
and cannot drift from them. Each distinct launch is then bound and specialised for a target the way
Triton's JIT does it when it launches (its binder: dtypes, 16-byte divisibility, constants) and
compiled with triton.compile for that GPUTarget; ptxas's own report (Triton runs it with -v) gives
registers and spills, the compiled metadata the shared memory, checked against the target's limit.
Only Triton's binder is private API here; the pinned Triton (requirements.lock) is what CI runs.
"""

import concurrent.futures
import contextlib
import functools
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from fused_kernels import crossentropy, layernorm, softmax
from core import atomic, configurator

# shared memory a block may use (opt-in maximum), bytes: CUDA programming guide, compute capabilities
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024,
                120: 99 * 1024, 121: 99 * 1024}
TARGETS = tuple(SHARED_LIMIT)  # Ampere (A100, RTX 30), Ada (L4, RTX 40), Hopper (H100), Blackwell
                               # (B200, RTX 50, and GB10: sm_121, the newest the pinned Triton knows)
MODULES = (softmax, layernorm, crossentropy)

# the launch shapes of the two runs the project ships: width, heads, context, vocabulary
RUNS = {"cpu_demo": dict(n_embd=128, n_head=4, block_size=128, vocab_size=8192),
        "mini_lm": dict(n_embd=512, n_head=8, block_size=1024, vocab_size=32000)}


@dataclass
class Launch:
    kernel: JITFunction
    args: tuple
    kwargs: dict


def kernels():
    """{name: JITFunction} of every kernel the launchers start."""
    return {f"{module.__name__.split('.')[-1]}.{name}": value for module in MODULES
            for name, value in vars(module).items() if isinstance(value, JITFunction)
            and not name.startswith(("online_", "combine_", "_visible"))}


@contextlib.contextmanager
def recording():
    """Every kernel launch inside the block is recorded (and not run) into the yielded list."""
    launches, saved = [], {}
    for kernel in kernels().values():
        saved[kernel] = kernel.__dict__.get("run")
        kernel.run = lambda *args, _k=kernel, grid=None, warmup=False, **kwargs: launches.append(
            Launch(_k, args, kwargs))
    try:
        yield launches
    finally:
        for kernel, run in saved.items():
            if run is None:
                del kernel.run
            else:
                kernel.run = run


def launch_all(n_embd, n_head, block_size, vocab_size, dtype, rows=4):
    """Call every launcher at a run's shapes in dtype, forward and backward, as training, prefill
    and batch-1 decoding do (rows: how many rows stand for a batch; they do not change a launch)."""
    head = n_embd // n_head
    for width in (n_embd, head):  # the blocks' LayerNorms, and the queries' and keys' (qk_norm)
        for bias in (None, torch.zeros(width)):  # this recipe's, and GPT-2's
            x = torch.zeros(rows, width, dtype=dtype, requires_grad=True)
            layernorm.layer_norm(x, torch.ones(width), bias).sum().backward()
    decoding = [2 ** i for i in range(block_size.bit_length()) if 2 ** i <= block_size]
    for tq, tk in [(block_size, block_size)] + [(1, k) for k in decoding]:
        for pad in (None, torch.zeros(1, dtype=torch.long)):
            scores = torch.zeros(1, n_head, min(tq, rows), tk, dtype=dtype, requires_grad=tq > 1)
            y = softmax.causal_softmax(scores, head ** -0.5, pad)
            if tq > 1:
                y.sum().backward()
    logits = torch.zeros(rows, vocab_size, dtype=dtype, requires_grad=True)
    crossentropy.cross_entropy(logits, torch.zeros(rows, dtype=torch.long)).backward()


def project_launches():
    """The distinct launches of both runs in fp32, bf16 and fp16: [(name, Launch)]."""
    names = {kernel: name for name, kernel in kernels().items()}
    distinct = {}
    with recording() as launches:
        for shape in RUNS.values():
            for dtype in (torch.float32, torch.bfloat16, torch.float16):  # fp16: dtype=float16 asked
                launch_all(**shape, dtype=dtype)
    for launch in launches:
        key = (names[launch.kernel], describe(launch))
        distinct.setdefault(key, launch)
    return [(name, launch) for (name, _), launch in sorted(distinct.items(), key=lambda kv: kv[0])]


def bound(launch, target):
    """(signature, constexprs, attrs, options) of a launch for target, as Triton's JIT binds it."""
    backend = make_backend(target)
    binder = create_function_from_signature(launch.kernel.signature, launch.kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = launch.kernel._pack_args(
        backend, launch.kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def describe(launch):
    """The launch's settings in words: tensor dtypes, constants and warps."""
    signature, constexprs, _, options = bound(launch, GPUTarget("cuda", 90, 32))
    params = [p.name for p in launch.kernel.params]
    types = sorted({v for v in signature.values() if v.startswith("*")})
    consts = ", ".join(f"{params[path[0]]}={value}" for path, value in sorted(constexprs.items())
                       if signature[params[path[0]]] == "constexpr")
    return f"{'/'.join(types)} {consts}, {options.num_warps} warps"


PTXAS_LINE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def compile_for(launch, arch):
    """{registers, spill_stores, spill_loads, shared, shared_limit} of launch compiled for sm_<arch>;
    raises what Triton or ptxas raise when it does not compile."""
    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options = bound(launch, target)
    source = ASTSource(launch.kernel, signature, constexprs, attrs)
    log = io.StringIO()
    dump, cache = triton.knobs.nvidia.dump_ptxas_log, triton.knobs.cache.dir
    triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report, which a kernel
    try:                                       # from Triton's cache would skip: compile afresh
        with tempfile.TemporaryDirectory() as fresh, contextlib.redirect_stdout(log):
            triton.knobs.cache.dir = fresh
            compiled = triton.compile(source, target=target, options=options.__dict__)
    finally:
        triton.knobs.nvidia.dump_ptxas_log, triton.knobs.cache.dir = dump, cache
    report = log.getvalue()
    spills, registers = PTXAS_LINE.search(report), REGISTERS.search(report)
    if not (spills and registers):
        raise RuntimeError(f"no ptxas report for sm_{arch}: {report!r}")
    return {"registers": int(registers.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2)), "shared": compiled.metadata.shared,
            "shared_limit": SHARED_LIMIT[arch]}


def problems(stats):
    """What is wrong with one compiled launch: spills, or more shared memory than the target has."""
    found = []
    if stats["spill_stores"] or stats["spill_loads"]:
        found.append(f"spills ({stats['spill_stores']} bytes stored, {stats['spill_loads']} loaded)")
    if stats["shared"] > stats["shared_limit"]:
        found.append(f"{stats['shared']:,} bytes of shared memory > {stats['shared_limit']:,}")
    return found


def cell(stats):
    """One table cell: registers, shared memory, and spills if any (stats may merge launches)."""
    spills = stats["spill_stores"] + stats["spill_loads"]
    return (f"{stats['registers']} regs, {stats['shared']:,} B shared"
            + (f", **{spills} B spilled**" if spills else ""))


def table(results, per_launch=False):
    """Markdown: per kernel (the most registers and shared memory over its launches, all spills)
    or per launch, one column per target."""
    rows = {}
    for row in results:
        key = (row["kernel"], row["launch"]) if per_launch else (row["kernel"],)
        merged = rows.setdefault(key, {"launches": 0, "targets": {}})
        merged["launches"] += 1
        for arch, stats in row["targets"].items():
            m = merged["targets"].setdefault(arch, dict.fromkeys(stats, 0))
            for k in ("registers", "shared"):
                m[k] = max(m[k], stats[k])
            for k in ("spill_stores", "spill_loads"):
                m[k] += stats[k]
    head = "| kernel | launch |" if per_launch else "| kernel | launches |"
    lines = [head + "".join(f" sm_{a} |" for a in TARGETS), "|---|---|" + "---|" * len(TARGETS)]
    for key, merged in rows.items():
        second = key[1] if per_launch else str(merged["launches"])
        lines.append(f"| {key[0]} | {second} |"
                     + "".join(f" {cell(merged['targets'][str(a)])} |" for a in TARGETS))
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def recorded_launches():
    """project_launches(), recorded once per process: a worker records its own, since launches
    hold kernels and tensors, which do not travel between processes (the order is the same)."""
    return project_launches()


def compile_job(job):
    """stats of compiling launch number `index` of recorded_launches() for `arch`."""
    index, arch = job
    return compile_for(recorded_launches()[index][1], arch)


def compile_all(workers=None):
    """[{kernel, launch, targets: {arch: stats}}] for every project launch and target, with a
    "problems" list per target where it spills or overflows shared memory. The compilations run
    in `workers` processes (default: one per core); each is independent and single-threaded."""
    launches = recorded_launches()
    jobs = [(index, arch) for index in range(len(launches)) for arch in TARGETS]
    # spawned, not forked: the parent has used torch's thread pool, which a fork may deadlock in
    with concurrent.futures.ProcessPoolExecutor(
            workers or os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
        stats = dict(zip(jobs, pool.map(compile_job, jobs, chunksize=4)))
    return [{"kernel": name, "launch": describe(launch),
             "targets": {str(arch): {**stats[index, arch], "problems": problems(stats[index, arch])}
                         for arch in TARGETS}}
            for index, (name, launch) in enumerate(launches)]


SPEC = {
    "json": ("", "also write every launch's figures to this JSON file"),
    "workers": (0, "processes compiling at once (0: one per CPU core)"),
    "launches": (False, "print the table per launch instead of per kernel"),
}


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__,
                                     prog="bench.py kernel_compile")
    if os.environ.get("TRITON_INTERPRET") == "1" or not kernels():
        raise SystemExit("error: the kernels are interpreted (TRITON_INTERPRET=1): run without it")
    results = compile_all(cfg["workers"] or None)
    if cfg["json"]:
        atomic.write_text(cfg["json"], json.dumps(results, indent=1))
    print(f"Triton {triton.__version__}; {len(results)} launches x {len(TARGETS)} targets\n")
    print(table(results, cfg["launches"]))
    bad = [(r["kernel"], r["launch"], arch, p) for r in results
           for arch, stats in r["targets"].items() for p in stats["problems"]]
    for kernel, launch, arch, problem in bad:
        print(f"sm_{arch}: {kernel} ({launch}): {problem}", file=sys.stderr)
    return 1 if bad else 0

