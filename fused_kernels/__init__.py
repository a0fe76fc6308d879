"""Custom Triton kernels and the switch that picks them.

Each kernel file holds the Triton kernel(s), a launcher, and its registration as a torch custom op
with a fake (shape) implementation and an autograd formula, so torch.compile treats it as one opaque,
differentiable node instead of breaking the graph.

The functions below are what model.py calls. backend="auto" uses Triton for CUDA tensors on GPUs of
compute capability 8.0 or newer (Triton's supported targets) and PyTorch for everything else;
"triton" forces the kernels (on CPU that needs TRITON_INTERPRET=1 in the environment before this
package is imported: the tests do that); "torch" forces PyTorch. Which keys a query may see, padding
rows included, is one rule for every path: attention_mask() below.
"""

import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "torch")

try:
    import triton  # noqa: F401

    from fused_kernels import crossentropy as _cross_entropy
    from fused_kernels import layernorm as _layernorm
    from fused_kernels import softmax as _softmax
    HAVE_TRITON = True
except ImportError:  # macOS, Windows: PyTorch everywhere
    HAVE_TRITON = False

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def ampere_or_newer(device):
    """True on CUDA GPUs of compute capability 8.0 or newer. get_device_properties is constant-folded
    by torch.compile, so this costs nothing inside a compiled model."""
    return device.type == "cuda" and torch.cuda.get_device_properties(device).major >= 8


def use_triton(x, backend):
    if backend == "torch":
        return False
    if backend == "auto":
        return HAVE_TRITON and x.is_cuda and ampere_or_newer(x.device)
    if backend != "triton":
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if not HAVE_TRITON:
        raise RuntimeError("kernels='triton' needs the triton package (Linux): pip install triton")
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError("kernels='triton' on CPU runs only in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before starting Python (slow; meant for tests)")
    return True


# ------------------------------------------------------------------------------ PyTorch references

def _at_least_fp32(x):
    """bf16/fp16 are upcast like the kernels do; fp64 stays fp64 (tests compare in fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def layer_norm_torch(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def attention_mask(tq, tk, pad_lengths, device):
    """Which keys each query may see, as a boolean (B or 1, 1, Tq, Tk) mask: the one rule for every
    attention path (sdpa and eager in model.py, causal_softmax_torch here, and the Triton kernel's
    _visible, which applies it without building the mask).

    The Tq queries are the last Tq of the Tk positions (a KV cache holds the first Tk - Tq), so
    query i sits at position p = Tk - Tq + i. It sees key j when j <= p (causal) and j is not left
    padding (j >= pad_lengths[b]), except that a padding query sees itself: every row then has a
    visible key, so no softmax is taken over nothing (NaN). What padding rows compute is never read.
    """
    q_pos = torch.arange(tk - tq, tk, device=device)[:, None]
    k_pos = torch.arange(tk, device=device)[None, :]
    mask = k_pos <= q_pos
    if pad_lengths is not None:
        mask = mask & ((k_pos >= pad_lengths.view(-1, 1, 1)) | (k_pos == q_pos))
        return mask[:, None]
    return mask[None, None]


def causal_softmax_torch(scores, scale, pad_lengths=None):
    """softmax(scale * scores) over the last dim of (B, H, Tq, Tk) scores, keys masked by
    attention_mask(); pad_lengths: (B,) left-padding positions per sequence, or None."""
    tq, tk = scores.shape[-2:]
    allowed = attention_mask(tq, tk, pad_lengths, scores.device)
    logits = (_at_least_fp32(scores) * scale).masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1).to(scores.dtype)


def cross_entropy_torch(logits, targets, ignore_index=-100):
    return F.cross_entropy(_at_least_fp32(logits), targets, ignore_index=ignore_index)


# --------------------------------------------------------------------------------------- dispatch

def layer_norm(x, weight, bias, eps=1e-5, backend="auto"):
    if use_triton(x, backend):
        return _layernorm.layer_norm(x, weight, bias, eps)
    return layer_norm_torch(x, weight, bias, eps)


def causal_softmax(scores, scale, pad_lengths=None, backend="auto"):
    if use_triton(scores, backend):
        return _softmax.causal_softmax(scores, scale, pad_lengths)
    return causal_softmax_torch(scores, scale, pad_lengths)


def cross_entropy(logits, targets, ignore_index=-100, backend="auto"):
    """Mean token cross-entropy of (N, V) logits against (N,) targets, skipping ignore_index."""
    if use_triton(logits, backend):
        return _cross_entropy.cross_entropy(logits, targets, ignore_index)
    return cross_entropy_torch(logits, targets, ignore_index)
