"""bench.py translate, raw text to scores, on a small made-up pair of Bibles and a tiny model: every
stage in order, the held-out books kept out of every training text by content, the scores per
direction with intervals and baselines, and a killed run resumed at the stage it was in."""
import json
import random

import pytest
import torch

from benchmarks import translate
from curation import bibles
from test_prepare import sentence

TRAINING_BOOKS = ("Gen", "Exod", "Lev", "Num", "Deut", "Josh", "Judg", "Matt")
HELD_OUT_BOOKS = ("Acts", "Ruth", "Jonah", "Mark", "Heb")
TINY = "--n_layer=1 --n_head=2 --n_embd=32 --value_embeddings=0 --batch_size=4 --eval_iters=2"


def made_up_bibles(chapters=4, verses=12):
    """{module: {(book, chapter, verse): text}}: an English edition of template sentences and a
    "Spanish" one of other sentences of about the same length, verse for verse."""
    rng = random.Random(0)
    english, spanish = {}, {}
    for book in TRAINING_BOOKS + HELD_OUT_BOOKS:
        for chapter in range(1, chapters + 1):
            for verse in range(1, verses + 1):
                english[book, chapter, verse] = f"{sentence(rng)} {sentence(rng)}"
                spanish[book, chapter, verse] = f"{sentence(rng)} {sentence(rng)}"
    return {bibles.SWORD_MODULES["en"]: english, bibles.SWORD_MODULES["es"]: spanish}


def configs(folder):
    """The three configs at test size: the corpus as config/translate_corpus.py, a few steps."""
    (folder / "corpus.py").write_text(
        'dataset = "bibles"\nsources = [dict(kind="bible", name="bible", languages=["en", "es"], '
        'paired=True, weight=1.0)]\ntarget_tokens = 10**9\ncollect_bytes_per_token = 0\n'
        'vocab_size = 300\nworkers = 1\nval_fraction = 0.2\n')
    (folder / "pretrain.py").write_text("max_iters = 6\nlr_decay_iters = 6\nwarmup_iters = 1\n"
                                        "eval_interval = 3\nblock_size = 64\ncompile = False\n")
    (folder / "train.py").write_text("max_iters = 4\nlr_decay_iters = 4\nwarmup_iters = 1\n"
                                     "eval_interval = 2\nblock_size = 64\ncompile = False\n")
    return [f"--corpus={folder / 'corpus.py'}", f"--pretrain={folder / 'pretrain.py'}",
            f"--train={folder / 'train.py'}", f"--extra={TINY}", "--beam_size=1", "--batch_size=16"]


def test_raw_text_to_scores_and_a_killed_run_resumed(tmp_path, monkeypatch, capsys):
    editions = made_up_bibles()
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])
    arguments = configs(tmp_path) + [f"--out_dir={tmp_path / 'out'}", f"--data_root={tmp_path / 'data'}"]

    # killed in the training on the task: corpus, task and pretraining are done and recorded
    def killed(*args):
        raise KeyboardInterrupt
    real_run_stage = translate.run_stage
    monkeypatch.setattr(translate, "run_stage", lambda stage, *rest: (
        killed() if stage == "train" else real_run_stage(stage, *rest)))
    with pytest.raises(KeyboardInterrupt):
        translate.main(arguments)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert list(progress["stages"]) == ["corpus", "task", "pretrain"]
    pretrained = (tmp_path / "out" / "pretrain" / "best.pt").stat().st_mtime_ns

    # the rerun starts at the training, a fine-tune of the pretrained model: nothing earlier runs again
    monkeypatch.setattr(translate, "run_stage", real_run_stage)
    capsys.readouterr()
    assert translate.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "[1/6 corpus] done earlier" in printed and "[4/6 train]" in printed
    assert json.loads((tmp_path / "out" / "train" / "log.jsonl").read_text().splitlines()[0])["kind"] == "eval"
    assert (tmp_path / "out" / "pretrain" / "best.pt").stat().st_mtime_ns == pretrained
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["stages"]) == list(translate.STAGES)

    # the scores: both directions, each with its interval, beside copy and retrieval
    test = summary["stages"]["test"]["result"]
    assert set(test) == {"en-es", "es-en"}
    for direction, systems in test.items():
        assert {"bleu", "bleu_ci95", "chrf", "chrf_ci95"} <= set(systems["model"])
        assert systems["retrieval"]["bleu"] >= 0 and systems["copy"]["chrf"] > 0
        assert f"{direction}: BLEU {systems['model']['bleu']:.2f} ± " in printed
    assert (tmp_path / "out" / "test" / "en-es.model.txt").exists()
    assert summary["stages"]["test"]["result"]["en-es"]["model"]["bleu_signature"].startswith("nrefs:1")

    # by content: no verse of Acts, the validation books, Mark or Hebrews in what trained
    held_out = bibles.held_out_verses({lang: editions[module] for lang, module in bibles.SWORD_MODULES.items()})
    assert len(held_out) == 2 * len(HELD_OUT_BOOKS) * 4 * 12
    folders = [tmp_path / "data" / "bibles", tmp_path / "data" / "bibles_task"]
    assert [leak for folder in folders for leak in bibles.find_leaks(held_out, bibles.training_texts(folder))] == []
    assert bibles.find_leaks(held_out, bibles.training_texts(tmp_path / "data" / "bibles_task")) == []


def test_without_pretraining_the_task_trains_from_scratch(tmp_path, monkeypatch):
    editions = made_up_bibles()
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])
    arguments = [a for a in configs(tmp_path) if not a.startswith("--pretrain")]
    assert translate.main(arguments + [f"--out_dir={tmp_path / 'out'}", f"--data_root={tmp_path / 'data'}"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stages"]["pretrain"]["result"] == {"skipped": "no --pretrain config"}
    assert not (tmp_path / "out" / "pretrain").exists()
    trained = torch.load(tmp_path / "out" / "train" / "best.pt", weights_only=True)
    assert trained["config"]["init_from"] == "scratch" and trained["model_args"]["block_size"] == 64
