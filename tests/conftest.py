import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Without a GPU the Triton kernels run in Triton's interpreter. It must be switched on before the
# module defining the kernels is imported; on a GPU machine the kernels run compiled on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import contextlib  # noqa: E402  (after TRITON_INTERPRET: fused_kernels reads it when imported)
import socket  # noqa: E402

import pytest  # noqa: E402

import fused_kernels  # noqa: E402
import prepare  # noqa: E402
from test_prepare import config as prepare_config  # noqa: E402
from test_prepare import make_corpus  # noqa: E402
from test_train import run  # noqa: E402

def free_port():
    """A port on 127.0.0.1 that was free a moment ago (another process may take it before it is
    used: servers started on it are retried on a fresh one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = ("_softmax.causal_softmax", "_layernorm.layer_norm", "_cross_entropy.cross_entropy")


def recording(launcher, path, calls):
    """launcher, appending path to calls at each call."""
    def launch(*args, **kwargs):
        calls.append(path)
        return launcher(*args, **kwargs)
    return launch


@contextlib.contextmanager
def triton_launches():
    """A list that gets the name of each Triton kernel launcher (fused_kernels' softmax, LayerNorm
    and cross-entropy) called while the block runs."""
    calls, originals = [], {}
    if fused_kernels.HAVE_TRITON:
        for path in LAUNCHERS:
            module_name, name = path.split(".")
            module = getattr(fused_kernels, module_name)
            originals[module, name] = getattr(module, name)
            setattr(module, name, recording(originals[module, name], path, calls))
    try:
        yield calls
    finally:
        for (module, name), launcher in originals.items():
            setattr(module, name, launcher)


@pytest.fixture(autouse=True)
def triton_cases_launch_triton(request):
    """A test case parametrized with the value "triton" must launch a Triton kernel (compiled on a
    GPU, in the interpreter on CPU), never pass on PyTorch's path unnoticed."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or "triton" not in callspec.params.values():
        yield
        return
    with triton_launches() as calls:
        yield
    assert calls, f"{request.node.name}: a 'triton' case that launched no Triton kernel"


# Under CI=true a skipped test fails the run: every test's feature is required there (make test
# installs what the tests need), so a missing browser or package must not pass as a skip.
skipped = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        skipped.append(report.nodeid)


def pytest_collectreport(report):
    if report.skipped:
        skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() == "true" and skipped:
        print(f"\nCI=true: {len(skipped)} skipped, which fails the run here: {', '.join(skipped[:20])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------- made once per run, read by many test files

@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A folder holding tiny/: prepare.py's output (vocabulary 300) on a small code and prose
    corpus. Tests add folders of their own beside tiny/, and change nothing in it."""
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    root = tmp_path_factory.mktemp("data")
    prepare.run(prepare_config(corpus, root, dataset="tiny", vocab_size=300))
    return root


@pytest.fixture(scope="session")
def ckpt(data_root, tmp_path_factory):
    """last.pt of train.py's default recipe after 30 steps on data_root (read only)."""
    out = tmp_path_factory.mktemp("ckpt_30_steps")
    run(data_root, out, "--max_iters=30")
    return out / "last.pt"
