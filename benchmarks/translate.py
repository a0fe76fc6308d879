"""bench.py translate: the English <-> Spanish translator from raw text to scores, in one command.

    make translate                                    # the same, after make setup and make bibles
    python bench.py translate                         # every stage; a rerun resumes where it stopped
    python bench.py translate --out_dir=out/t2 --pretrain=config/translate_pretrain.py  # pretrained

The stages, each run in this process and marked done in out_dir/progress.json when it ends, so a
killed run starts again at the stage it was in (a training stage from its last.pt; remove out_dir
to start over, after changing a config say):
  corpus     prepare.py with the corpus config (--corpus): the training books' text and the
             tokenizer trained on it, checked by content for held-out verses (curation/bibles.py)
  task       prepare.py's translation task in that tokenizer, checked the same way
  pretrain   train.py with --pretrain on the corpus (skipped when --pretrain is empty, the default:
             training on the task alone measured better for the same minutes, BENCHMARKS.md)
  train      train.py with --train on the task: from scratch, or fine-tuning the pretrained best.pt
  validate   eval.py on the validation books (Ruth, Jonah, Philippians, 1 John)
  test       eval.py on Acts: BLEU and chrF per direction with 95% intervals, beside copying the
             source and retrieving the closest training verse's translation
  curve      eval.py on the validation books again, for each checkpoint the training kept
             (ckpt_<step>.pt, every checkpoint_interval steps): out_dir/curve.json and curve.png,
             validation BLEU against the pipeline's minutes when the checkpoint was written
Before each stage it prints the stage, the minutes spent and the minutes left of --budget_minutes;
train.py prints its steps. At the end the scores go to out_dir/summary.json and are printed, with
sacrebleu's signatures; the hypotheses are in out_dir/test/, for `sacrebleu` on the command line.
"""

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eval as eval_script  # noqa: E402
import prepare  # noqa: E402
import train  # noqa: E402
from core import atomic, configurator  # noqa: E402

SPEC = {
    "out_dir": ("out/translate", "progress.json, summary.json, each stage's checkpoints and reports"),
    "data_root": ("data", "parent folder of the prepared corpus and task"),
    "corpus": ("config/translate_corpus.py", "prepare.py config of the corpus (the tokenizer's, and "
                                              "the pretraining's if any)"),
    "dataset": ("", "the corpus's folder under data_root, the task's beside it with _task added "
                    "(empty: the corpus config's dataset)"),
    "pretrain": ("", "train.py config of a pretraining on the corpus (empty: none)"),
    "train": ("config/translate_train.py", "train.py config of the training on the task (its model "
                                           "keys apply when there is no pretraining)"),
    "beam_size": (2, "beams when answering the validation and test verses (1: greedy)"),
    "length_penalty": (1.5, "beam search's length normalisation"),
    "batch_size": (64, "verses answered together"),
    "budget_minutes": (60.0, "the whole run: printed as minutes left before each stage, and the "
                             "training stages stop early (max_minutes) to keep within it"),
    "sword_root": ("/usr/share/sword", "the folder of the SWORD Bible modules"),
    "book_split": ({}, "changes to the Bibles' book split for both prepare.py stages, e.g. "
                       "\"{'Luke': 'test', 'Acts': None}\": a check on a Gospel, whose verses the "
                       "other Gospels echo (give it its own --out_dir and --dataset)"),
    "extra": ("", "train.py options added to both training stages, space-separated (the tests "
                  "shrink the model with it)"),
}
STAGES = ("corpus", "task", "pretrain", "train", "validate", "test", "curve")
# minutes a training stage leaves of the budget for the stages after it on 2 CPU cores: after
# pretraining, the task's training and the evaluations; after that, the two evaluations (662 and
# 2,012 verses, 2 beams) and the curve's (662 verses for each kept checkpoint), with room to spare
RESERVED = {"pretrain": 35.0, "train": 8.0}
KEEP_ALL = 10_000  # train.py's keep_last in the training on the task: every checkpoint, for the curve


def stage_paths(cfg):
    out, data = Path(cfg["out_dir"]), Path(cfg["data_root"])
    corpus = cfg["dataset"] or configurator.parse(prepare.SPEC, [cfg["corpus"]])["dataset"]
    return {"corpus": data / corpus, "task": data / f"{corpus}_task", "pretrain": out / "pretrain",
            "train": out / "train", "validate": out / "validate", "test": out / "test",
            "curve": out / "curve"}


def training_arguments(cfg, stage, paths, minutes_left):
    """train.py's arguments for a training stage: resume from its last.pt if a killed run left one,
    and stop in time for the stages after it."""
    config = cfg[stage]
    data = paths["corpus"] if stage == "pretrain" else paths["task"]
    arguments = [config, f"--data_root={data.parent}", f"--dataset={data.name}",
                 f"--out_dir={paths[stage]}", "--tensorboard=False",
                 f"--max_minutes={max(0.5, minutes_left - RESERVED[stage]):.2f}",
                 *([f"--keep_last={KEEP_ALL}"] if stage == "train" else []), *cfg["extra"].split()]
    if (paths[stage] / "last.pt").exists():
        arguments.append("--init_from=resume")
    elif stage == "train" and cfg["pretrain"]:
        arguments.append(f"--init_from={paths['pretrain'] / 'best.pt'}")
    return arguments


def evaluate(cfg, checkpoint, out_dir, split):
    """eval.py's task scores of a checkpoint on the split's verses: {direction: {system: scores}}."""
    result = eval_script.main([f"--ckpt={checkpoint}", f"--out_dir={out_dir}", f"--task_split={split}",
                               f"--beam_size={cfg['beam_size']}", f"--length_penalty={cfg['length_penalty']}",
                               f"--batch_size={cfg['batch_size']}", "--tensorboard=False", "--track=False"])
    return {direction: {system: scores[system] for system in ("model", "copy", "retrieval")}
            for direction, scores in result["task"].items()}


def run_stage(stage, cfg, paths, minutes_left, summary):
    """Run one stage; returns what summary.json keeps of it."""
    if stage in ("corpus", "task"):
        options = ([cfg["corpus"]] if stage == "corpus" else
                   ["--task=translation", f"--tokenizer_from={paths['corpus'] / 'tokenizer.json'}"])
        folder = paths[stage]
        prepare.run(configurator.parse(prepare.SPEC, [*options, f"--data_root={folder.parent}",
                                                      f"--dataset={folder.name}",
                                                      f"--sword_root={cfg['sword_root']}",
                                                      f"--book_split={cfg['book_split']!r}"]))
        return json.loads((folder / "meta.json").read_text())["splits"]
    if stage == "pretrain" and not cfg["pretrain"]:
        return {"skipped": "no --pretrain config"}
    if stage in ("pretrain", "train"):
        train.main(training_arguments(cfg, stage, paths, minutes_left))
        return {"best_val_loss": min(r["val_loss"] for r in read_log(paths[stage], "eval"))}
    if stage == "curve":
        return learning_curve(cfg, paths, summary)
    return evaluate(cfg, paths["train"] / "best.pt", paths[stage], "val" if stage == "validate" else "test")


def learning_curve(cfg, paths, summary):
    """Validation BLEU per direction of each checkpoint the training kept, against the pipeline's
    minutes when it was written (the stages before the training, then the training's log; a
    resumed training's time stopped counts too). Each checkpoint's scores stay in curve/step_<N>/,
    so a killed curve resumes. Writes out_dir/curve.json and curve.png; returns the points."""
    before = sum(summary["stages"][s]["seconds"] for s in ("corpus", "task", "pretrain")) / 60
    log = read_log(paths["train"], "eval") + read_log(paths["train"], "step")
    started = min(r["time"] for r in log)
    written = {r["iter"]: r["time"] for r in log}  # a step's time: its eval's or its log line's
    points = []
    for checkpoint in sorted(paths["train"].glob("ckpt_*.pt")):
        step = int(checkpoint.stem.split("_")[1])
        folder = paths["curve"] / f"step_{step}"
        scores = (json.loads((folder / "eval.json").read_text())["task"] if (folder / "eval.json").exists()
                  else evaluate(cfg, checkpoint, folder, "val"))
        at = written.get(step, checkpoint.stat().st_mtime)
        points.append({"step": step, "minutes": round(before + (at - started) / 60, 2),
                       **{direction: round(s["model"]["bleu"], 2) for direction, s in scores.items()}})
    if points:
        plot_curve(points, summary, Path(cfg["out_dir"]) / "curve.png")
    atomic.write_text(Path(cfg["out_dir"]) / "curve.json", json.dumps(points, indent=1))
    return {"points": points}


def plot_curve(points, summary, path):
    """Validation BLEU per direction against the pipeline's minutes, retrieval's as a dashed line."""
    figure, axes = plt.subplots(figsize=(7, 4))
    retrieval = summary["stages"].get("validate", {}).get("result", {})
    for direction in [d for d in points[0] if d not in ("step", "minutes")]:
        line, = axes.plot([p["minutes"] for p in points], [p[direction] for p in points], marker="o",
                          label=f"{direction}, the model")
        if direction in retrieval:
            axes.axhline(retrieval[direction]["retrieval"]["bleu"], linestyle="--", color=line.get_color(),
                         label=f"{direction}, retrieving the closest training verse")
    axes.axhline(20, color="grey", linewidth=0.8, label="the course's bar (BLEU 20)")
    axes.set_xlabel("minutes of the whole pipeline (corpus, tokenizer, task, training)")
    axes.set_ylabel("BLEU on the validation books")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic.replacing(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    plt.close(figure)


def read_log(folder, kind):
    return [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def report(summary):
    """The test scores as the lines a user reads: per direction, the model beside the baselines."""
    lines = []
    for direction, systems in summary["stages"]["test"]["result"].items():
        model = systems["model"]
        lines.append(f"{direction}: BLEU {model['bleu']:.2f} ± {model['bleu_ci95']:.2f}, chrF "
                     f"{model['chrf']:.2f} ± {model['chrf_ci95']:.2f}; retrieval BLEU "
                     f"{systems['retrieval']['bleu']:.2f} ± {systems['retrieval']['bleu_ci95']:.2f}, "
                     f"chrF {systems['retrieval']['chrf']:.2f}; copy BLEU {systems['copy']['bleu']:.2f}, "
                     f"chrF {systems['copy']['chrf']:.2f}")
    model = next(iter(summary["stages"]["test"]["result"].values()))["model"]
    return lines + [f"BLEU: {model['bleu_signature']}", f"chrF: {model['chrf_signature']}"]


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="bench.py translate")
    paths = stage_paths(cfg)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "progress.json"
    summary = (json.loads(progress_file.read_text()) if progress_file.exists()
               else {"config": cfg, "stages": {}})
    for number, stage in enumerate(STAGES, 1):
        spent = sum(s["seconds"] for s in summary["stages"].values()) / 60
        if stage in summary["stages"]:
            print(f"[{number}/{len(STAGES)} {stage}] done earlier", flush=True)
            continue
        left = cfg["budget_minutes"] - spent
        print(f"\n[{number}/{len(STAGES)} {stage}] {spent:.1f} minutes spent, {left:.1f} of "
              f"{cfg['budget_minutes']:.0f} left", flush=True)
        start = time.time()
        result = run_stage(stage, cfg, paths, left, summary)
        summary["stages"][stage] = {"seconds": round(time.time() - start, 1), "result": result}
        atomic.write_text(progress_file, json.dumps(summary, indent=1, default=str))
    minutes = sum(s["seconds"] for s in summary["stages"].values()) / 60
    lines = [f"translate: {minutes:.1f} minutes in all (" + ", ".join(
        f"{stage} {s['seconds'] / 60:.1f}" for stage, s in summary["stages"].items()) + ")", *report(summary),
             f"validation BLEU of {len(summary['stages']['curve']['result']['points'])} checkpoints: "
             f"{out / 'curve.json'}, {out / 'curve.png'}"]
    print("\n".join(lines), flush=True)
    atomic.write_text(out / "summary.json", json.dumps({**summary, "minutes": minutes, "lines": lines},
                                                       indent=1, default=str))
    return 0
