"""Fused LayerNorm, forward and backward, for any width; fp32/bf16/fp16 inputs, fp32 statistics.

For one row x of N values, weight w and bias b:
    mean = sum(x) / N,   var = sum((x - mean)^2) / N,   rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd,   y = xhat * w + b

Forward: one program per row; the row is read in BLOCK-wide chunks (one chunk for widths up to
BLOCK): a pass for the mean, a pass for the variance (two passes, not sum(x^2) - mean^2, which
loses precision when the mean is large), and a pass that writes y. mean and rstd are kept for the
backward pass.

Backward, with dy = dL/dy and g = w * dy:
    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))      (row by row: two sums, then dx)
    dw = sum over rows of dy * xhat,   db = sum over rows of dy
dw and db are column sums over all rows, in two stages: each program sums a tile of rows into a
partial row, and torch adds the partials. This needs no atomics or locks and gives the same bits on
every run.
"""

import torch
import triton
import triton.language as tl

MAX_BLOCK = 4096  # widest chunk per load; wider rows loop


def _block(n):
    return min(MAX_BLOCK, triton.next_power_of_2(n))


@triton.jit
def _layer_norm_fwd_kernel(X, W, B, Y, Mean, Rstd, stride, N, eps,
                           HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride
    Y += row * stride
    # pass 1: mean
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        acc += tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / N
    # pass 2: variance about that mean (the padding columns past N are not x - mean: zeroed)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
        d = tl.where(cols < N, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)
    # pass 3: y = xhat * w + b
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_dx_kernel(DY, X, W, Mean, Rstd, DX, stride, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride
    DY += row * stride
    DX += row * stride
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    # pass 1: c1 = mean(g * xhat), c2 = mean(g), where g = w * dy
    sum_wdy_xhat = tl.zeros([BLOCK], dtype=tl.float32)
    sum_wdy = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        wdy = (tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
               * tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32))
        sum_wdy_xhat += tl.where(mask, (x - mean) * rstd * wdy, 0.0)
        sum_wdy += wdy
    c1 = tl.sum(sum_wdy_xhat, axis=0) / N
    c2 = tl.sum(sum_wdy, axis=0) / N
    # pass 2: dx = rstd * (g - xhat * c1 - c2)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        wdy = (tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
               * tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32))
        dx = (wdy - ((x - mean) * rstd * c1 + c2)) * rstd
        tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_dwdb_kernel(DY, X, Mean, Rstd, DW_partial, DB_partial, stride, M, N,
                            ROWS_PER_PROGRAM: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    # this program: BLOCK_N columns of ROWS_PER_PROGRAM rows, summed BLOCK_M rows at a time into
    # one partial row of dw (dy * xhat) and of db (dy)
    col_block = tl.program_id(0)
    row_group = tl.program_id(1)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first_row = row_group * ROWS_PER_PROGRAM
    for start in range(0, ROWS_PER_PROGRAM, BLOCK_M):
        rows = first_row + start + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offsets = rows.to(tl.int64)[:, None] * stride + cols[None, :]
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
        dw += dy * (x - mean[:, None]) * rstd[:, None]
        db += dy
    tl.store(DW_partial + row_group * N + cols, tl.sum(dw, axis=0), mask=col_mask)
    tl.store(DB_partial + row_group * N + cols, tl.sum(db, axis=0), mask=col_mask)


# ------------------------------------------------------------------------- launchers as custom ops

@torch.library.custom_op("mini_lm::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    y = torch.empty_like(x2)
    mean = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if x2.shape[0]:
        _layer_norm_fwd_kernel[(x2.shape[0],)](
            x2, weight, bias if bias is not None else weight, y, mean, rstd, x2.stride(0), n, eps,
            HAS_BIAS=bias is not None, BLOCK=_block(n), num_warps=4 if n <= 2048 else 8)
    return y.view(x.shape), mean, rstd


@layer_norm_fwd.register_fake
def _(x, weight, bias, eps):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # contiguous like the real output, whatever x's strides (a head's queries are a strided view)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(rows, dtype=torch.float32),
            x.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("mini_lm::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    dy2 = dy.reshape(-1, n).contiguous()
    m = x2.shape[0]
    dx = torch.empty_like(x2)
    block = _block(n)
    rows_per_program = 256
    groups = triton.cdiv(m, rows_per_program)
    dw_partial = torch.zeros((max(groups, 1), n), dtype=torch.float32, device=x.device)
    db_partial = torch.zeros_like(dw_partial)
    if m:
        _layer_norm_dx_kernel[(m,)](dy2, x2, weight, mean, rstd, dx, x2.stride(0), n, BLOCK=block,
                                    num_warps=4 if n <= 2048 else 8)
        block_n = min(64, triton.next_power_of_2(n))
        _layer_norm_dwdb_kernel[(triton.cdiv(n, block_n), groups)](
            dy2, x2, mean, rstd, dw_partial, db_partial, x2.stride(0), m, n,
            ROWS_PER_PROGRAM=rows_per_program, BLOCK_M=32, BLOCK_N=block_n)
    dw = dw_partial.sum(0).to(weight.dtype)
    db = db_partial.sum(0).to(weight.dtype)
    return dx.view(x.shape), dw, db


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(weight))


def _setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd)
    return dx, dw, db if ctx.has_bias else None, None


layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x, weight, bias=None, eps=1e-5):
    """LayerNorm over the last dimension with the fused kernels (differentiable, compile-safe)."""
    return layer_norm_fwd(x, weight, bias, eps)[0]
