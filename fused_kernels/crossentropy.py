"""Fused softmax cross-entropy over the vocabulary, forward and backward.

For one token with logits x (V of them) and target t:
    loss = lse - x[t],   where lse = log(sum_j exp(x_j)) is the log-sum-exp of the row
    dloss/dx_j = softmax(x)_j - [j == t] = exp(x_j - lse) - [j == t]

Forward: one program per row walks the vocabulary in BLOCK-wide chunks with an online log-sum-exp
(kernels/logsumexp.py), so no probability matrix is ever written; it keeps one fp32 lse per row for
the backward. Backward: the gradient is rebuilt chunk by chunk from the logits and that lse, scaled
by grad_output / n_valid (the loss is a mean), and written straight into the logits' dtype. Rows
whose target is ignore_index contribute nothing; the mean is over the other rows (PyTorch's
semantics, NaN when every row is ignored).
"""

import torch
import triton
import triton.language as tl

from fused_kernels.logsumexp import combine_lanes, online_update

BLOCK = 4096


@triton.jit
def _cross_entropy_fwd_kernel(Logits, Targets, Loss, Lse, stride, V, ignore_index,
                              BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    Logits += row * stride
    target = tl.load(Targets + row)
    # lse = m + log(s): the row's max m and s = sum(exp(x - m)), chunk by chunk
    m_lane = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    s_lane = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(Logits + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_lane, s_lane = online_update(m_lane, s_lane, x)
    m, s = combine_lanes(m_lane, s_lane)
    lse = m + tl.log(s)
    tl.store(Lse + row, lse)
    # loss = lse - x[target], or 0 for an ignored row
    if target == ignore_index:
        tl.store(Loss + row, 0.0)
    else:
        x_target = tl.load(Logits + target).to(tl.float32)
        tl.store(Loss + row, lse - x_target)


@triton.jit
def _cross_entropy_bwd_kernel(Logits, Targets, Lse, Grad, DLogits, stride, V, ignore_index,
                              BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    Logits += row * stride
    DLogits += row * stride
    target = tl.load(Targets + row)
    lse = tl.load(Lse + row)
    g = tl.load(Grad)  # d(mean loss)/d(row loss) = grad_output / n_valid
    ignored = target == ignore_index
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(Logits + cols, mask=mask, other=0.0).to(tl.float32)
        # softmax(x) - one_hot(target), times d(mean loss)/d(row loss)
        p = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        dx = tl.where(ignored, 0.0, p * g)
        tl.store(DLogits + cols, dx.to(DLogits.dtype.element_ty), mask=mask)


def _block(v):
    return min(BLOCK, triton.next_power_of_2(v))


@torch.library.custom_op("mini_lm::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(logits: torch.Tensor, targets: torch.Tensor,
                      ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-row log-sum-exp) of (N, V) logits."""
    n, v = logits.shape
    logits = logits.contiguous()
    targets = targets.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _cross_entropy_fwd_kernel[(n,)](logits, targets, loss, lse, logits.stride(0), v, ignore_index,
                                        BLOCK=_block(v), num_warps=8)
    n_valid = (targets != ignore_index).sum()
    return loss.sum() / n_valid, lse


@cross_entropy_fwd.register_fake
def _(logits, targets, ignore_index):
    return logits.new_empty((), dtype=torch.float32), logits.new_empty(logits.shape[0],
                                                                         dtype=torch.float32)


@torch.library.custom_op("mini_lm::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(grad: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                      lse: torch.Tensor, ignore_index: int) -> torch.Tensor:
    n, v = logits.shape
    logits = logits.contiguous()
    dlogits = torch.empty_like(logits)
    scale = (grad.float() / (targets != ignore_index).sum()).reshape(1)
    if n:
        _cross_entropy_bwd_kernel[(n,)](logits, targets.contiguous(), lse, scale, dlogits,
                                        logits.stride(0), v, ignore_index, BLOCK=_block(v),
                                        num_warps=8)
    return dlogits


@cross_entropy_bwd.register_fake
def _(grad, logits, targets, lse, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)  # as the real one


def _setup_context(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.ignore_index = ignore_index
    ctx.save_for_backward(logits, targets, output[1])


def _backward(ctx, grad_loss, _grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return cross_entropy_bwd(grad_loss, logits, targets, lse, ctx.ignore_index), None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy of (N, V) logits against (N,) int64 targets, fused (compile-safe)."""
    return cross_entropy_fwd(logits, targets, ignore_index)[0]
