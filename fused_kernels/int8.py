"""int8 weight-only quantization for generation on CPUs.

Batch-1 decoding reads every weight once per token, so its speed is the memory's: int8 weights are
a quarter of fp32's bytes. Each output row (channel) of a Linear weight W (out, in) gets its own
scale, the largest magnitude in the row over 127:

    scale[o] = max_i |W[o, i]| / 127,   Q[o, i] = round(W[o, i] / scale[o])  in [-127, 127]

so a weight is off by at most scale[o] / 2. The product y = x Q^T * scale runs in PyTorch's fused
int8-weight kernel (torch._weight_int8pack_mm: the int8 row is widened inside the kernel, never
written out in a wider type), which takes bf16 activations; the rest of the model runs in bf16.
Only the model in memory changes: the checkpoint on disk stays as trained.
"""

import torch
from torch import nn


def quantize_rows(weight):
    """(int8 weight, fp32 per-row scales) of a (out, in) weight: the nearest of 255 levels per row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    """A Linear layer (no bias) with int8 weights and per-row scales; bf16 in, bf16 out."""

    def __init__(self, linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("dtype=int8: Linear layers with a bias are not supported (train.py's "
                             "recipes have none); a checkpoint trained with bias=True runs in "
                             "float32 or bfloat16")
        q, scales = quantize_rows(linear.weight)
        self.register_buffer("weight", q.contiguous())  # the kernel reads rows, whatever the layout
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        return torch._weight_int8pack_mm(flat, self.weight, self.scales).view(*x.shape[:-1], -1)


def quantize(model):
    """model (in bf16) with every nn.Linear replaced by an Int8Linear, in place. A tied LM head gets
    its own int8 copy; the token embedding it was tied to stays a bf16 table."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model
