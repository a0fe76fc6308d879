"""bench.py translate, raw text to scores, on a small made-up pair of Bibles and a tiny model: every
stage in order, the held-out books kept out of every training text by content, the scores per
direction with intervals and baselines, and a killed run resumed at the stage it was in."""
import json
import random

import pytest
import torch

import export
import sample
import serve
from benchmarks import translate, translate_levers
from core import configurator, inference, tasks
from curation import bibles
from evaluation import task_eval
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
                                     "eval_interval = 2\ncheckpoint_interval = 2\nblock_size = 160\n"
                                     "compile = False\n")
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
    assert "[1/7 corpus] done earlier" in printed and "[4/7 train]" in printed
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

    # the curve: a point per kept checkpoint, the one best.pt holds scoring as the validate stage did
    curve = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert [point["step"] for point in curve] == [2, 4]
    before = sum(summary["stages"][stage]["seconds"] for stage in ("corpus", "task", "pretrain")) / 60
    assert round(before, 2) <= curve[0]["minutes"] <= curve[1]["minutes"]
    best_step = torch.load(tmp_path / "out" / "train" / "best.pt", weights_only=True)["iter_num"]
    validated = summary["stages"]["validate"]["result"]
    point = next(point for point in curve if point["step"] == best_step)
    assert point == {"step": best_step, "minutes": point["minutes"],
                     **{d: round(s["model"]["bleu"], 2) for d, s in validated.items()}}
    assert (tmp_path / "out" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"validation BLEU of 2 checkpoints: {tmp_path / 'out' / 'curve.json'}" in printed

    # a curve killed half way evaluates only the checkpoints it has not scored
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    del progress["stages"]["curve"]
    (tmp_path / "out" / "progress.json").write_text(json.dumps(progress))
    for leftover in (tmp_path / "out" / "curve" / "step_4").iterdir():
        leftover.unlink()
    evaluated = []
    real_evaluate = translate.evaluate
    monkeypatch.setattr(translate, "evaluate", lambda cfg, ckpt, *rest: (
        evaluated.append(ckpt.name), real_evaluate(cfg, ckpt, *rest))[1])
    assert translate.main(arguments) == 0
    assert evaluated == ["ckpt_0000004.pt"]
    assert json.loads((tmp_path / "out" / "curve.json").read_text()) == curve


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """(out_dir, data_root) of a whole run without pretraining, on the made-up Bibles."""
    folder = tmp_path_factory.mktemp("translator")
    editions = made_up_bibles()
    arguments = [a for a in configs(folder) if not a.startswith("--pretrain")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bibles, "read_bible", lambda root, module: editions[module])
        assert translate.main(arguments + [f"--out_dir={folder / 'out'}", f"--data_root={folder / 'data'}"]) == 0
    return folder / "out", folder / "data"


def test_without_pretraining_the_task_trains_from_scratch(translator):
    out, _ = translator
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["pretrain"]["result"] == {"skipped": "no --pretrain config"}
    assert not (out / "pretrain").exists()
    trained = torch.load(out / "train" / "best.pt", weights_only=True)
    assert trained["config"]["init_from"] == "scratch" and trained["model_args"]["block_size"] == 160


def shortest_validation_prompt(data):
    """The shortest English -> Spanish prompt of the task's validation verses, and the verse alone."""
    prompts = [p["prompt"] for p in map(json.loads, (data / "bibles_task" / "val.jsonl").read_text().splitlines())
               if p["prompt"].startswith("Translate English to Spanish:\n")]
    prompt = min(prompts, key=len)
    return prompt, prompt.split("\n", 1)[1]


def translation_by_eval(checkpoint, prompt):
    """The answer eval.py's task evaluation gives prompt (greedy), and the new tokens it allows."""
    model, tokenizer, _ = inference.load_for_inference(checkpoint)
    length = len(tokenizer.encode(tasks.render_prompt(prompt)))
    room = min(model.config.block_size - length, 2 * length + 8)
    return task_eval.generate_responses(model, tokenizer, [prompt], 1)[0], room


def test_sample_and_serve_translate_as_eval_does(translator, capsys):
    out, data = translator
    checkpoint = out / "train" / "best.pt"
    prompt, verse = shortest_validation_prompt(data)
    expected, room = translation_by_eval(checkpoint, prompt)
    assert verse and expected
    printed = sample.main([f"--ckpt={checkpoint}", f"--start={prompt}", "--temperature=0",
                           "--num_samples=1", f"--max_new_tokens={room}"])
    assert printed == [expected] and tasks.render_prompt(prompt) in capsys.readouterr().out
    serve_cfg = configurator.parse(serve.SPEC, [f"--ckpt={checkpoint}"])
    client = serve.create_app(*serve.load(serve_cfg)[:2], serve_cfg, serve.load(serve_cfg)[2]).test_client()
    answer = client.post("/generate", json={"prompt": prompt, "max_tokens": room, "temperature": 0})
    assert answer.status_code == 200 and answer.get_json()["text"] == expected


def test_the_exported_translator_answers_in_its_template(translator, capsys):
    transformers = pytest.importorskip("transformers", reason="export.py needs transformers")
    out, data = translator
    checkpoint = out / "train" / "best.pt"
    export.main([f"--ckpt={checkpoint}", f"--out={out / 'hf'}"])
    assert "ask it in config.prompt_template" in capsys.readouterr().out
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    assert hf_model.config.prompt_template == tasks.PROMPT_TEMPLATE
    prompt, _ = shortest_validation_prompt(data)
    expected, room = translation_by_eval(checkpoint, prompt)
    ids = hf_tokenizer(hf_model.config.prompt_template.format(prompt=prompt), return_tensors="pt").input_ids
    generated = hf_model.generate(ids, max_new_tokens=room, do_sample=False)[0, ids.shape[1]:].tolist()
    assert hf_tokenizer.decode(generated, skip_special_tokens=True) == expected


def test_the_levers_on_a_finished_run(translator, capsys):
    out, data = translator
    assert translate_levers.main([f"--out_dir={out}", "--decodings=1:1.0", "--averages=1,2,3",
                                  "--block_sizes=64,100000"]) == 0
    levers = json.loads((out / "levers.json").read_text())
    printed = capsys.readouterr().out
    # greedy decoding of best.pt is what the run's validate stage did: the same scores
    assert levers["decoding 1:1.0"] == levers["validate"]
    assert "| decoding | 1 beam, length penalty 1.0 |" in printed and "en-es +0.00, es-en +0.00" in printed
    # averaging: the mean of the kept checkpoints' weights; 3 asked of 2 kept is skipped, said so
    kept = sorted((out / "train").glob("ckpt_*.pt"))
    assert len(kept) == 2 and "averaging 3: only 2 checkpoints kept; skipped" in printed
    averaged = torch.load(out / "levers" / "average_2" / "averaged.pt", weights_only=True)["model"]
    states = [torch.load(c, weights_only=True)["model"] for c in kept]
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (states[0][name] + states[1][name]) / 2)
    assert set(levers) == {"validate", "room", "decoding 1:1.0", "average 1", "average 2", "lines"}
    one = torch.load(out / "levers" / "average_1" / "averaged.pt", weights_only=True)["model"]
    assert all(torch.equal(one[name], states[1][name]) for name in one)
    # room: every prompt of the made-up verses is longer than 64 tokens, none is cut in a huge context
    assert levers["room"] == {split: {"64": 1.0, "100000": 0.0} for split in ("val", "test")}


def test_the_levers_need_a_finished_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        translate_levers.main([f"--out_dir={tmp_path}"])
    assert f"{tmp_path / 'summary.json'} not found: run `python bench.py translate" in capsys.readouterr().err
