"""A checkpoint loaded for generation and scoring, as sample.py, serve.py and eval.py use it, and the
options the three share to choose how (OPTIONS: the checkpoint's device, weights' dtype, compile).
"""

import torch

from core import checkpoint, hardware
from fused_kernels import int8

# weights for generation and scoring: the training precisions, and float64 (exact comparisons in tests)
INFERENCE_DTYPES = {**hardware.DTYPES, "float64": torch.float64}

# The options every inference script takes, in configurator's form {key: (default, help)}; each
# script adds its own "ckpt" (its default and meaning differ).
OPTIONS = {
    "device": ("auto", "'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps' ..."),
    "dtype": ("float32", "weights: 'float32', 'bfloat16' (half the bytes), 'float16', 'float64' "
                         "(exact, for tests) or 'int8' (CPUs: int8 Linear weights, bf16 activations; "
                         "faster, not exact)"),
    "compile": (False, "torch.compile the decoding: on a GPU the forward pass, on a CPU the decoding "
                       "step with Inductor's inference settings (tens of seconds of compilation first, "
                       "which long generations repay)"),
}


def load_for_inference(path, device="auto", dtype="float32", compile=False):
    """(model, tokenizer, checkpoint) as sample.py, serve.py and eval.py use them: on the device
    ('auto': CUDA if present, else MPS, else CPU), weights in dtype (a name in INFERENCE_DTYPES, or
    'int8': bf16 with int8 Linear weights, on CPUs; fused_kernels/int8.py), Linear weights laid out
    for batch-1 decoding, and with compile: on a GPU the forward compiled (prefill and decoding),
    on a CPU the decoding step (model.decode_step) compiled for inference (CPU_DECODE_COMPILE),
    prefill eager. What this device cannot run is refused before any work."""
    if dtype not in INFERENCE_DTYPES and dtype != "int8":
        raise ValueError(f"dtype={dtype!r} must be one of {list(INFERENCE_DTYPES) + ['int8']}")
    device = hardware.resolve_device(device)
    torch_dtype = torch.bfloat16 if dtype == "int8" else INFERENCE_DTYPES[dtype]
    if dtype == "int8" and device.type != "cpu":
        raise ValueError(f"dtype=int8 runs on CPUs (PyTorch's int8-weight kernel), not {device}: "
                         "use bfloat16 on a GPU")
    model, tokenizer, ckpt = checkpoint.load_model(path, device)
    hardware.choose_kernels(model.config.kernels, device, torch_dtype)  # refuses what the GPU can't run
    hardware.check_weights_dtype(torch_dtype, device)
    hardware.check_compile(compile, torch_dtype, device)
    model = model.to(torch_dtype).optimize_for_decoding()
    if dtype == "int8":
        model = int8.quantize(model)
    # dynamic=True: the KV cache grows one token per step (and a server's batch changes size),
    # and each size would otherwise be compiled anew
    if compile and device.type == "cpu":
        model.decode_step = compile_for_cpu_decoding(model.decode_step)
    elif compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model, tokenizer, ckpt


# Inductor's settings for CPU decoding, where each step reads every weight once for a few rows of
# activations (BENCHMARKS.md, "Generation"): the weights frozen into the compiled code as constants
# (inference only; a second, repacked copy of them), and each product chosen by timing Inductor's
# C++ micro-kernel templates against PyTorch's (max-autotune; the compile takes tens of seconds).
CPU_DECODE_COMPILE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def compile_for_cpu_decoding(decode_step):
    """decode_step compiled with CPU_DECODE_COMPILE. The settings are applied around each call
    (compilation happens inside the first call, or any later one that recompiles) rather than
    through torch.compile's options, which did not turn freezing on, and rather than globally,
    which would change a later training compile in the same process. (Dropping dynamo's guards on
    the modules saves a little per step but let a second model reuse the first one's frozen
    weights: tests/test_decoding.py.)"""
    compiled = torch.compile(decode_step, dynamic=True)

    def step(tokens, cache, pad_lengths=None):
        with torch._inductor.config.patch(CPU_DECODE_COMPILE):
            return compiled(tokens, cache, pad_lengths)
    return step
