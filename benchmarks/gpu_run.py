"""benchmarks/gpu_run.py: the one-call GPU run: what a short GPU lease should produce, most valuable first.

    python prepare.py config/prepare_offline.py   # here: the largest offline corpus (data/offline)
    python prepare.py config/prepare_translation.py --tokenizer_from=data/offline/tokenizer.json \
        --dataset=translation_offline             # here: the translation task in that corpus's tokens
    python -m benchmarks.gpu_run --pack           # here: both, xz-compressed, in data/<name>.carry
    python -m benchmarks.gpu_run --out_dir "$OUT" # the device call, carrying the two .carry folders
    python -m benchmarks.gpu_run --rehearsal --data_root=D --out_dir=O   # the same stages on CPU, tiny shapes

Stages, each a subprocess with its own time limit. Every line they print goes at once into
out_dir/gpu_run.log, and out_dir/summary.json is rewritten after every stage, so a lease that ends
early still returns what finished:
  tests       the kernel and model tests on CUDA: the Triton kernels compiled by real Triton
  kernels     bench.py gpu --parts kernels: GB/s against PyTorch, the cross-entropy's memory
  train       train.py config/mini_lm.py on the carried corpus (bf16, compile and the Triton kernels
              where the GPU supports them; tokens/s and MFU in its log) for the minutes the budget
              leaves after the stages behind it
  eval        eval.py on that checkpoint: perplexity, bits per byte, baselines, generation task
  generation  bench.py gpu --parts generation: batch-1 tokens/s in fp32 and bf16
  finetune    train.py config/finetune_translation.py from that checkpoint for finetune_minutes
              (when the task was carried)
  task_eval   eval.py on the fine-tuned checkpoint: BLEU and chrF on Acts, both directions, beside
              the copy and retrieval baselines

The GPU machine lacks datasketch, rouge-score and flask. Nothing on this path imports them:
prepare.py runs here, and eval.py leaves ROUGE out (and says so) without rouge-score;
tests/test_gpu_run.py runs the rehearsal with those imports blocked.
"""

import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from training import atomic
from training import configurator

SPEC = {
    "out_dir": ("out/gpu_run/report", "logs, summary.json and the evaluation report (on the "
                                      "device: $OUT, which comes back)"),
    "checkpoint_dir": ("out/gpu_run", "where train.py writes its checkpoints (too large to return)"),
    "data_root": ("data", "parent folder of the dataset"),
    "dataset": ("offline", "prepared dataset to train on (see --pack)"),
    "task_dataset": ("translation_offline", "a fine-tuning task prepared in the dataset's tokens "
                                            "(see above), fine-tuned on after the stages before it "
                                            "when it was carried; empty: none"),
    "budget_minutes": (9.0, "the whole run; the training stage gets what the other stages leave"),
    "finetune_minutes": (1.0, "training time of the finetune stage"),
    "finetune_iters": (400, "max_iters and lr_decay_iters of the finetune stage"),
    "train_iters": (600, "max_iters and lr_decay_iters of the training stage: the schedule the "
                         "time budget should complete (lower it if the log shows it stopped early)"),
    "pack": (False, "compress data_root/dataset (and task_dataset, if prepared) into "
                    "data_root/<name>.carry and exit"),
    "rehearsal": (False, "run every stage on CPU with tiny shapes (checks the script itself)"),
}
# seconds each stage may take on the GPU; the training stage's share is computed from the rest
STAGE_LIMITS = {"tests": 150, "kernels": 90, "eval": 100, "generation": 40, "finetune": 90,
                "task_eval": 60}
COPIED = ("meta.json", "tokenizer.json")  # travel as they are; the bins and JSONL files compressed
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2",
        "--max_iters=6", "--lr_decay_iters=6", "--warmup_iters=1", "--eval_interval=3",
        "--eval_iters=1", "--compile=False", "--sample_tokens=4"]


def carried_files(folder):
    """The files of a prepared folder a device run needs: token bins, loss masks, a task's pairs."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".jsonl"))


def pack(folder):
    """folder's bins (and a task's masks and pairs) xz-compressed, what a device call can carry,
    with meta.json and the tokenizer."""
    carry = folder.with_name(folder.name + ".carry")
    tmp = folder.with_name(folder.name + ".carry.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in carried_files(folder):
        with open(folder / name, "rb") as src, lzma.open(tmp / f"{name}.xz", "wb", preset=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    for name in COPIED:
        shutil.copy(folder / name, tmp / name)
    shutil.rmtree(carry, ignore_errors=True)
    os.replace(tmp, carry)
    return carry


def unpack(folder):
    """Restore folder from folder.carry when its bins are missing (on the device)."""
    carry = folder.with_name(folder.name + ".carry")
    if (folder / "train.bin").exists() or not carry.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy(carry / name, folder / name)
    for packed in sorted(carry.glob("*.xz"), key=lambda f: f.name == "train.bin.xz"):  # it last:
        # a folder with train.bin is complete
        with lzma.open(packed, "rb") as src, atomic.replacing(folder / packed.stem, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def run_stage(name, command, limit, log, env):
    """Run command, copying each output line to log as it comes; kill its process group at the
    limit. Returns (status, seconds, last lines)."""
    print(f"\n=== {name}: {' '.join(command)} (limit {limit:.0f} s)", file=log, flush=True)
    t0 = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, errors="replace")
    timer = threading.Timer(limit, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    tail = []
    for line in proc.stdout:
        log.write(line)
        log.flush()
        tail = (tail + [line.rstrip()])[-12:]
    proc.wait()
    timed_out = not timer.is_alive()
    timer.cancel()
    seconds = time.time() - t0
    status = "timed out" if timed_out else ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
    print(f"=== {name}: {status} after {seconds:.0f} s", file=log, flush=True)
    return status, seconds, tail


def stage_commands(cfg, train_minutes, with_task):
    """{stage: command} in the order they run; with_task adds the fine-tune and its evaluation."""
    py, rehearsal = sys.executable, cfg["rehearsal"]
    ckpt_dir, out_dir = Path(cfg["checkpoint_dir"]), Path(cfg["out_dir"])
    quick = ["--quick"] if rehearsal else []
    tests = ["tests/test_kernels.py", "tests/test_model.py"]
    train = [py, "train.py", "config/mini_lm.py", f"--dataset={cfg['dataset']}",
             f"--data_root={cfg['data_root']}", f"--out_dir={ckpt_dir}",
             f"--max_minutes={train_minutes:.2f}", f"--max_iters={cfg['train_iters']}",
             f"--lr_decay_iters={cfg['train_iters']}", "--eval_interval=100", "--eval_iters=20",
             "--sample_interval=200", "--checkpoint_interval=0", "--tensorboard=False"]
    evaluate = [py, "eval.py", f"--ckpt={ckpt_dir / 'best.pt'}", f"--out_dir={out_dir / 'eval'}",
                "--ngram_train_tokens=5_000_000", "--tensorboard=False"]
    finetune = [py, "train.py", "config/finetune_translation.py", f"--init_from={ckpt_dir / 'best.pt'}",
                f"--dataset={cfg['task_dataset']}", f"--data_root={cfg['data_root']}",
                f"--out_dir={ckpt_dir / 'task'}", f"--max_minutes={cfg['finetune_minutes']:.2f}",
                f"--max_iters={cfg['finetune_iters']}", f"--lr_decay_iters={cfg['finetune_iters']}",
                "--eval_interval=100", "--checkpoint_interval=0", "--tensorboard=False"]
    task_eval = [py, "eval.py", f"--ckpt={ckpt_dir / 'task' / 'best.pt'}",
                 f"--out_dir={out_dir / 'task_eval'}", "--batch_size=128", "--tensorboard=False"]
    if rehearsal:  # the same commands, tiny
        tests += ["-k", "test_dispatch or test_cross_entropy_all_ignored or test_kv_cache_steps"]
        train += TINY + ["--device=cpu"]
        evaluate += ["--gen_documents=2", "--prompt_tokens=8", "--reference_tokens=4"]
        finetune += ["--max_iters=4", "--lr_decay_iters=4", "--warmup_iters=1", "--eval_interval=2",
                     "--eval_iters=1", "--batch_size=2", "--device=cpu"]
    stages = {"tests": [py, "-m", "pytest", "-q", *tests],
              "kernels": [py, "bench.py", "gpu", "--parts=kernels", *quick],
              "train": train, "eval": evaluate,
              "generation": [py, "bench.py", "gpu", "--parts=generation", *quick]}
    return {**stages, "finetune": finetune, "task_eval": task_eval} if with_task else stages


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="python -m benchmarks.gpu_run")
    folder = Path(cfg["data_root"]) / cfg["dataset"]
    if cfg["pack"]:
        if not (folder / "meta.json").exists():
            raise SystemExit(f"error: {folder} not found: run `{configurator.prepare_command(folder)}`")
        print(f"wrote {pack(folder)}")
        task = Path(cfg["data_root"]) / cfg["task_dataset"]
        if cfg["task_dataset"] and (task / "meta.json").exists():
            print(f"wrote {pack(task)}")
        elif cfg["task_dataset"]:
            print(f"note: {task} not prepared, so the run will not fine-tune: python prepare.py "
                  f"config/prepare_translation.py --tokenizer_from={folder}/tokenizer.json "
                  f"--dataset={cfg['task_dataset']}")
        return
    import torch
    if not cfg["rehearsal"] and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; --rehearsal runs the stages on CPU")
    task = Path(cfg["data_root"]) / cfg["task_dataset"]
    if cfg["task_dataset"]:
        unpack(task)
    with_task = bool(cfg["task_dataset"]) and (task / "train.bin").exists()
    unpack(folder)
    if not (folder / "train.bin").exists():
        raise SystemExit(f"error: {folder}/train.bin not found: run `python -m benchmarks.gpu_run --pack` where the "
                         f"data was prepared and carry {folder}.carry")
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cfg["rehearsal"]:
        env["TRITON_INTERPRET"] = "1"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (rehearsal)"
    summary = {"device": device, "torch": torch.__version__, "stages": {}}
    deadline = time.time() + 60 * cfg["budget_minutes"]
    with open(out_dir / "gpu_run.log", "a", encoding="utf-8") as log:
        stages = stage_commands(cfg, 0, with_task)
        names = list(stages)
        for name, command in stages.items():
            left = deadline - time.time()
            if name == "train":  # what the stages behind it leave, less compile and the last eval
                behind = sum(STAGE_LIMITS[s] for s in names[names.index("train") + 1:])
                minutes = max(0.5, (left - behind - 90) / 60)
                command = stage_commands(cfg, minutes, with_task)["train"]
                limit = 60 * minutes + 150
            else:
                limit = STAGE_LIMITS[name]
            if cfg["rehearsal"]:
                limit = 300
            elif left < 20:
                summary["stages"][name] = {"status": "skipped: budget spent"}
                continue
            status, seconds, tail = run_stage(name, command, min(limit, max(left, 20)), log, env)
            summary["stages"][name] = {"status": status, "seconds": round(seconds, 1), "tail": tail}
            atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    failed = [n for n, s in summary["stages"].items() if s["status"] != "ok"]
    print(f"gpu_run: {len(summary['stages']) - len(failed)} of {len(summary['stages'])} stages ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; see {out_dir}/gpu_run.log")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
