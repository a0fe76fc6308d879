"""The Triton kernels compiled for real GPUs (sm_80 to sm_121) without one: every launch the CPU demo
and mini_lm make compiles, spills nothing and fits the target's shared memory
(benchmarks/kernel_compile.py). The kernels must be compiled, not interpreted, so each check runs in
a Python without TRITON_INTERPRET (this suite's conftest sets it)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks import kernel_compile
from fused_kernels import softmax

ROOT = Path(__file__).resolve().parent.parent
COMPILED = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
COMPILED["PYTHONPATH"] = str(ROOT)  # a script outside the project imports it too


def run_compiled(args, timeout=280):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=COMPILED, capture_output=True,
                          text=True, timeout=timeout)


def test_every_launch_compiles_for_every_target_without_spills_or_too_much_shared_memory(tmp_path):
    result = run_compiled(["bench.py", "kernel_compile", f"--json={tmp_path / 'k.json'}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    launches = json.loads((tmp_path / "k.json").read_text())
    assert {r["kernel"] for r in launches} == {  # every kernel the launchers start
        "softmax._softmax_fwd_kernel", "softmax._softmax_bwd_kernel", "layernorm._layer_norm_fwd_kernel",
        "layernorm._layer_norm_dx_kernel", "layernorm._layer_norm_dwdb_kernel",
        "crossentropy._cross_entropy_fwd_kernel", "crossentropy._cross_entropy_bwd_kernel"}
    for row in launches:
        assert sorted(row["targets"], key=int) == [str(a) for a in kernel_compile.TARGETS]
        for arch, stats in row["targets"].items():
            assert stats["problems"] == [] and stats["registers"] > 0, (row["launch"], arch)
            assert stats["shared"] <= kernel_compile.SHARED_LIMIT[int(arch)]
    # the softmax's launches are what its launcher picks for every context decoding passes through,
    # in each dtype, with and without padding
    forward = {r["launch"] for r in launches if r["kernel"] == "softmax._softmax_fwd_kernel"}
    for tk in (1, 2, 64, 128, 1024):
        block, one_block, warps = softmax._launch_config(tk)
        for dtype in ("*bf16", "*fp16", "*fp32"):
            for pad in ("", "/*i32"):
                decode = [launch for launch in forward if launch.startswith(f"{dtype}{pad} Tq=1")
                          and f"ONE_BLOCK={one_block}, BLOCK={block}, {warps} warps" in launch]
                assert decode, (tk, dtype, pad, sorted(forward))
    assert "| softmax._softmax_fwd_kernel | 78 |" in result.stdout  # the per-kernel table


SPILLING = textwrap.dedent("""
    import json, sys
    import torch
    import triton.language as tl
    from triton.runtime.jit import JITFunction
    from benchmarks import kernel_compile

    def running_sums(X, Y, BLOCK: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        x = tl.load(X + cols)
        tl.store(Y + cols, tl.cumsum(x * x, axis=0) + tl.sum(x, axis=0))

    kernel = JITFunction(running_sums)
    found = []
    for block in (256, 16384):  # one warp: 8 values a thread, then 512, more than its 255 registers
        x = torch.zeros(block)
        stats = kernel_compile.compile_for(kernel_compile.Launch(kernel, (x, x), {"BLOCK": block,
                                                                                 "num_warps": 1}), 90)
        found.append({**stats, "problems": kernel_compile.problems(stats)})
    print(json.dumps(found))
""")


def test_a_kernel_that_spills_is_caught(tmp_path):
    """The check reads ptxas's own report: a kernel holding more values per thread than a thread
    has registers spills, and that is a problem; the same kernel at a small block is not."""
    (tmp_path / "spilling.py").write_text(SPILLING)  # Triton reads a kernel's source from its file
    result = run_compiled([str(tmp_path / "spilling.py")], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    small, large = json.loads(result.stdout.splitlines()[-1])
    assert small["problems"] == [] and small["spill_stores"] == 0 and small["registers"] < 255
    assert large["spill_stores"] > 0 and large["spill_loads"] > 0 and large["registers"] == 255
    assert large["problems"] == [f"spills ({large['spill_stores']} bytes stored, "
                                 f"{large['spill_loads']} loaded)"]


def test_shared_memory_over_the_targets_limit_is_a_problem():
    within = {"registers": 40, "spill_stores": 0, "spill_loads": 0, "shared": 99 * 1024,
              "shared_limit": kernel_compile.SHARED_LIMIT[86]}
    assert kernel_compile.problems(within) == []
    over = {**within, "shared": 99 * 1024 + 1}
    assert kernel_compile.problems(over) == ["101,377 bytes of shared memory > 101,376"]


def test_it_refuses_to_run_interpreted():
    result = subprocess.run([sys.executable, "bench.py", "kernel_compile"], cwd=ROOT,
                            env={**COMPILED, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert result.returncode != 0 and "TRITON_INTERPRET=1" in result.stderr
