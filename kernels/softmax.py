"""Fused scaled, causal-masked softmax for attention scores, forward and backward.

scores (B, H, Tq, Tk) -> softmax(scale * scores) over keys, where query i may see key j only if
j <= (Tk - Tq) + i (the queries are the last Tq positions; a KV cache holds the first Tk - Tq) and,
with left-padded batches, j >= pad_lengths[b]. Masked entries come out as exactly 0, and a row with no
visible key (a padding query) is all zeros instead of NaN.

One program per row, fp32 arithmetic. Rows up to BLOCK wide are loaded once; wider rows take an
online max/sum pass and a write pass. Backward: dx = scale * y * (dy - sum(dy * y)).
"""

import torch
import triton
import triton.language as tl

MAX_BLOCK = 4096


@triton.jit
def _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD: tl.constexpr):
    i = row % Tq
    visible = (cols < Tk) & (cols <= (Tk - Tq) + i)
    if HAS_PAD:
        b = row // (H * Tq)
        visible = visible & (cols >= tl.load(Pad + b))
    return visible


@triton.jit
def _softmax_fwd_kernel(X, Y, Pad, scale, Tq, Tk, H,
                        HAS_PAD: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * Tk
    Y += row * Tk
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK)
        visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
        x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
        m = tl.max(x, axis=0)
        e = tl.where(visible, tl.exp(x - tl.where(m == float("-inf"), 0.0, m)), 0.0)
        s = tl.sum(e, axis=0)
        y = e / tl.where(s > 0, s, 1.0)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=cols < Tk)
    else:
        # online softmax: running max and rescaled running sum per lane
        m_lane = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        s_lane = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, Tk, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
            x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
            m_new = tl.maximum(m_lane, x)
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_lane = s_lane * tl.exp(m_lane - safe) + tl.where(visible, tl.exp(x - safe), 0.0)
            m_lane = m_new
        m = tl.max(m_lane, axis=0)
        safe_m = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(s_lane * tl.exp(m_lane - safe_m), axis=0)
        inv = 1.0 / tl.where(s > 0, s, 1.0)
        for start in range(0, Tk, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
            x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
            y = tl.where(visible, tl.exp(x - safe_m) * inv, 0.0)
            tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=cols < Tk)


@triton.jit
def _softmax_bwd_kernel(DY, Y, DX, scale, Tk, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    DY += row * Tk
    Y += row * Tk
    DX += row * Tk
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, Tk, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < Tk
        acc += (tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
                * tl.load(Y + cols, mask=mask, other=0.0).to(tl.float32))
    dot = tl.sum(acc, axis=0)
    for start in range(0, Tk, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < Tk
        y = tl.load(Y + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + cols, (scale * y * (dy - dot)).to(DX.dtype.element_ty), mask=mask)


def _launch_config(tk):
    block = min(MAX_BLOCK, triton.next_power_of_2(tk))
    return block, block >= tk, 4 if block <= 1024 else 8


@torch.library.custom_op("mini_lm::causal_softmax_fwd", mutates_args=())
def causal_softmax_fwd(scores: torch.Tensor, scale: float,
                       pad_lengths: torch.Tensor | None) -> torch.Tensor:
    b, h, tq, tk = scores.shape
    x = scores.contiguous()
    y = torch.empty_like(x)
    block, one_block, warps = _launch_config(tk)
    pad = pad_lengths.to(torch.int32).contiguous() if pad_lengths is not None else x
    if x.numel():
        _softmax_fwd_kernel[(b * h * tq,)](x, y, pad, scale, tq, tk, h, HAS_PAD=pad_lengths is not None,
                                           ONE_BLOCK=one_block, BLOCK=block, num_warps=warps)
    return y


@causal_softmax_fwd.register_fake
def _(scores, scale, pad_lengths):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


@torch.library.custom_op("mini_lm::causal_softmax_bwd", mutates_args=())
def causal_softmax_bwd(dy: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    dy = dy.contiguous()
    dx = torch.empty_like(y)
    tk = y.shape[-1]
    block, _, warps = _launch_config(tk)
    if y.numel():
        _softmax_bwd_kernel[(y.numel() // tk,)](dy, y, dx, scale, tk, BLOCK=block, num_warps=warps)
    return dx


@causal_softmax_bwd.register_fake
def _(dy, y, scale):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    ctx.scale = inputs[1]
    ctx.save_for_backward(output)


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return causal_softmax_bwd(dy, y, ctx.scale), None, None


causal_softmax_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_softmax(scores, scale, pad_lengths=None):
    """Differentiable, compile-safe fused softmax(scale * scores) with causal and padding masks."""
    return causal_softmax_fwd(scores, scale, pad_lengths)
