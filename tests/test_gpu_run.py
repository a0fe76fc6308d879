"""bench.py gpu_run, the one-command GPU run, rehearsed on CPU as a GPU machine runs it: the corpus
packed for copying and restored, every stage run through the same commands with tiny shapes, and
all of it in a Python where the packages a bare GPU machine lacks cannot be imported."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import prepare
from test_prepare import config as prepare_config
from test_prepare import make_corpus
from test_tasks import write_pairs
from core import configurator

ROOT = Path(__file__).resolve().parent.parent
# missing on a bare GPU machine with PyTorch, or not known to be there: gpu_run needs none of them
MISSING_ON_THE_GPU_MACHINE = ("datasketch", "rouge_score", "nltk", "absl", "flask", "waitress",
                              "profanity_check", "py3langid", "openai")


def test_rehearsal_without_the_packages_the_gpu_machine_lacks(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "corpus").mkdir()
    prepare.run(prepare_config(make_corpus(tmp_path / "corpus"), data, dataset="offline",
                               vocab_size=300))
    task = configurator.parse(prepare.SPEC, ["--task=pairs", f"--data_root={data}",
                                             "--dataset=translation_offline",
                                             f"--tokenizer_from={data / 'offline' / 'tokenizer.json'}"])
    task["task_files"] = {"train": [write_pairs(tmp_path / "train.jsonl", 40)],
                          "val": [write_pairs(tmp_path / "val.jsonl", 10, 100)],
                          "test": [write_pairs(tmp_path / "test.jsonl", 3, 200)]}
    prepare.run(task)
    packed_files = [("offline", "train.bin"), ("offline", "val.bin"),
               *[("translation_offline", name) for name in ("train.bin", "val.bin", "train.mask.bin",
                                                            "val.mask.bin", "train.jsonl", "test.jsonl")]]
    bins = {(folder, name): hashlib.sha256((data / folder / name).read_bytes()).hexdigest()
            for folder, name in packed_files}
    packed = subprocess.run([sys.executable, "bench.py", "gpu_run", "--pack", f"--data_root={data}"],
                            cwd=ROOT, capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    for folder, name in bins:  # the GPU machine has only the packed folders
        (data / folder / name).unlink()

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in MISSING_ON_THE_GPU_MACHINE:
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "bench.py", "gpu_run", "--rehearsal", f"--data_root={data}",
                             f"--out_dir={out}", f"--checkpoint_dir={tmp_path / 'ckpt'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    log = (out / "gpu_run.log").read_text() if (out / "gpu_run.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-5000:]

    assert {(folder, name): hashlib.sha256((data / folder / name).read_bytes()).hexdigest()
            for folder, name in bins} == bins  # unpacked, byte for byte
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["tests", "kernels", "train", "eval", "generation", "finetune",
                                       "task_eval"]
    assert all(stage["status"] == "ok" for stage in summary["stages"].values())
    assert "is not on the GPU machine" not in log
    assert "max_minutes" in log and "tokens/s" in log and "| LayerNorm |" in log
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert "rouge1, rouge2, rougeL" in report["generation"]["not_computed"]  # blocked, and said so
    assert report["likelihood"]["overall"]["perplexity"] > 1
    task_report = json.loads((out / "task_eval" / "eval.json").read_text())
    assert task_report["task"]["all"]["pairs"] == 3 and "retrieval" in task_report["task"]["all"]
    figures = {name: stage["figures"] for name, stage in summary["stages"].items()}
    assert figures["eval"]["perplexity"] == report["likelihood"]["overall"]["perplexity"]
    assert figures["task_eval"] == task_report["task"]
    assert figures["train"]["last_eval"]["iter"] == 6 and figures["train"]["last_step"]["tokens_per_s"] > 0
    assert figures["finetune"]["last_eval"]["iter"] == 4
    assert any("| LayerNorm |" in row for row in figures["kernels"]), figures["kernels"]
    assert "passed" in figures["tests"][0] and "failed" not in figures["tests"][0]
    tuned = task_report["training"]
    assert tuned["config"]["init_from"].endswith("best.pt") and tuned["iter_num"] == 4
