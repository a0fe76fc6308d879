"""Fused softmax cross-entropy over the vocabulary, forward and backward.

Forward: one program per row (token) walks the vocabulary in BLOCK-wide chunks with an online
log-sum-exp (running max, rescaled running sum), so no probability matrix is ever written: it keeps
one fp32 log-sum-exp per row. Backward: the gradient (softmax - one_hot) * grad / n_valid is computed
chunk by chunk from that log-sum-exp and written straight into the logits' dtype. Rows whose target
is ignore_index contribute nothing; the mean is over the other rows (PyTorch's semantics, NaN when
every row is ignored).
"""

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _cross_entropy_fwd_kernel(Logits, Targets, Loss, Lse, stride, V, ignore_index,
                              BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    Logits += row * stride
    target = tl.load(Targets + row)
    m_lane = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    s_lane = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(Logits + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_lane = s_lane * tl.exp(m_lane - safe) + tl.exp(x - safe)
        m_lane = m_new
    m = tl.max(m_lane, axis=0)
    lse = m + tl.log(tl.sum(s_lane * tl.exp(m_lane - m), axis=0))
    tl.store(Lse + row, lse)
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
    return torch.empty_like(logits)


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
