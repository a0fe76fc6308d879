"""The online log-sum-exp that the softmax and cross-entropy kernels share.

A row too wide for one block is read in BLOCK-wide chunks. Each lane (one column of the block) keeps
a running maximum m and a running sum s of exp(x - m) over the values it has seen. When a larger
value arrives, the old sum is rescaled by exp(m_old - m_new), so at the end

    s_lane = sum over the lane's values of exp(x - m_lane)

without ever exponentiating a large number. The lanes are then combined the same way: with
m = max(m_lane), the row's sum is sum(s_lane * exp(m_lane - m)), and log-sum-exp = m + log(sum).
Masked values enter as -inf and contribute exp(-inf) = 0.
"""

import triton
import triton.language as tl


@triton.jit
def online_update(m_lane, s_lane, x):
    """(m_lane, s_lane) after the chunk x (fp32, masked entries -inf)."""
    m_new = tl.maximum(m_lane, x)
    # a lane that has seen only -inf keeps m = -inf; subtracting 0 there avoids -inf - (-inf) = NaN
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s_new = s_lane * tl.exp(m_lane - safe) + tl.exp(x - safe)
    return m_new, s_new


@triton.jit
def combine_lanes(m_lane, s_lane):
    """(m, s) of the whole row: its maximum and sum(exp(x - m)). The row must hold at least one
    finite value (every softmax row has a visible key; every vocabulary has a logit)."""
    m = tl.max(m_lane, axis=0)
    s = tl.sum(s_lane * tl.exp(m_lane - m), axis=0)
    return m, s
