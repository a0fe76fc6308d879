"""What runs where: the device, the training precision, the kernels and the attention, each chosen
once from what the GPU reports, with the reason for the log. train.py, eval.py and serve.py use it.

The dividing line is compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx; Hopper: H100, H200):
from there a GPU has native bf16, Triton's supported targets start, and PyTorch's flash attention
runs. Below it (T4 is 7.5, V100 is 7.0) bf16 is emulated and slow, Triton is best effort and its
compiler rejects bf16, so training there uses fp16 with a gradient scaler and PyTorch's kernels.
Everything reads the card through torch.cuda.get_device_properties (the tests fake its answers).

Apple's GPUs (MPS) come after CUDA and before the CPU. There the Triton kernels do not run (they
are CUDA-only), attention is PyTorch's sdpa, and training stays in float32 unless asked otherwise:
bf16 needs macOS 14, and autocast on MPS is newer and less proven than on CUDA. These choices
follow PyTorch's documentation; the project has not run on a Mac (the tests fake the backend).
"""

import resource

import torch

import fused_kernels

# Dense bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' data sheets, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "V100": 125e12, "T4": 65e12}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name):
    """'auto' is cuda when a GPU is visible, else mps on an Apple GPU, else cpu; anything else as
    torch.device reads it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' "
                         "or 'mps'") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but this PyTorch sees no Apple GPU (MPS needs macOS 12.3+ "
                         "on Apple silicon or an AMD GPU): use 'auto' or 'cpu'")
    return device


def describe_gpu(device):
    """'NVIDIA H200 (compute capability 9.0)', or None on a CPU or an Apple GPU."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} (compute capability {props.major}.{props.minor})"


def choose_dtype(name, device):
    """(torch dtype, reason) for autocast in training. 'auto': bf16 on GPUs that have it natively,
    fp16 with a gradient scaler on older GPUs (torch.cuda.is_bf16_supported() says True there too,
    through emulation), fp32 on CPUs."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"dtype={name!r} must be 'auto' or one of {list(DTYPES)}")
    gpu = describe_gpu(device)
    if name != "auto":
        dtype = DTYPES[name]
        if dtype == torch.bfloat16 and gpu and not fused_kernels.ampere_or_newer(device):
            return dtype, f"bfloat16 as asked; {gpu} has no native bf16 (emulated, slow)"
        if (dtype == torch.bfloat16 and device.type == "mps"
                and not torch.backends.mps.is_macos_or_newer(14, 0)):
            raise ValueError("dtype=bfloat16 on MPS needs macOS 14 or newer: use dtype=auto "
                             "(float32) or float16")
        return dtype, f"{name} as asked" + (" (autocast on MPS)" if device.type == "mps" else "")
    if device.type == "mps":
        return torch.float32, ("float32 on the Apple GPU: autocast on MPS is not the default "
                               "here (dtype=bfloat16 on macOS 14+, or float16, to try it)")
    if gpu is None:
        return torch.float32, "float32: CPU autocast gains nothing for training here"
    if fused_kernels.ampere_or_newer(device):  # native bf16 from compute capability 8.0
        return torch.bfloat16, f"bfloat16 autocast: {gpu} has native bf16"
    return torch.float16, (f"float16 autocast with a gradient scaler: {gpu} has no native bf16 "
                           "(it needs compute capability 8.0)")


def choose_kernels(name, device, dtype=None):
    """('triton' or 'torch', reason) for the LayerNorm, softmax and cross-entropy kernels."""
    if name not in fused_kernels.BACKENDS:
        raise ValueError(f"kernels={name!r} must be one of {fused_kernels.BACKENDS}")
    gpu = describe_gpu(device)
    if name == "torch":
        return "torch", "PyTorch's, as asked"
    if name == "triton":
        if device.type == "mps":
            raise ValueError("kernels='triton' on MPS: the Triton kernels run on CUDA GPUs; use "
                             "kernels=auto (PyTorch's there)")
        if gpu and dtype == torch.bfloat16 and not fused_kernels.ampere_or_newer(device):
            raise ValueError(f"kernels='triton' with bfloat16 on {gpu}: Triton's compiler rejects "
                             "bf16 below compute capability 8.0; use dtype=float16 or kernels=auto")
        if gpu and not fused_kernels.ampere_or_newer(device):
            return "triton", f"Triton's, as asked (best effort on {gpu}: Triton supports 8.0+)"
        return "triton", "Triton's, as asked"
    if gpu is None:
        return "torch", "PyTorch's: the Triton kernels run on CUDA GPUs"  # CPU and MPS
    if not fused_kernels.HAVE_TRITON:
        return "torch", "PyTorch's: the triton package is not installed"
    if fused_kernels.ampere_or_newer(device):
        return "triton", f"Triton's fused kernels on {gpu}"
    return "torch", f"PyTorch's: Triton supports compute capability 8.0 and newer, {gpu} is older"


def describe_attention(attention, kernel_backend, device):
    """One line on which attention runs, for the log."""
    gpu = describe_gpu(device)
    if attention == "sdpa":
        if device.type == "mps":
            return "sdpa (PyTorch's scaled_dot_product_attention, MPS kernel)"
        if gpu is None:
            return "sdpa (PyTorch's scaled_dot_product_attention, CPU kernel)"
        if fused_kernels.ampere_or_newer(device):
            return f"sdpa (PyTorch's flash attention on {gpu})"
        return (f"sdpa (PyTorch's memory-efficient kernel: flash attention needs compute capability "
                f"8.0, {gpu} is older)")
    if attention == "triton":
        where = "the Triton" if kernel_backend == "triton" else "PyTorch's"
        return f"explicit scores through {where} causal softmax (kernels={kernel_backend})"
    return "eager (plain PyTorch, the reference)"


def check_weights_dtype(dtype, device):
    """Inference weights in dtype: refuse what MPS lacks (float64; bfloat16 before macOS 14)."""
    if device.type != "mps":
        return
    if dtype == torch.float64:
        raise ValueError("dtype=float64 on MPS: Apple GPUs have no float64; use float32")
    if dtype == torch.bfloat16 and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise ValueError("dtype=bfloat16 on MPS needs macOS 14 or newer: use float32 or float16")


def check_compile(compile_, dtype, device):
    """torch.compile generates Triton code on GPUs: refuse the combination its compiler rejects."""
    gpu = describe_gpu(device)
    if compile_ and gpu and dtype == torch.bfloat16 and not fused_kernels.ampere_or_newer(device):
        raise ValueError(f"compile=True with bfloat16 on {gpu}: the Triton code torch.compile "
                         "generates cannot use bf16 below compute capability 8.0; use dtype=auto "
                         "(float16 there) or compile=False")


def describe_device(device):
    """The device line of a run's log: the GPU's name and compute capability, or what MPS is."""
    if device.type == "cuda":
        return f"{device}, {describe_gpu(device)}"
    if device.type == "mps":
        return "mps (an Apple GPU through Metal; the project has not run on one: choices below " \
               "follow PyTorch's documentation)"
    return str(device)


def describe_compile(compile_, device):
    if not compile_:
        return "off (eager)"
    return "torch.compile" + (" (its MPS backend is a prototype in PyTorch: compile=False if it "
                              "fails)" if device.type == "mps" else "")


def check_ddp(device, world, local_world=1):
    """Several processes train together through nccl (CUDA), one GPU each, or gloo (CPU); neither
    takes MPS tensors. local_world: the processes on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    if device.type == "mps" and world > 1:
        raise ValueError(f"{world} processes on MPS: PyTorch's process groups (nccl, gloo) do not "
                         "take MPS tensors; train in one process on an Apple GPU")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and local_world > gpus:
        raise ValueError(f"{local_world} processes on this machine but it has {gpus} CUDA GPU(s), "
                         f"one per process: torchrun --nproc_per_node={gpus}, or --device=cpu")


def synchronize(device):
    """Wait for the device's queued work (so a step's time is the step's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_gb(device):
    """The most memory the run has held: CUDA's allocator peak, Metal's allocation on MPS, the
    process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def peak_flops(device, override=0.0):
    """Peak dense FLOP/s of the GPU for MFU: override if given, else the known card's, else 0."""
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_properties(device).name
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)
