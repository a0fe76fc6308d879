"""hardware.py's choices per GPU, with the GPU's answers faked: T4 and V100 (no native bf16, older
than Triton's supported targets), A100, H100 and H200; and what the kernels dispatch does with them."""
from types import SimpleNamespace

import pytest
import torch

from training import hardware
import fused_kernels
from model import GPT, GPT2_RECIPE, GPTConfig

GPUS = {  # name, compute capability
    "T4": ("Tesla T4", 7, 5),
    "V100": ("Tesla V100-SXM2-16GB", 7, 0),
    "A100": ("NVIDIA A100-SXM4-40GB", 8, 0),
    "H100": ("NVIDIA H100 80GB HBM3", 9, 0),
    "H200": ("NVIDIA H200", 9, 0),
}
CUDA = torch.device("cuda", 0)


@pytest.fixture(params=list(GPUS))
def gpu(request, monkeypatch):
    """Pretend CUDA device 0 is this GPU. is_bf16_supported says True on all of them, as torch does
    through emulation, so nothing may rely on it."""
    name, major, minor = GPUS[request.param]
    props = SimpleNamespace(name=name, major=major, minor=minor)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(fused_kernels, "HAVE_TRITON", True)
    return request.param


def test_auto_dtype_is_native_bf16_or_fp16_with_a_scaler(gpu):
    dtype, reason = hardware.choose_dtype("auto", CUDA)
    if gpu in ("T4", "V100"):
        assert dtype == torch.float16 and "gradient scaler" in reason and "no native bf16" in reason
    else:
        assert dtype == torch.bfloat16 and "native bf16" in reason
    assert GPUS[gpu][0] in reason


def test_auto_kernels_and_attention_follow_compute_capability(gpu):
    backend, reason = hardware.choose_kernels("auto", CUDA)
    attention = hardware.describe_attention("sdpa", backend, CUDA)
    old = gpu in ("T4", "V100")
    assert backend == ("torch" if old else "triton")
    assert ("8.0 and newer" in reason) == old
    assert ("memory-efficient" in attention) == old and ("flash attention on" in attention) != old
    assert fused_kernels.ampere_or_newer(CUDA) != old


def test_old_gpus_refuse_what_their_compilers_reject(gpu):
    old = gpu in ("T4", "V100")
    for call in (lambda: hardware.choose_kernels("triton", CUDA, torch.bfloat16),
                 lambda: hardware.check_compile(True, torch.bfloat16, CUDA)):
        if old:
            with pytest.raises(ValueError, match="compute capability 8.0"):
                call()
        else:
            call()
    # the T4/V100 path itself is allowed: fp16, compile, PyTorch's kernels
    dtype, _ = hardware.choose_dtype("auto", CUDA)
    hardware.check_compile(True, dtype, CUDA)
    assert hardware.choose_kernels("torch", CUDA, dtype)[0] == "torch"


def test_peak_flops_and_explicit_choices(gpu):
    assert hardware.peak_flops(CUDA) == hardware.PEAK_FLOPS[gpu]
    assert hardware.peak_flops(CUDA, 1e12) == 1e12
    assert hardware.choose_dtype("float32", CUDA)[0] == torch.float32
    dtype, reason = hardware.choose_dtype("bfloat16", CUDA)
    assert dtype == torch.bfloat16 and ("emulated" in reason) == (gpu in ("T4", "V100"))


def test_cpu_choices():
    cpu = torch.device("cpu")
    assert hardware.choose_dtype("auto", cpu)[0] == torch.float32
    assert hardware.choose_kernels("auto", cpu)[0] == "torch"
    assert hardware.peak_flops(cpu) == 0.0 and not fused_kernels.ampere_or_newer(cpu)
    assert hardware.resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="dtype='float8' must be"):
        hardware.choose_dtype("float8", cpu)
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        hardware.resolve_device("gpu")


def test_use_kernels_sets_every_module_and_keeps_the_config():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50,
                          attention="triton", **GPT2_RECIPE))
    model.use_kernels("torch")
    backends = {m.backend for m in model.modules() if hasattr(m, "backend")}
    assert backends == {"torch"} and model.config.kernels == "auto"
    # 2 LayerNorms per block + the final one, the attention's softmax, and the loss
    assert sum(hasattr(m, "backend") for m in model.modules()) == 5
