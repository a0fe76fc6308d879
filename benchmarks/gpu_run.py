"""bench.py gpu_run: the project on a GPU machine in one command, within a time budget you choose.

    python prepare.py config/prepare_offline.py      # the largest offline corpus (data/offline)
    python prepare.py config/prepare_translation.py --tokenizer_from=data/offline/tokenizer.json \
        --dataset=translation_offline                # the translation task in that corpus's tokens
    python bench.py gpu_run --budget_minutes=30      # on the GPU machine: every stage below

The data can be prepared on another machine: `python bench.py gpu_run --pack` writes each prepared
folder's bins xz-compressed to data/<name>.packed (a fraction of their size); copy those folders to
the GPU machine's data/ and gpu_run unpacks them before it starts, with no network needed.

The stages, each a subprocess with its own time limit, the most valuable first:
  tests       the kernel and model tests on the GPU: the Triton kernels compiled by real Triton
  kernels     bench.py gpu --parts kernels: each kernel's GB/s against PyTorch, the loss's memory
  train       train.py config/mini_lm.py on the prepared corpus (bf16, compile and the Triton
              kernels where the GPU supports them) for the minutes the budget leaves after the
              stages behind it
  eval        eval.py on that checkpoint: perplexity, bits per byte, baselines, generation task
  generation  bench.py gpu --parts generation: batch-1 tokens/s in fp32 and bf16
  finetune    train.py config/finetune_translation.py from that checkpoint for finetune_minutes
              (when the task is prepared)
  task_eval   eval.py on the fine-tuned checkpoint: BLEU and chrF on Acts, both directions, beside
              the copy and retrieval baselines

Every line the stages print goes at once to out_dir/gpu_run.log, and out_dir/summary.json is
rewritten after each stage with its status, time and figures (the test counts; the Markdown rows
the benchmarks print; training's last evaluation and speed from log.jsonl; eval.py's perplexity,
bits per byte, BLEU and chrF from eval.json), so a run stopped early keeps what finished.

Only the packages that a bare CUDA machine with PyTorch is likely to have are needed on this path:
eval.py leaves ROUGE out (and says so) without rouge-score, and nothing here imports datasketch,
flask or the filters' models (tests/test_gpu_run.py rehearses it on CPU with them blocked).
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

import torch

from core import atomic, configurator

SPEC = {
    "out_dir": ("out/gpu_run/report", "gpu_run.log, summary.json and the evaluation reports"),
    "checkpoint_dir": ("out/gpu_run", "where train.py writes its checkpoints"),
    "data_root": ("data", "parent folder of the dataset"),
    "dataset": ("offline", "prepared dataset to train on"),
    "task_dataset": ("translation_offline", "a fine-tuning task prepared in the dataset's tokens "
                                            "(see above), fine-tuned on when it is prepared; empty: none"),
    "budget_minutes": (9.0, "the whole run; the training stage gets what the other stages leave"),
    "finetune_minutes": (1.0, "training time of the finetune stage"),
    "finetune_iters": (400, "max_iters and lr_decay_iters of the finetune stage"),
    "train_iters": (600, "max_iters and lr_decay_iters of the training stage: the schedule the "
                         "time budget should complete (lower it if the log shows it stopped early)"),
    "pack": (False, "compress data_root/dataset (and task_dataset, if prepared) into "
                    "data_root/<name>.packed, for copying to a GPU machine, and exit"),
    "rehearsal": (False, "run every stage on CPU with tiny shapes (checks the script itself)"),
}
# seconds each stage may take on the GPU; the training stage's share is computed from the rest
STAGE_LIMITS = {"tests": 150, "kernels": 90, "eval": 100, "generation": 40, "finetune": 90,
                "task_eval": 60}
COPIED = ("meta.json", "tokenizer.json")  # packed as they are; the bins and JSONL files compressed
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2",
        "--max_iters=6", "--lr_decay_iters=6", "--warmup_iters=1", "--eval_interval=3",
        "--eval_iters=1", "--compile=False", "--sample_tokens=4", "--log_interval=2"]


def packed_files(folder):
    """The files of a prepared folder that the run needs: token bins, loss masks, a task's pairs."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".jsonl"))


def pack(folder):
    """folder's bins (and a task's masks and pairs) xz-compressed into folder.packed, with meta.json
    and the tokenizer as they are."""
    packed = folder.with_name(folder.name + ".packed")
    tmp = folder.with_name(folder.name + ".packed.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in packed_files(folder):
        with open(folder / name, "rb") as src, lzma.open(tmp / f"{name}.xz", "wb", preset=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    for name in COPIED:
        shutil.copy(folder / name, tmp / name)
    shutil.rmtree(packed, ignore_errors=True)
    os.replace(tmp, packed)
    return packed


def unpack(folder):
    """Restore folder from folder.packed when its bins are missing (copied from another machine)."""
    packed = folder.with_name(folder.name + ".packed")
    if (folder / "train.bin").exists() or not packed.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy(packed / name, folder / name)
    for part in sorted(packed.glob("*.xz"), key=lambda f: f.name == "train.bin.xz"):  # it last:
        # a folder with train.bin is complete
        with lzma.open(part, "rb") as src, atomic.replacing(folder / part.stem, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def run_stage(name, command, limit, log, env):
    """Run command, copying each output line to log as it comes; kill its process group at the
    limit. Returns (status, seconds, every line it printed)."""
    print(f"\n=== {name}: {' '.join(command)} (limit {limit:.0f} s)", file=log, flush=True)
    t0 = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, errors="replace")
    timer = threading.Timer(limit, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    lines = []
    for line in proc.stdout:
        log.write(line)
        log.flush()
        lines.append(line.rstrip())
    proc.wait()
    timed_out = not timer.is_alive()
    timer.cancel()
    seconds = time.time() - t0
    status = "timed out" if timed_out else ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
    print(f"=== {name}: {status} after {seconds:.0f} s", file=log, flush=True)
    return status, seconds, lines


def stage_figures(name, lines, cfg):
    """The figures a finished stage produced: what its output files hold, else what it printed."""
    ckpt_dir, out_dir = Path(cfg["checkpoint_dir"]), Path(cfg["out_dir"])
    if name in ("train", "finetune"):
        log = ckpt_dir / ("task" if name == "finetune" else "") / "log.jsonl"
        records = [json.loads(r) for r in log.read_text().splitlines()] if log.exists() else []
        last = {kind: next((r for r in reversed(records) if r["kind"] == kind), None)
                for kind in ("eval", "step")}
        return {"last_eval": last["eval"], "last_step": last["step"]}
    if name in ("eval", "task_eval"):
        path = out_dir / name / "eval.json"
        report = json.loads(path.read_text()) if path.exists() else {}
        return report.get("task") or report.get("likelihood", {}).get("overall")
    if name == "tests":
        return [line for line in lines if " passed" in line or " failed" in line][-1:]
    return [line for line in lines if line.startswith("|")]  # the benchmarks' Markdown rows


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
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="bench.py gpu_run")
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
    if not cfg["rehearsal"] and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; --rehearsal runs the stages on CPU")
    task = Path(cfg["data_root"]) / cfg["task_dataset"]
    if cfg["task_dataset"]:
        unpack(task)
    with_task = bool(cfg["task_dataset"]) and (task / "train.bin").exists()
    unpack(folder)
    if not (folder / "train.bin").exists():
        raise SystemExit(f"error: {folder}/train.bin not found: run `{configurator.prepare_command(folder)}`, "
                         f"or `python bench.py gpu_run --pack` where the data was prepared and copy "
                         f"{folder}.packed here")
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
            status, seconds, lines = run_stage(name, command, min(limit, max(left, 20)), log, env)
            summary["stages"][name] = {"status": status, "seconds": round(seconds, 1),
                                       "figures": stage_figures(name, lines, cfg), "tail": lines[-12:]}
            atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    failed = [n for n, s in summary["stages"].items() if s["status"] != "ok"]
    print(f"gpu_run: {len(summary['stages']) - len(failed)} of {len(summary['stages'])} stages ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; see {out_dir}/gpu_run.log")
    return 1 if failed else 0

