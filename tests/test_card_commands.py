"""The user's four commands, spelled exactly as on the project card, run as processes from a project
folder that has tiny mini_lm data (only size overrides follow each command):

    python train.py config/mini_lm.py
    torchrun --nproc_per_node=4 train.py
    python eval.py --ckpt out/best.pt
    python serve.py
"""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from core import checkpoint, hardware
import prepare
from conftest import free_port
from test_prepare import config as prepare_config
from test_prepare import make_corpus
from test_serve import LiveServer

ROOT = Path(__file__).resolve().parent.parent
# A tiny model and a short run; compile off because compiling on a 2-core CPU takes longer than
# the whole test (tests/test_model.py covers compile). Space-separated, as a user types them.
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size",
        "2", "--max_iters", "6", "--lr_decay_iters", "6", "--warmup_iters", "1", "--eval_interval",
        "3", "--eval_iters", "1", "--sample_interval", "0", "--compile", "False", "--tensorboard",
        "False"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder laid out like a checkout (scripts linked, not copied) with data/mini_lm."""
    folder = tmp_path_factory.mktemp("project")
    for path in ROOT.iterdir():
        if path.suffix == ".py" or path.name == "config" or (path / "__init__.py").exists():
            (folder / path.name).symlink_to(path)
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    prepare.run(prepare_config(corpus, folder / "data", dataset="mini_lm", vocab_size=300))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PET_MASTER_PORT"] = str(free_port())  # torchrun's rendezvous port (its default, 29500, may be taken)
    return folder, env


def run(project, *command, attempts=3):
    """The command's output; a torchrun whose rendezvous port was taken after it was picked is
    run again on a fresh port."""
    folder, env = project
    for _ in range(attempts):
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                                timeout=280)
        if result.returncode == 0 or "ddress already in use" not in result.stdout + result.stderr:
            break
        env["PET_MASTER_PORT"] = str(free_port())
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def expected_choices():
    """The precision and kernel lines train.py must log on this machine's default device."""
    if not torch.cuda.is_available():
        return "precision: float32", "kernels: PyTorch's"
    if torch.cuda.get_device_capability()[0] >= 8:
        return "precision: bfloat16 autocast", "kernels: Triton's fused kernels"
    return "precision: float16 autocast", "kernels: PyTorch's"


@pytest.mark.parametrize("name, capability", [("NVIDIA H100 80GB HBM3", (9, 0)),
                                              ("Tesla T4", (7, 5))])
def test_the_expected_lines_follow_the_device(monkeypatch, name, capability):
    """On a (faked) GPU, expected_choices() names what core/hardware.py decides there, so the
    card test expects a GPU's precision and kernels when it runs on one."""
    props = type("Props", (), {"name": name, "major": capability[0], "minor": capability[1]})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *args: props)
    device = torch.device("cuda")
    precision, kernels = expected_choices()
    assert f"precision: {hardware.choose_dtype('auto', device)[1]}".startswith(precision)
    assert f"kernels: {hardware.choose_kernels('auto', device)[1]}".startswith(kernels)


def test_the_card_commands_as_written(project):
    folder, env = project
    log = run(project, "python", "train.py", "config/mini_lm.py", *TINY)
    assert all(line in log for line in expected_choices()) and "attention: sdpa" in log
    single = checkpoint.load(folder / "out" / "best.pt")
    assert single["config"]["dataset"] == "mini_lm" and single["config"]["gradient_accumulation_steps"] == 8

    # four ranks: on four GPUs as written, on CPUs (gloo) where the machine has fewer GPUs
    fewer_gpus = ["--device", "cpu"] if 0 < torch.cuda.device_count() < 4 else []
    run(project, "torchrun", "--nproc_per_node=4", "train.py", *TINY, *fewer_gpus, "--out_dir", "out_ddp")
    ddp = checkpoint.load(folder / "out_ddp" / "last.pt")
    last = checkpoint.load(folder / "out" / "last.pt")
    assert len(ddp["rng"]) == 4 and ddp["iter_num"] == last["iter_num"] == 6
    assert ddp["tokens_seen"] == last["tokens_seen"] == 6 * 8 * 2 * 32  # same tokens per step

    run(project, "python", "eval.py", "--ckpt", "out/best.pt", "--gen_documents", "2",
        "--prompt_tokens", "8", "--reference_tokens", "4", "--tensorboard", "False")
    report = json.loads((folder / "out" / "eval" / "eval.json").read_text())
    assert report["likelihood"]["overall"]["tokens"] > 0
    assert (folder / "out" / "eval" / "report.md").exists()

    server = LiveServer(folder / "serve.log", cwd=folder, command=("python", "serve.py"), env=env)
    try:
        with urllib.request.urlopen(server.url + "/v1/models") as r:
            assert json.loads(r.read())["data"][0]["id"] == "mini-lm"
        request = urllib.request.Request(
            server.url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"prompt": "The", "max_tokens": 4, "temperature": 0}).encode())
        with urllib.request.urlopen(request) as r:
            assert json.loads(r.read())["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        server.stop()
