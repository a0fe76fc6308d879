"""bench.py gemv's hand-written AVX-512 GEMV (benchmarks/gemv.py): its products against F.linear,
its refusal where it can't run, and the quick benchmark's rows."""

import tempfile

import pytest
import torch
import torch.nn.functional as F

from benchmarks import gemv

REASON = gemv.unsupported_reason()


@pytest.fixture(scope="module")
def lib():
    if REASON:
        pytest.skip(f"the hand-written kernel can't run here: {REASON}")
    with tempfile.TemporaryDirectory() as folder:
        yield gemv.build_kernels(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 32), (12, 64), (1536, 512), (512, 2048)])
def test_hand_gemv_equals_f_linear(lib, dtype, shape):
    generator = torch.Generator().manual_seed(shape[0])
    weight = torch.randn(*shape, generator=generator).to(dtype)
    x = torch.randn(shape[1], generator=generator).to(dtype)
    out = gemv.hand_gemv(lib, weight, x, torch.empty(shape[0]))
    reference = F.linear(x.double(), weight.double())  # the same bf16 values, summed exactly
    assert torch.allclose(out.double(), reference, rtol=1e-5, atol=1e-4 * shape[1] ** 0.5)


@pytest.mark.parametrize("weight, x", [
    (torch.zeros(6, 32), torch.zeros(32)),  # rows not a multiple of 4
    (torch.zeros(4, 48), torch.zeros(48)),  # inputs not a multiple of 32
    (torch.zeros(4, 32), torch.zeros(64)),  # x of another width
    (torch.zeros(4, 32), torch.zeros(32, dtype=torch.bfloat16)),  # x of another dtype
    (torch.zeros(32, 4).t(), torch.zeros(32)),  # column-major weight
])
def test_hand_gemv_refuses_what_would_read_past_its_buffers(lib, weight, x):
    with pytest.raises(ValueError, match="hand_gemv takes"):
        gemv.hand_gemv(lib, weight, x, torch.empty(weight.shape[0]))


def test_the_check_catches_a_wrong_kernel(lib, monkeypatch):
    """check_kernel, which every benchmark run calls first, raises on a kernel that is off."""
    weights = [torch.randn(8, 32), torch.randn(4, 64)]
    inputs = {32: torch.randn(32), 64: torch.randn(64)}
    outputs = [torch.empty(8), torch.empty(4)]
    gemv.check_kernel(lib, weights, inputs, outputs)
    right = gemv.hand_gemv
    monkeypatch.setattr(gemv, "hand_gemv", lambda *a: right(*a).mul_(1.001))
    with pytest.raises(AssertionError, match="differs from F.linear"):
        gemv.check_kernel(lib, weights, inputs, outputs)


def test_unsupported_cpu_is_refused_by_name(monkeypatch, capsys):
    monkeypatch.setattr(gemv, "REQUIRED_FLAGS", ("avx512f", "no_such_flag"))
    assert gemv.unsupported_reason() == "this CPU lacks no_such_flag"
    assert gemv.bench_gemv(quick=True) is None
    assert "can't run here: this CPU lacks no_such_flag" in capsys.readouterr().out


def test_no_compiler_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(gemv, "REQUIRED_FLAGS", ())  # any x86-64 CPU passes the flag check
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(gemv.shutil, "which", lambda name: None)
    assert gemv.unsupported_reason() == "no C compiler (set CC, or install gcc)"
    monkeypatch.setenv("CC", "/usr/bin/some-cc")
    assert gemv.c_compiler() == "/usr/bin/some-cc"


def test_quick_benchmark_rows(lib, capsys):
    rows = gemv.bench_gemv(quick=True)
    threads = sorted({1, torch.get_num_threads()})
    assert [(r["threads"], r["dtype"]) for r in rows] == [
        (t, d) for t in threads for d in ("float32", "bfloat16")]
    shapes = gemv.decoding_shapes(dict(gemv.mini_lm(), n_layer=2, vocab_size=4096))
    d = gemv.mini_lm()["n_embd"]  # QKV, output projection, MLP in and out, per layer; the head
    assert shapes == [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * 2 + [(4096, d)]
    for row in rows:
        element = 4 if row["dtype"] == "float32" else 2
        assert row["mb"] == pytest.approx(sum(n * k for n, k in shapes) * element / 1e6)
        assert row["read"] > 0 and row["PyTorch"] > 0 and row["hand-written"] > 0
        assert row["compiled"] is None  # quick: no compiled column
    table = capsys.readouterr().out
    assert table.count("\n| ") == 1 + len(rows)  # the header and a row each


def test_threads_are_restored_when_a_measurement_fails(lib, monkeypatch):
    """bench_gemv runs with one thread, then all: a failure half-way must not leave the process
    (a test worker, here) on one thread."""
    cores = torch.get_num_threads()

    def fail(*args, **kwargs):
        assert torch.get_num_threads() == 1
        raise RuntimeError("measurement failed")
    monkeypatch.setattr(gemv, "measure", fail)
    with pytest.raises(RuntimeError, match="measurement failed"):
        gemv.bench_gemv(quick=True)
    assert torch.get_num_threads() == cores
