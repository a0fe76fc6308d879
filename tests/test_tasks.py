"""Fine-tuning tasks: the template and its loss mask, JSONL pairs, the Bible reader's alignment and
book split (on a small fixture, and on Debian's modules where they are installed), and prepare.py
writing a task's data that train.py then fine-tunes on."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import prepare
import sample
import serve
from curation import sources
from core import tasks
from model import GPT, GPTConfig
from core.tokenizer import Tokenizer
from test_prepare import config as prepare_config
from test_prepare import make_corpus, prose_doc
from test_train import args, run
from core import checkpoint, configurator, metrics
from evaluation import task_eval
from core import inference
from curation import bibles

SWORD = Path("/usr/share/sword")
NO_BIBLES = "Debian's sword-text-kjv and sword-text-sparv are not installed (`make test` installs them)"


def test_a_pair_is_its_rendered_prompt_then_the_response_and_end_of_text(data_root):
    tokenizer = Tokenizer.load(data_root / "tiny" / "tokenizer.json")
    ids, mask = tasks.encode_pair(tokenizer, "Translate English to Spanish:\nIn the beginning", "En el principio")
    prompt = tokenizer.encode("### Prompt:\nTranslate English to Spanish:\nIn the beginning\n### Response:\n")
    response = tokenizer.encode("En el principio")
    assert ids == prompt + response + [tokenizer.eot_id]
    assert mask == [0] * len(prompt) + [1] * (len(response) + 1)


def test_jsonl_pairs_and_their_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d", "x": 1}\n')
    assert tasks.read_jsonl_pairs(good) == [("a", "b"), ("c", "d")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"\n')
    with pytest.raises(tasks.TaskError, match="bad.jsonl:2: not valid JSON"):
        tasks.read_jsonl_pairs(bad)
    bad.write_text('{"prompt": "a", "response": 3}\n')
    with pytest.raises(tasks.TaskError, match="bad.jsonl:1: needs string fields 'prompt' and 'response'"):
        tasks.read_jsonl_pairs(bad)
    with pytest.raises(tasks.TaskError, match="cannot read task file"):
        tasks.read_jsonl_pairs(tmp_path / "missing.jsonl")


# verses of both editions: Spanish lacks one, leaves one empty, cuts one short, and numbers Jonah 2
# one verse later (its 2:1 is the English 1:4 here, as the Reina-Valera's is the KJV's 1:17)
JONAH = {(1, 1): "So they took up Jonah,", (1, 2): "and cast him forth into the sea:",
         (1, 3): "and the sea ceased from her raging.",
         (1, 4): "Now the LORD had prepared a great fish to swallow up Jonah.",
         (2, 1): "Then Jonah prayed unto the LORD his God out of the fish's belly, and said,",
         (2, 2): "I cried unto the LORD,",
         (2, 3): "and he heard me; out of the belly of hell cried I, and thou heardest my voice.",
         (2, 4): "For thou hadst cast me,"}
JONAS = {(1, 1): "Y tomaron á Jonás,", (1, 2): "y echáronlo al mar:", (1, 3): "y el mar se quietó de su furia.",
         (1, 4): "", (2, 1): "Mas Jehová había prevenido un gran pez que tragase á Jonás.",
         (2, 2): "Y oró Jonás desde el vientre del pez á Jehová su Dios, y dijo así, clamando:",
         (2, 3): "Clamé á Jehová,",
         (2, 4): "y él me oyó; del seno del sepulcro clamé, y mi voz oíste tú allá adentro.",
         (2, 5): "Echásteme en el profundo,"}
ENGLISH = {("Gen", 1, 1): "In the beginning God created the heaven and the earth.",
           ("Gen", 1, 2): "And the earth was without form, and void;",
           ("Gen", 1, 3): "And God said, Let there be light: and there was light.",
           ("Ruth", 1, 1): "Now it came to pass in the days when the judges ruled,",
           ("Mark", 1, 1): "The beginning of the gospel of Jesus Christ, the Son of God;",
           ("Acts", 1, 1): "The former treatise have I made, O Theophilus,",
           ("Acts", 1, 2): "Until the day in which he was taken up,",
           ("Heb", 1, 1): "God, who at sundry times and in divers manners spake",
           ("Rev", 1, 1): "The Revelation of Jesus Christ,"}
SPANISH = {("Gen", 1, 1): "En el principio crió Dios los cielos y la tierra.",
           ("Gen", 1, 2): "Y la tierra estaba desadornada y vacía,",
           ("Gen", 1, 3): "Y dijo Dios:",
           ("Ruth", 1, 1): "Y ACONTECIÓ en los días que gobernaban los jueces,",
           ("Mark", 1, 1): "PRINCIPIO del evangelio de Jesucristo, Hijo de Dios.",
           ("Acts", 1, 1): "EN el primer tratado, oh Teófilo,",
           ("Heb", 1, 1): "DIOS, habiendo hablado muchas veces",
           ("Rev", 1, 1): ""}


def test_verses_align_by_number_and_split_by_whole_books():
    english = {**ENGLISH, **{("Jonah", *key): text for key, text in JONAH.items()}}
    spanish = {**SPANISH, **{("Jonah", *key): text for key, text in JONAS.items()}}
    assert bibles.renumbered_chapters(english, spanish) == {("Jonah", 2)}
    rows, dropped = bibles.aligned_verses(english, spanish)
    # Acts 1:2 is missing in Spanish, Revelation 1:1 and Jonah 1:4 are empty there and Jonah 2:5
    # in English; Genesis 1:3 is cut short; Jonah 2's 4 verses are numbered differently
    assert dropped == {"missing_or_empty": 4, "renumbered_chapter": 4, "length_ratio": 1}
    rows = [row for row in rows if row[0][0] != "Jonah"]
    assert [key for key, _, _ in rows] == [("Gen", 1, 1), ("Gen", 1, 2), ("Ruth", 1, 1),
                                           ("Mark", 1, 1), ("Acts", 1, 1), ("Heb", 1, 1)]
    splits = bibles.split_by_book(rows)
    assert [key[0] for key, _, _ in splits["train"]] == ["Gen", "Gen"]
    assert [key[0] for key, _, _ in splits["val"]] == ["Ruth"]
    assert [key[0] for key, _, _ in splits["test"]] == ["Acts"]  # Mark and Hebrews are in none
    pairs = bibles.translation_pairs(splits["test"])
    assert [(p, r, m["direction"]) for p, r, m in pairs] == [
        ("Translate English to Spanish:\nThe former treatise have I made, O Theophilus,",
         "EN el primer tratado, oh Teófilo,", "en-es"),
        ("Translate Spanish to English:\nEN el primer tratado, oh Teófilo,",
         "The former treatise have I made, O Theophilus,", "es-en")]


def test_the_bible_source_holds_the_books_the_task_trains_on_and_no_other(monkeypatch):
    """prepare.py's bible source (a pretraining mix with the task's text): a document per chapter,
    never a verse of the test, validation or held-out books."""
    pytest.importorskip("pysword", reason="pysword is not installed (requirements-extra.txt)")
    english = {**ENGLISH, **{("Jonah", *key): text for key, text in JONAH.items()},
               ("Gen", 2, 1): "Thus the heavens and the earth were finished,"}
    spanish = {**SPANISH, **{("Jonah", *key): text for key, text in JONAS.items()},
               ("Gen", 2, 1): "Y fueron acabados los cielos y la tierra,"}
    editions = {bibles.SWORD_MODULES["en"]: english, bibles.SWORD_MODULES["es"]: spanish}
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])

    def documents(**fields):
        spec = sources.resolve_sources([dict(kind="bible", **fields)])[0]
        return {doc_id: text for doc_id, doc_type, text in sources.iter_source(spec, None)}

    assert documents() == {  # every nonempty verse, even one the pairs leave out (Genesis 1:3)
        "en:Gen.1": "\n".join(english["Gen", 1, v] for v in (1, 2, 3)),
        "en:Gen.2": english["Gen", 2, 1], "en:Rev.1": english["Rev", 1, 1],
        "es:Gen.1": "\n".join(spanish["Gen", 1, v] for v in (1, 2, 3)), "es:Gen.2": spanish["Gen", 2, 1]}
    assert list(documents(languages=["es"])) == ["es:Gen.1", "es:Gen.2"]
    assert documents(paired=True) == {  # aligned verses only; English first in odd chapters
        "en-es:Gen.1": "\n\n".join(f"{english['Gen', 1, v]}\n{spanish['Gen', 1, v]}" for v in (1, 2)),
        "en-es:Gen.2": f"{spanish['Gen', 2, 1]}\n{english['Gen', 2, 1]}"}
    with pytest.raises(sources.SourceError, match="paired=True pairs English with Spanish"):
        documents(paired=True, languages=["en"])
    with pytest.raises(sources.SourceError, match="languages must be a non-empty list"):
        documents(languages=["fr"])


def test_the_bible_mix_config_adds_all_the_verses_to_the_demo_corpus():
    pytest.importorskip("pysword", reason="pysword is not installed (requirements-extra.txt)")
    cfg = configurator.parse(prepare.SPEC, [str(Path(prepare.__file__).parent / "config" / "prepare_bible_mix.py")])
    specs = sources.resolve_sources(cfg["sources"])
    assert [s["kind"] for s in specs] == ["files", "wiki_offline", "bible"] and specs[2]["paired"]
    weights = {s["name"]: s["weight"] for s in specs}
    # whatever the verses come to, they all go in and the demo's sources share the rest evenly
    for verses in (1_000_000, 1_700_000, 2_500_000):
        quota = prepare.allocate({"code": 5_000_000, "wiki": 5_000_000, "bible": verses}, weights,
                                 cfg["target_tokens"])
        assert quota["bible"] == verses and abs(quota["code"] - quota["wiki"]) <= 1


def test_verse_text_is_cleaned():
    assert bibles.clean_verse(" \u00b6 For God so loved  the world, ") == "For God so loved the world,"
    assert bibles.clean_verse("EN el primer tratado", drop_cap=True) == "En el primer tratado"
    assert bibles.clean_verse("EN el primer tratado") == "EN el primer tratado"
    assert bibles.clean_verse("Y ACONTECIÓ en los días", drop_cap=True) == "Y aconteció en los días"
    assert bibles.clean_verse("¿POR qué se amotinan", drop_cap=True) == "¿Por qué se amotinan"
    assert bibles.clean_verse("LORD, how are they increased", drop_cap=False) == "LORD, how are they increased"
    assert bibles.clean_verse("Y", drop_cap=True) == "Y"


@pytest.mark.skipif(not (SWORD / "mods.d" / "engKJV2006eb.conf").exists()
                    or not (SWORD / "mods.d" / "spaRV1909eb.conf").exists(), reason=NO_BIBLES)
def test_the_debian_bibles_read_and_align():
    pytest.importorskip("pysword", reason="pysword is not installed (requirements-extra.txt)")
    english = bibles.read_bible(SWORD, bibles.SWORD_MODULES["en"], books={"Ruth", "Jonah"})
    spanish = bibles.read_bible(SWORD, bibles.SWORD_MODULES["es"], books={"Ruth", "Jonah"})
    assert len(english) == len(spanish) == 85 + 48  # Ruth's 4 chapters and Jonah's 4
    assert english["Ruth", 1, 16].startswith("And Ruth said, Intreat me not to leave thee")
    assert spanish["Ruth", 1, 1].startswith("Y aconteció en los días que gobernaban los jueces")
    rows, dropped = bibles.aligned_verses(english, spanish)
    # the Reina-Valera's Jonah 2:1 is the KJV's 1:17, left empty: chapter 2 is numbered apart
    assert dropped == {"missing_or_empty": 1, "renumbered_chapter": 10, "length_ratio": 0}
    assert not spanish["Jonah", 1, 17] and spanish["Jonah", 2, 1].startswith("Mas Jehová había prevenido")
    assert {split: len(r) for split, r in bibles.split_by_book(rows).items()} == {
        "train": 0, "val": 122, "test": 0}


def test_a_missing_module_names_what_to_install(tmp_path):
    pytest.importorskip("pysword", reason="pysword is not installed (requirements-extra.txt)")
    with pytest.raises(tasks.TaskError, match="apt-get install sword-text-kjv sword-text-sparv"):
        bibles.read_bible(tmp_path, "engKJV2006eb")


def write_pairs(path, n, offset=0):
    path.write_text("".join(json.dumps({"prompt": f"Say {i + offset} twice.",
                                        "response": f"{i + offset} {i + offset}"}) + "\n"
                            for i in range(n)))
    return str(path)


def test_prepare_writes_a_task_that_train_py_fine_tunes_on(data_root, tmp_path, capsys):
    pretrained = run(data_root, tmp_path / "pre", "--max_iters=2", "--lr_decay_iters=2")
    files = {"train": [write_pairs(tmp_path / "train.jsonl", 60)],
             "val": [write_pairs(tmp_path / "val.jsonl", 20, 100)],
             "test": [write_pairs(tmp_path / "test.jsonl", 3, 200)]}
    cfg = configurator.parse(prepare.SPEC, ["--task=pairs", f"--data_root={tmp_path / 'data'}",
                                            "--dataset=pairs", f"--tokenizer_from={tmp_path / 'pre' / 'last.pt'}"])
    cfg["task_files"] = files
    out = prepare.run(cfg)
    tokenizer = Tokenizer.from_dict(pretrained["tokenizer"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"]["prompt_template"] == tasks.PROMPT_TEMPLATE and meta["vocab_size"] == tokenizer.vocab_size
    ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    mask = np.fromfile(out / "train.mask.bin", dtype=np.uint8)
    expected = [tasks.encode_pair(tokenizer, p, r) for p, r in tasks.read_jsonl_pairs(files["train"][0])]
    assert ids.tolist() == [i for pair_ids, _ in expected for i in pair_ids]
    assert mask.tolist() == [m for _, pair_mask in expected for m in pair_mask]
    assert tokenizer.decode(ids[mask == 1].tolist()).startswith("0 0<|endoftext|>1 1<|endoftext|>")
    for split in ("val", "test"):
        pairs = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert [(t["prompt"], t["response"]) for t in pairs] == tasks.read_jsonl_pairs(files[split][0])
    assert "| train | 60 |" in (out / "report.md").read_text()
    tuned = run(tmp_path / "data", tmp_path / "ft", "--dataset=pairs",
                f"--init_from={tmp_path / 'pre' / 'last.pt'}", "--max_iters=3", "--lr_decay_iters=3")
    assert tuned["iter_num"] == 3 and tuned["tokenizer"] == pretrained["tokenizer"]

    # eval.py on the tuned checkpoint scores the test pairs; the saved files give sacrebleu's numbers
    result = eval_script.main([f"--ckpt={tmp_path / 'ft' / 'last.pt'}", f"--out_dir={tmp_path / 'ev'}"])
    scores = result["task"]["all"]
    assert scores["pairs"] == 3 and set(scores) >= {"model", "copy", "retrieval"}
    for system in ("model", "copy", "retrieval"):
        command = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ev" / "all.references.txt"),
                                  "-i", str(tmp_path / "ev" / f"all.{system}.txt"), "-m", "bleu", "chrf",
                                  "-b", "-w", "4"], capture_output=True, text=True, check=True)
        assert json.loads(command.stdout) == [round(scores[system]["bleu"], 4),
                                              round(scores[system]["chrf"], 4)]
    references = (tmp_path / "ev" / "all.references.txt").read_text().splitlines()
    assert references == ["200 200", "201 201", "202 202"]
    assert (tmp_path / "ev" / "all.copy.txt").read_text().splitlines() == [
        "Say 200 twice.", "Say 201 twice.", "Say 202 twice."]
    assert "| all (3) | retrieval |" in (tmp_path / "ev" / "report.md").read_text()

    # sample.py and serve.py's /generate ask the tuned model in the task's template
    assert tuned["prompt_template"] == tasks.PROMPT_TEMPLATE and pretrained["prompt_template"] is None
    model, tokenizer, _ = inference.load_for_inference(tmp_path / "ft" / "last.pt")
    # the validation pairs by beam search, as task_eval answers them in other batches
    beam = ["--task_split=val", "--beam_size=3", "--length_penalty=1.5", "--batch_size=3"]
    result = eval_script.main([f"--ckpt={tmp_path / 'ft' / 'last.pt'}", f"--out_dir={tmp_path / 'ev'}", *beam])
    assert result["evaluated_on"].endswith("val.jsonl") and result["task"]["all"]["pairs"] == 20
    prompts = [p for p, _ in tasks.read_jsonl_pairs(files["val"][0])]
    assert (tmp_path / "ev" / "all.model.txt").read_text().splitlines() == [
        metrics.one_line(r) for r in task_eval.generate_responses(model, tokenizer, prompts, 8, 3, 1.5)]
    with pytest.raises(SystemExit):
        eval_script.main([f"--ckpt={tmp_path / 'ft' / 'last.pt'}", "--task_split=train"])
    assert "task_split='train'" in capsys.readouterr().err
    rendered = tasks.render_prompt("Say 7 twice.")
    expected = tokenizer.decode(model.generate([tokenizer.encode(rendered)], 5, temperature=0,
                                               stop_tokens=[tokenizer.eot_id])[0])
    capsys.readouterr()
    common = [f"--ckpt={tmp_path / 'ft' / 'last.pt'}", "--start=Say 7 twice.", "--temperature=0",
              "--num_samples=1", "--max_new_tokens=5"]
    assert sample.main(common) == [expected] and rendered in capsys.readouterr().out
    sample.main(common + ["--raw_prompt=True"])
    assert "### Prompt:" not in capsys.readouterr().out
    serve_cfg = configurator.parse(serve.SPEC, [f"--ckpt={tmp_path / 'ft' / 'last.pt'}"])
    served, served_tokenizer, template = serve.load(serve_cfg)
    client = serve.create_app(served, served_tokenizer, serve_cfg, template).test_client()
    answer = client.post("/generate", json={"prompt": "Say 7 twice.", "max_tokens": 5, "temperature": 0})
    assert answer.get_json()["text"] == expected
    assert client.get("/health").get_json()["prompt_template"] == tasks.PROMPT_TEMPLATE


def test_a_response_has_the_room_its_own_prompt_leaves_whatever_it_is_batched_with(data_root):
    """A batch answers in the room its longest prompt leaves: prompts go into batches by length, so
    a short prompt batched beside a long one is not cut short (a random model never stops)."""
    tokenizer = Tokenizer.load(data_root / "tiny" / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=2, n_head=2,
                          n_embd=16, zero_init=False)).eval()
    prompts = ["a1", "long " * 12 + "1", "a2", "long " * 12 + "2"]
    lengths = [len(tokenizer.encode(tasks.render_prompt(p))) for p in prompts]
    assert lengths[0] == lengths[2] < lengths[1] == lengths[3] < 96  # batches of equal lengths
    alone = task_eval.generate_responses(model, tokenizer, prompts, 1)
    assert task_eval.generate_responses(model, tokenizer, prompts, 2) == alone
    assert task_eval.generate_responses(model, tokenizer, prompts, 2, beam_size=2) == \
        task_eval.generate_responses(model, tokenizer, prompts, 1, beam_size=2)
    long_room = 96 - lengths[1]
    assert all(len(tokenizer.encode(r)) >= long_room for r in alone)  # a short one's exceeds it


def test_retrieval_takes_the_training_pair_sharing_the_most_words():
    sources = ["the cat sat", "a dog ran", "the dog sat on the mat"]
    found = task_eval.retrieve(sources, ["A", "B", "C"], ["dog sat", "Cat!", "nothing shared", "the dog"])
    # Dice: "dog sat" shares 2 of {the, dog, sat, on, mat} (0.57) against 1 with the others (0.4)
    assert found == ["C", "A", "A", "C"]


def test_a_task_needs_the_pretrained_tokenizer_and_its_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--task=pairs", f"--data_root={tmp_path}"])
    assert "set tokenizer_from=out/best.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.main(["--task=pairs", f"--data_root={tmp_path}", f"--tokenizer_from={tmp_path / 'x.pt'}"])
    assert f"checkpoint {tmp_path / 'x.pt'} does not exist" in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "x.pt")


def test_held_out_verses_are_found_by_their_words_wherever_they_stand():
    """The content check: a test, validation or held-out verse is found in any text by its words,
    whatever its case and spacing; one that a training book also holds word for word is training
    text, and one shorter than LEAK_MIN_WORDS is too common to look for."""
    english = {**ENGLISH, ("Mark", 1, 2): "And God said, Let there be light: and there was light.",
               ("Mark", 1, 3): "Jesus wept."}
    held_out = bibles.held_out_verses({"en": english, "es": SPANISH})
    assert set(held_out) == {("en", "Ruth", 1, 1), ("en", "Mark", 1, 1), ("en", "Acts", 1, 1),
                             ("en", "Acts", 1, 2), ("en", "Heb", 1, 1), ("es", "Ruth", 1, 1),
                             ("es", "Mark", 1, 1), ("es", "Acts", 1, 1)}  # es Heb 1:1: 5 words
    documents = [("clean", "\n".join(english[key] for key in english if key[0] in ("Gen", "Rev"))),
                 ("planted", "Some prose. the FORMER treatise  have I made,\nO Theophilus, and more."),
                 ("cut short", "The former treatise have I made, O")]
    assert bibles.find_leaks(held_out, documents) == [(("en", "Acts", 1, 1), "planted")]


def test_prepare_checks_its_training_text_for_held_out_verses_by_content(tmp_path, monkeypatch):
    """prepare.py with a bible source checks the shards, bins and tokenizer corpus it wrote: a clean
    corpus passes, an Acts verse planted in another source's document stops it with the verse and
    the file named, and one planted in train.bin afterwards is found there too."""
    english = {**ENGLISH, **{("Jonah", *key): text for key, text in JONAH.items()}}
    editions = {bibles.SWORD_MODULES["en"]: english, bibles.SWORD_MODULES["es"]: SPANISH}
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])
    (tmp_path / "corpus").mkdir()
    corpus = make_corpus(tmp_path / "corpus")
    bible_source = dict(kind="bible", name="bible", languages=["en", "es"], weight=0.1)
    clean = prepare.run(prepare_config(corpus, tmp_path / "data", dataset="clean", vocab_size=300,
                                       sources=[dict(kind="jsonl", name="prose", weight=1.0,
                                                     paths=[str(corpus / "docs.jsonl")]), bible_source]))
    assert bibles.check_held_out("unused", [clean]) > 0
    with open(corpus / "docs.jsonl", "a") as f:  # a document of ordinary prose that quotes Acts 1:1
        f.write(json.dumps({"id": "quote", "text": prose_doc(random.Random(7)) + " " + ENGLISH["Acts", 1, 1]
                            + " " + prose_doc(random.Random(8))}) + "\n")
    with pytest.raises(tasks.TaskError, match=r"held-out verse\(s\) found in training text: en Acts 1 1 "
                                              r"in planted/curated/prose-00000.jsonl.gz"):
        prepare.run(prepare_config(corpus, tmp_path / "data", dataset="planted", vocab_size=300,
                                   sources=[dict(kind="jsonl", name="prose", weight=1.0,
                                                 paths=[str(corpus / "docs.jsonl")]), bible_source]))
    tokenizer = Tokenizer.load(clean / "tokenizer.json")
    meta = json.loads((clean / "meta.json").read_text())
    planted = np.concatenate([np.fromfile(clean / "train.bin", dtype=meta["dtype"]),
                              np.array(tokenizer.encode(SPANISH["Acts", 1, 1]), dtype=meta["dtype"])])
    planted.tofile(clean / "train.bin")
    with pytest.raises(tasks.TaskError, match=r"es Acts 1 1 in clean/train.bin"):
        bibles.check_held_out("unused", [clean])


def test_the_translation_task_checks_its_training_pairs_by_content(data_root, tmp_path, monkeypatch):
    """prepare.py's translation task: the pairs of the training books pass the content check; with
    the book split broken so that every book lands in the training pairs, it stops and names the
    first verses found (the validation book Ruth's, then Mark's)."""
    english = {**ENGLISH, **{("Jonah", *key): text for key, text in JONAH.items()}}
    editions = {bibles.SWORD_MODULES["en"]: english, bibles.SWORD_MODULES["es"]: SPANISH}
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])
    task = ["--task=translation", f"--data_root={tmp_path}",
            f"--tokenizer_from={data_root / 'tiny' / 'tokenizer.json'}"]
    out = prepare.run(configurator.parse(prepare.SPEC, task + ["--dataset=clean"]))
    assert [json.loads(line)["book"] for line in (out / "train.jsonl").read_text().splitlines()] == ["Gen"] * 4
    split = bibles.split_by_book
    monkeypatch.setattr(bibles, "split_by_book", lambda rows, split_of: {**split(rows, split_of), "train": rows})
    with pytest.raises(tasks.TaskError, match=r"held-out verse\(s\) found in training text: en Ruth 1 1 "
                                              r"in leaky/train\.bin, document 4"):
        prepare.run(configurator.parse(prepare.SPEC, task + ["--dataset=leaky"]))


def test_each_score_comes_with_its_95_percent_bootstrap_interval(tmp_path):
    """corpus_scores' intervals are sacrebleu's paired bootstrap (1,000 resamples, its fixed seed):
    the command line's --confidence gives the same half widths, and the scores are the corpus
    scores themselves; a system that scores every pair alike has no spread."""
    rng = random.Random(0)
    words = ["el", "la", "de", "que", "y", "a", "en", "los", "se", "del"]
    references = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(60)]
    hypotheses = [" ".join(w if rng.random() < 0.6 else rng.choice(words) for w in r.split())
                  for r in references]
    scores = task_eval.corpus_scores(hypotheses, references)
    (tmp_path / "refs.txt").write_text("\n".join(references) + "\n")
    (tmp_path / "hyps.txt").write_text("\n".join(hypotheses) + "\n")
    command = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "refs.txt"), "-i",
                              str(tmp_path / "hyps.txt"), "-m", "bleu", "chrf", "--confidence", "-w", "4"],
                             capture_output=True, text=True, check=True)
    bleu, chrf = json.loads(command.stdout)
    assert (round(scores["bleu"], 4), round(scores["bleu_ci95"], 4)) == (bleu["score"], bleu["confidence_var"])
    assert (round(scores["chrf"], 4), round(scores["chrf_ci95"], 4)) == (chrf["score"], chrf["confidence_var"])
    assert 0 < scores["bleu_ci95"] < scores["bleu"] and "bs:1000" in scores["bleu_signature"]
    assert task_eval.corpus_scores(references, references)["bleu_ci95"] == 0.0


def test_a_book_split_of_ones_own_moves_a_book_out_of_training_everywhere(monkeypatch):
    """book_split's changes: a training book made the test book leaves the training pairs, the
    bible source and the content check's training text alike; a wrong set or book is refused."""
    english = {**ENGLISH, ("Matt", 1, 1): "The book of the generation of Jesus Christ, the son of David,"}
    spanish = {**SPANISH, ("Matt", 1, 1): "LIBRO de la generación de Jesucristo, hijo de David, hijo de Abraham."}
    split_of = bibles.book_split({"Matt": "test", "Acts": None})
    assert split_of["Matt"] == "test" and split_of["Acts"] is None and split_of["Ruth"] == "val"
    rows, _ = bibles.aligned_verses(english, spanish)
    assert [key for key, _, _ in bibles.split_by_book(rows, split_of)["test"]] == [("Matt", 1, 1)]
    assert ("en", "Matt", 1, 1) in bibles.held_out_verses({"en": english}, split_of)
    assert ("en", "Matt", 1, 1) not in bibles.held_out_verses({"en": english})
    editions = {bibles.SWORD_MODULES["en"]: english, bibles.SWORD_MODULES["es"]: spanish}
    monkeypatch.setattr(bibles, "read_bible", lambda root, module: editions[module])
    spec = sources.resolve_sources([dict(kind="bible", book_split={"Matt": "test"})])[0]
    assert not [doc for doc, _, _ in sources.iter_source(spec, None) if "Matt" in doc]
    assert bibles.translation_task("unused", split_of)[0]["test"][0][2]["book"] == "Matt"
    with pytest.raises(tasks.TaskError, match="each book's set must be 'train', 'val', 'test' or None"):
        bibles.book_split({"Luke": "held out"})
    with pytest.raises(tasks.TaskError, match=r"the Bible does not have: \['Lk'\]"):
        bibles.translation_task("unused", bibles.book_split({"Lk": "test"}))


def test_intervals_on_a_handful_of_pairs():
    """Three pairs, one answered exactly: resamples that score 0 and others that do not (sacrebleu
    2.6's own bootstrap fails here, mixing float and float32 in its mean)."""
    scores = task_eval.corpus_scores(["200 200", "1", "x"], ["200 200", "201 201", "202 202"])
    assert scores["chrf"] > 0 and scores["chrf_ci95"] > 0 and scores["bleu_ci95"] >= 0


def test_each_direction_is_scored_against_its_own_training_pairs(data_root, tmp_path):
    """Retrieval answers an English -> Spanish verse from the English -> Spanish training pairs
    only: a Spanish -> English pair whose source shares more words is never the answer. Each
    direction's files and scores hold its own pairs."""
    def pair(direction, source, response):
        return {"prompt": f"{direction}:\n{source}", "response": response, "source": source,
                "direction": direction}
    train_pairs = [pair("en-es", "a dog", "RIGHT"), pair("en-es", "a cat", "OTHER"),
                   pair("es-en", "the dog ran far", "WRONG"), pair("es-en", "el gato", "the cat")]
    test_pairs = [pair("en-es", "the dog ran far", "RIGHT now"), pair("es-en", "el gato duerme", "the cat sleeps"),
                  pair("es-en", "gato negro", "a black cat")]
    for name, rows in (("train", train_pairs), ("test", test_pairs)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = Tokenizer.load(data_root / "tiny" / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval()
    scores = task_eval.evaluate_task(model, tokenizer, tmp_path, tmp_path / "test.jsonl", tmp_path, 4)
    assert {group: row["pairs"] for group, row in scores.items()} == {"en-es": 1, "es-en": 2}
    read = lambda name: (tmp_path / name).read_text().splitlines()  # noqa: E731
    assert read("en-es.retrieval.txt") == ["RIGHT"]
    assert read("es-en.retrieval.txt") == ["the cat", "the cat"]
    assert read("en-es.copy.txt") == ["the dog ran far"]
    assert read("es-en.references.txt") == ["the cat sleeps", "a black cat"]
    assert scores["en-es"]["retrieval"]["bleu"] == pytest.approx(
        task_eval.corpus_scores(["RIGHT"], ["RIGHT now"])["bleu"])
