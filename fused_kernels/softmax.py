"""Fused scaled, causal-masked softmax for attention scores, forward and backward.

scores (B, H, Tq, Tk) -> y = softmax(scale * scores) over the keys. The queries are the last Tq of
the Tk positions (a KV cache holds the first Tk - Tq), so query i sits at position p = Tk - Tq + i
and may see key j when

    j <= p                          (causal)
    j >= pad_lengths[b] or j == p   (left padding is invisible; a padding query sees only itself)

which is fused_kernels.attention_mask's rule, the one model.py gives sdpa and eager attention: every row
has a visible key, so no row is empty and none is NaN. Masked entries come out as exactly 0.

Forward, one program per row, in fp32 whatever the input dtype:
    x = scale * scores (masked entries -inf),  m = max(x),  s = sum(exp(x - m)),  y = exp(x - m) / s
Rows up to BLOCK wide are loaded once. Wider rows take two passes: an online log-sum-exp
(kernels/logsumexp.py) for m and s, then a pass that writes y.

Backward, from the saved output y alone: with dy = dL/dy,
    dL/dx = y * (dy - sum(dy * y)),   and dL/dscores = scale * dL/dx
(the softmax Jacobian is diag(y) - y y^T); masked entries have y = 0, so their gradient is 0.
"""

import torch
import triton
import triton.language as tl

from fused_kernels.logsumexp import combine_lanes, online_update

MAX_BLOCK = 4096


@triton.jit
def _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD: tl.constexpr):
    """Which of the columns cols the row's query may see (the rule in the module docstring)."""
    position = (Tk - Tq) + row % Tq
    visible = (cols < Tk) & (cols <= position)
    if HAS_PAD:
        b = row // (H * Tq)
        visible = visible & ((cols >= tl.load(Pad + b)) | (cols == position))
    return visible


@triton.jit
def _softmax_fwd_kernel(X, Y, Pad, scale, Tq, Tk, H,
                        HAS_PAD: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * Tk
    Y += row * Tk
    if ONE_BLOCK:
        # the whole row in registers: x, its max m, e = exp(x - m) (0 where masked), y = e / sum(e)
        cols = tl.arange(0, BLOCK)
        visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
        x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
        e = tl.exp(x - tl.max(x, axis=0))
        y = e / tl.sum(e, axis=0)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=cols < Tk)
    else:
        # pass 1: the row's max m and sum s = sum(exp(x - m)), chunk by chunk
        m_lane = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        s_lane = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, Tk, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
            x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
            m_lane, s_lane = online_update(m_lane, s_lane, x)
        m, s = combine_lanes(m_lane, s_lane)
        # pass 2: y = exp(x - m) / s
        inv = 1.0 / s
        for start in range(0, Tk, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            visible = _visible(cols, row, Pad, Tq, Tk, H, HAS_PAD)
            x = tl.load(X + cols, mask=visible, other=float("-inf")).to(tl.float32) * scale
            tl.store(Y + cols, (tl.exp(x - m) * inv).to(Y.dtype.element_ty), mask=cols < Tk)


@triton.jit
def _softmax_bwd_kernel(DY, Y, DX, scale, Tk, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    DY += row * Tk
    Y += row * Tk
    DX += row * Tk
    # pass 1: dot = sum(dy * y); pass 2: dx = scale * y * (dy - dot)
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
