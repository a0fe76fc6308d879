"""Every Triton kernel, forward and backward, against PyTorch on awkward shapes.

On CPU they run in Triton's interpreter (conftest.py), on a GPU compiled on CUDA. Tolerances: fp32
results within 1e-5 (absolute, relative to values of order 1); bf16/fp16 within one or two units in
the last place of the low-precision output (2e-2 relative).
"""
import pytest
import torch

import fused_kernels
from fused_kernels import crossentropy as ce_mod
from fused_kernels import layernorm as ln_mod
from fused_kernels import softmax as sm_mod

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def leaf(t, dtype=torch.float32):
    return t.to(DEVICE, dtype).requires_grad_()


def twins(*tensors):
    """The same leaf tensors twice: fp32 for the kernel, fp64 for the reference (so the reference's
    own rounding does not count against the kernel)."""
    a = [leaf(t) if t is not None else None for t in tensors]
    b = [leaf(t.detach(), torch.float64) if t is not None else None for t in a]
    return a, b


def grads(*tensors):
    return [t.grad if t is not None else None for t in tensors]


def close(actual, expected, dtype=torch.float32):
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype])


# ---------------------------------------------------------------------------------------- LayerNorm

@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (3, 5, 37), (70, 1000), (2, 5000)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_fp32(shape, bias, monkeypatch):
    monkeypatch.setattr(ln_mod, "MAX_BLOCK", 1024)  # widths 5000: five chunks per row
    torch.manual_seed(0)
    n = shape[-1]
    (x, w, b), (x2, w2, b2) = twins(torch.randn(shape) * 3 + 1, torch.randn(n),
                                    torch.randn(n) if bias else None)
    y = ln_mod.layer_norm(x, w, b)
    y2 = torch.nn.functional.layer_norm(x2, (n,), w2, b2)
    close(y, y2)
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy.double())
    for g, g2 in zip(grads(x, w, b), grads(x2, w2, b2)):
        if g2 is not None:
            close(g, g2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_low_precision_keeps_fp32_statistics(dtype):
    torch.manual_seed(0)
    x = (torch.randn(9, 200) * 10 + 50).to(DEVICE, dtype).requires_grad_()
    w = torch.randn(200, device=DEVICE).requires_grad_()
    y = ln_mod.layer_norm(x, w, None)
    assert y.dtype == dtype
    x32 = x.detach().float().requires_grad_()
    w32 = w.detach().clone().requires_grad_()
    y32 = torch.nn.functional.layer_norm(x32, (200,), w32)
    close(y, y32, dtype)
    dy = torch.randn_like(y32)
    y.backward(dy.to(dtype))
    y32.backward(dy)
    close(x.grad, x32.grad, dtype)
    torch.testing.assert_close(w.grad, w32.grad, atol=5e-2, rtol=2e-2)


# ------------------------------------------------------------------------------------------ softmax

SOFTMAX_CASES = [
    ((1, 1, 1, 1), None),                      # one row, one key
    ((2, 3, 5, 5), None),                      # prefill: square, causal
    ((2, 2, 3, 7), None),                      # 3 new queries over a 7-key cache
    ((1, 2, 1, 37), None),                     # one decoding step
    ((2, 1, 6, 37), [2, 5]),                   # left padding
    ((3, 2, 9, 9), [4, 0, 8]),                 # padding queries see only themselves
    ((2, 1, 5, 300), [120, 0]),                # padding wider than one block (BLOCK 64)
    ((1, 1, 4, 300), None),                    # wider than one block (BLOCK forced to 64 below)
]


def visible_keys(batch, tq, tk, pad):
    """(batch, 1, tq, tk) booleans, written out from the rule rather than taken from fused_kernels:
    the tq queries are the last of tk positions; query i sees key j when j is not after it
    (a lower triangle shifted right by tk - tq) and j is not left padding of its row, except that
    a padding query always sees itself."""
    causal = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq)
    mask = causal.repeat(batch, 1, 1)
    for b, p in enumerate(pad or []):
        mask[b, :, :p] = False
        for i in range(tq):
            if tk - tq + i < p:
                mask[b, i, tk - tq + i] = True
    return mask[:, None].to(DEVICE)


@pytest.mark.parametrize("shape, pad", SOFTMAX_CASES)
def test_the_mask_rule_is_the_one_written_out(shape, pad):
    b, _, tq, tk = shape
    padding = torch.tensor(pad, device=DEVICE) if pad is not None else None
    got = fused_kernels.attention_mask(tq, tk, padding, DEVICE).expand(b, 1, tq, tk)
    assert torch.equal(got, visible_keys(b, tq, tk, pad))


@pytest.mark.parametrize("shape, pad", SOFTMAX_CASES)
@pytest.mark.parametrize("max_block", [4096, 64])
def test_causal_softmax_fp32(shape, pad, max_block, monkeypatch):
    monkeypatch.setattr(sm_mod, "MAX_BLOCK", max_block)
    torch.manual_seed(0)
    pad = torch.tensor(pad, device=DEVICE) if pad is not None else None
    (x,), (x2,) = twins(torch.randn(shape) * 4)
    y = sm_mod.causal_softmax(x, 0.37, pad)
    y2 = fused_kernels.causal_softmax_torch(x2, 0.37, pad)
    close(y, y2)
    mask = visible_keys(shape[0], shape[2], shape[3], pad.tolist() if pad is not None else None)
    close(y, torch.softmax((0.37 * x2.detach()).masked_fill(~mask, float("-inf")), dim=-1))
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy.double())
    close(x.grad, x2.grad)
    assert torch.all((y.sum(-1) - 1).abs() < 1e-5)  # every row a distribution, padding rows too


def test_causal_softmax_kernel_applies_attention_mask_padding_rows_included():
    """The kernel's in-register mask is the rule model.py gives sdpa and eager attention (here
    written out independently): masked keys get exactly 0, a padding query all its weight on itself."""
    torch.manual_seed(0)
    pad = torch.tensor([3, 0, 6], device=DEVICE)
    for tq, tk in ((3, 7), (7, 7)):  # 3 queries over a 7-key cache, then a prefill
        x = torch.randn(3, 2, tq, tk, device=DEVICE)
        y = sm_mod.causal_softmax(x, 0.5, pad)
        mask = visible_keys(3, tq, tk, pad.tolist())
        expected = torch.softmax((0.5 * x).masked_fill(~mask, float("-inf")), dim=-1)
        close(y, expected)
        assert torch.all(y[~mask.expand_as(y)] == 0)
    for b, p in enumerate(pad.tolist()):  # the prefill's padding queries
        for q in range(p):
            assert torch.all(y[b, :, q, q] == 1) and torch.all(y[b, :, q].sum(-1) == 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_softmax_low_precision(dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 2, 8, 24) * 3).to(DEVICE, dtype).requires_grad_()
    y = sm_mod.causal_softmax(x, 0.5, None)
    assert y.dtype == dtype
    x32 = x.detach().float().requires_grad_()
    y32 = fused_kernels.causal_softmax_torch(x32, 0.5)
    close(y, y32, dtype)
    dy = torch.randn_like(y32)
    y.backward(dy.to(dtype))
    y32.backward(dy)
    close(x.grad, x32.grad, dtype)


# ------------------------------------------------------------------------------------ cross-entropy

@pytest.mark.parametrize("n, v, block", [(1, 3, 4096), (8, 37, 4096), (5, 1000, 128),
                                         (16, 50257, 4096), (3, 32000, 1024)])
def test_cross_entropy_fp32(n, v, block, monkeypatch):
    monkeypatch.setattr(ce_mod, "BLOCK", block)
    torch.manual_seed(0)
    (x,), (x2,) = twins(torch.randn(n, v) * 3)
    t = torch.randint(0, v, (n,), device=DEVICE)
    if n > 1:
        t[1] = -100  # ignored row
    loss = ce_mod.cross_entropy(x, t)
    loss2 = torch.nn.functional.cross_entropy(x2, t)
    close(loss, loss2)
    loss.backward()
    loss2.backward()
    close(x.grad, x2.grad)


def test_cross_entropy_bf16_logits_and_custom_ignore_index():
    torch.manual_seed(0)
    x = (torch.randn(12, 3000) * 2).to(DEVICE, torch.bfloat16).requires_grad_()
    t = torch.randint(0, 3000, (12,), device=DEVICE)
    t[::3] = 7  # ignore_index=7 marks these rows
    loss = ce_mod.cross_entropy(x, t, ignore_index=7)
    x32 = x.detach().float().requires_grad_()
    loss32 = torch.nn.functional.cross_entropy(x32, t, ignore_index=7)
    close(loss, loss32)
    (loss * 3).backward()
    (loss32 * 3).backward()
    assert x.grad.dtype == torch.bfloat16
    close(x.grad, x32.grad, torch.bfloat16)
    assert torch.all(x.grad[::3] == 0)


def test_cross_entropy_all_ignored_is_nan_like_pytorch():
    x = torch.randn(3, 5, device=DEVICE)
    t = torch.full((3,), -100, device=DEVICE)
    assert torch.isnan(ce_mod.cross_entropy(x, t))
    assert torch.isnan(torch.nn.functional.cross_entropy(x, t))


# ------------------------------------------------------------------------ registration and dispatch

def test_custom_ops_pass_opcheck():
    """Fake (shape) functions, autograd registration and schemas agree with the real kernels."""
    torch.manual_seed(0)
    x = torch.randn(4, 33, device=DEVICE, requires_grad=True)
    w = torch.randn(33, device=DEVICE, requires_grad=True)
    torch.library.opcheck(ln_mod.layer_norm_fwd, (x, w, None, 1e-5))
    torch.library.opcheck(ln_mod.layer_norm_fwd, (x, w, torch.randn(33, device=DEVICE), 1e-5))
    # strided views (QK-norm normalises each head's slice of the qkv projection): the fake
    # functions must promise the real ones' contiguous outputs, or compiled code misreads them
    qkv = torch.randn(2, 5, 3, 2, 8, device=DEVICE).permute(2, 0, 3, 1, 4)[0].requires_grad_()
    torch.library.opcheck(ln_mod.layer_norm_fwd, (qkv, torch.randn(8, device=DEVICE), None, 1e-5))
    wide = torch.randn(6, 100, device=DEVICE)[:, ::2].requires_grad_()
    torch.library.opcheck(ce_mod.cross_entropy_fwd, (wide, torch.randint(0, 50, (6,), device=DEVICE), -100))
    s = torch.randn(1, 2, 3, 5, device=DEVICE, requires_grad=True)
    torch.library.opcheck(sm_mod.causal_softmax_fwd, (s, 0.5, None))
    torch.library.opcheck(sm_mod.causal_softmax_fwd, (s.expand(2, 2, 3, 5).contiguous(), 0.5,
                                                      torch.tensor([0, 2], device=DEVICE)))
    logits = torch.randn(6, 50, device=DEVICE, requires_grad=True)
    torch.library.opcheck(ce_mod.cross_entropy_fwd,
                          (logits, torch.randint(0, 50, (6,), device=DEVICE), -100))


def test_dispatch():
    cpu = torch.zeros(1)
    assert not fused_kernels.use_triton(cpu, "auto") and not fused_kernels.use_triton(cpu, "torch")
    with pytest.raises(ValueError, match="must be one of"):
        fused_kernels.use_triton(cpu, "cuda")
    if DEVICE == "cpu":
        assert fused_kernels.use_triton(cpu, "triton")  # the interpreter is on in the tests
    else:  # "auto" picks Triton on compute capability 8.0 and newer only (a T4 is 7.5)
        ampere_or_newer = torch.cuda.get_device_capability() >= (8, 0)
        assert fused_kernels.use_triton(torch.zeros(1, device="cuda"), "auto") == ampere_or_newer
