"""hardware.py's choices per GPU, with the GPU's answers faked: T4 and V100 (no native bf16, older
than Triton's supported targets), A100, H100 and H200; and what the kernels dispatch does with them."""
from types import SimpleNamespace

import pytest
import torch

from core import hardware
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


@pytest.fixture(params=[(14, True), (13, False)], ids=["macos14", "macos13"])
def apple_gpu(request, monkeypatch):
    """Pretend this machine has no CUDA and an Apple GPU, on macOS 14 or 13 (bf16 from 14)."""
    version, bf16 = request.param
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: version >= major)
    monkeypatch.setattr(fused_kernels, "HAVE_TRITON", True)
    return bf16


def test_auto_picks_mps_after_cuda_and_stays_in_pytorchs_kernels_and_float32(apple_gpu):
    mps = hardware.resolve_device("auto")
    assert mps == torch.device("mps") and hardware.resolve_device("mps") == mps
    dtype, reason = hardware.choose_dtype("auto", mps)
    assert dtype == torch.float32 and "Apple GPU" in reason
    backend, reason = hardware.choose_kernels("auto", mps, dtype)
    assert backend == "torch" and "CUDA GPUs" in reason
    assert hardware.describe_attention("sdpa", backend, mps) == \
        "sdpa (PyTorch's scaled_dot_product_attention, MPS kernel)"
    assert "not run on one" in hardware.describe_device(mps)
    assert "prototype" in hardware.describe_compile(True, mps)
    hardware.check_compile(True, dtype, mps)
    assert hardware.peak_flops(mps) == 0.0 and hardware.describe_gpu(mps) is None
    assert not fused_kernels.ampere_or_newer(mps)


def test_mps_refuses_what_it_cannot_run(apple_gpu):
    mps = torch.device("mps")
    with pytest.raises(ValueError, match="Triton kernels run on CUDA GPUs"):
        hardware.choose_kernels("triton", mps)
    with pytest.raises(ValueError, match="process groups"):
        hardware.check_ddp(mps, 2)
    hardware.check_ddp(mps, 1)
    with pytest.raises(ValueError, match="no float64"):
        hardware.check_weights_dtype(torch.float64, mps)
    assert hardware.choose_dtype("float16", mps) == (torch.float16, "float16 as asked (autocast on MPS)")
    if apple_gpu:  # macOS 14
        assert hardware.choose_dtype("bfloat16", mps)[0] == torch.bfloat16
        hardware.check_weights_dtype(torch.bfloat16, mps)
    else:
        with pytest.raises(ValueError, match="macOS 14"):
            hardware.choose_dtype("bfloat16", mps)
        with pytest.raises(ValueError, match="macOS 14"):
            hardware.check_weights_dtype(torch.bfloat16, mps)


def test_asking_for_mps_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no Apple GPU"):
        hardware.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == torch.device("cpu")


def test_more_ranks_on_a_machine_than_its_gpus_are_refused_by_name(monkeypatch):
    """torchrun --nproc_per_node=4 on a one-GPU machine: one clear line before any process group,
    not a CUDA error from the ranks that have no GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="4 processes on this machine but it has 1 CUDA GPU"):
        hardware.check_ddp(torch.device("cuda"), 4, 4)
    hardware.check_ddp(torch.device("cuda"), 8, 1)  # one rank here, seven elsewhere
    hardware.check_ddp(torch.device("cpu"), 4, 4)  # gloo: any number
