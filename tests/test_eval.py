"""eval.py and metrics.py: perplexity against independent computations and known answers, the
n-gram baselines against a direct implementation, generation metrics, the report, bad inputs."""
import csv
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as evaluate_script
from core import metrics
from model import GPT, GPTConfig
from test_train import GPT2, SPEEDRUN, run

ROOT = Path(__file__).resolve().parent.parent


def tiny_model(block=8, vocab=50):
    """Random weights in every matrix: the recipe's zero-initialised projections would make each
    prediction depend on the last token only, and a wrong context would go unnoticed."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@torch.no_grad()
def brute_force_nll(model, tokens, context):
    """Each target j scored alone with the `context` tokens before it (or all, near the start)."""
    out = []
    for j in range(1, len(tokens)):
        x = torch.from_numpy(np.asarray(tokens[max(0, j - context):j]))[None]
        logits = model(x)[0][0, -1].double()
        out.append(float(torch.logsumexp(logits, 0) - logits[tokens[j]]))
    return np.array(out)


def test_non_overlapping_windows_equal_torch_cross_entropy():
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 50, 8 * 5 + 1)
    nll = metrics.sliding_window_nll(model, tokens, stride=8, batch_size=3)
    x = torch.tensor(tokens[:-1]).view(5, 8)
    y = torch.tensor(tokens[1:]).view(5, 8)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x)[0].reshape(-1, 50), y.reshape(-1),
                                                     reduction="none")
    np.testing.assert_allclose(nll, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    assert metrics.perplexity(nll) == pytest.approx(math.exp(expected.mean().item()), rel=1e-5)


def test_stride_one_scores_every_token_with_full_context():
    model = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 50, 23)
    nll = metrics.sliding_window_nll(model, tokens, stride=1, batch_size=4)
    np.testing.assert_allclose(nll, brute_force_nll(model, tokens, 8), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def first_window_nll(model, tokens, stride):
    """Each target t (the prediction of tokens[t + 1]) scored alone, with the inputs of the first
    window that reaches it: windows of block_size inputs start at 0, stride, 2 stride ..., and the
    first whose inputs reach position t starts at the smallest multiple of stride >= t + 1 - block."""
    block, out = model.config.block_size, []
    for t in range(len(tokens) - 1):
        begin = stride * max(0, -(-(t + 1 - block) // stride))
        logits = model(torch.from_numpy(np.asarray(tokens[begin:t + 1]))[None])[0][0, -1].double()
        out.append(float(torch.logsumexp(logits, 0) - logits[tokens[t + 1]]))
    return np.array(out)


def test_every_token_is_scored_once_with_its_windows_context_whatever_the_stride():
    model = tiny_model()
    tokens = np.random.default_rng(2).integers(0, 50, 37)
    for stride in (1, 3, 4, 7, 8):
        nll = metrics.sliding_window_nll(model, tokens, stride=stride, batch_size=3)
        np.testing.assert_allclose(nll, first_window_nll(model, tokens, stride), rtol=1e-5,
                                   atol=1e-6, err_msg=f"stride={stride}")
    with pytest.raises(ValueError, match="stride=9"):
        metrics.sliding_window_nll(model, tokens, stride=9)


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    model = tiny_model(vocab=37)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: the embedding too, so every logit is 0
    nll = metrics.sliding_window_nll(model, np.arange(30) % 37, stride=4)
    assert metrics.perplexity(nll) == pytest.approx(37, rel=1e-6)
    assert metrics.perplexity(metrics.uniform_nll(10, 37)) == pytest.approx(37)


def test_hand_computed_perplexity_and_bits_per_byte():
    # probabilities 1/2, 1/4, 1/8: mean NLL = 2 ln 2, perplexity 4
    nll = np.log([2.0, 4.0, 8.0])
    assert metrics.perplexity(nll) == pytest.approx(4.0)

    class Tok:
        tokens = [b"a", b"bb", b"ccc"]
        special_tokens = {"<|endoftext|>": 3}

    # targets are tokens[1:] = "bb", "ccc", eot: 5 bytes; 6 bits total (log2 2+4+8 = 1+2+3)
    n_bytes = metrics.scored_bytes(np.array([0, 1, 2, 3]), len(nll), Tok())
    assert metrics.bits_per_byte(nll, n_bytes) == pytest.approx(6 / 5)


def kn_reference(train, tokens, vocab, order, d=0.75):
    """Interpolated Kneser-Ney straight from the definition, with dicts."""
    raw = Counter(tuple(train[i:i + order]) for i in range(len(train) - order + 1))
    levels = {order: raw}
    for k in range(order - 1, 0, -1):
        levels[k] = Counter(g[1:] for g in levels[k + 1])

    def prob(history, w):
        k = len(history) + 1
        counts = levels[k]
        if k == 1:
            total = sum(counts.values())
            return max(counts.get((w,), 0) - d, 0) / total + d * len(counts) / total / vocab
        lower = prob(history[1:], w)
        grams = {g: c for g, c in counts.items() if g[:-1] == history}
        s = sum(grams.values())
        if s == 0:
            return lower
        return max(grams.get(history + (w,), 0) - d, 0) / s + d * len(grams) / s * lower

    return np.array([-math.log(prob(tuple(tokens[max(0, j - order + 1):j]), tokens[j]))
                     for j in range(1, len(tokens))])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_matches_the_definition(order):
    rng = np.random.default_rng(order)
    train = rng.integers(0, 6, 300) // np.array([1, 2])[rng.integers(0, 2, 300)]  # skewed counts
    tokens = rng.integers(0, 7, 40)  # includes a token never seen in train (6)
    model = metrics.KneserNey(train, 7, order)
    np.testing.assert_allclose(model.nll(tokens), kn_reference(list(train), list(tokens), 7, order),
                               rtol=1e-10)


def test_kneser_ney_probabilities_sum_to_one():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 5, 200)
    model = metrics.KneserNey(train, 5, 3)
    for history in ([0, 1], [4, 4], [3, 2]):
        total = sum(math.exp(-model.nll(np.array(history + [w]))[-1]) for w in range(5))
        assert total == pytest.approx(1.0, rel=1e-9)


def test_unigram_baseline():
    nll = metrics.unigram_nll(np.array([0, 0, 1]), np.array([0, 2]), 3)
    np.testing.assert_allclose(nll, [-math.log(3 / 6), -math.log(1 / 6)])


def test_generation_metrics_known_answers():
    from eval import score_generations
    refs = ["the cat sat on the mat today", "a dog ran in the park at noon"]
    same = score_generations(["prompt one", "prompt two"], refs, refs)
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    assert same["rouge1"] == same["rouge2"] == same["rougeL"] == pytest.approx(1.0)
    assert "nrefs:1" in same["bleu_signature"]
    different = score_generations(["p", "q"], refs, ["zebra quantum", "violet xylophone"])
    assert different["bleu"] == pytest.approx(0.0, abs=1e-9) and different["rouge1"] == 0.0
    assert metrics.distinct_n(["a b a b"], 1) == 0.5 and metrics.distinct_n(["a b a b"], 2) == 2 / 3
    assert metrics.repetition_rate(["x y z w x y z w"], 4) == pytest.approx(1 / 5)
    assert metrics.repetition_rate(["one two three four five"], 4) == 0.0
    assert metrics.coherence(["red apple"], ["red apple"]) == pytest.approx(1.0)
    assert metrics.coherence(["red apple"], ["blue sky"]) == 0.0
    assert metrics.self_bleu(["same text here ok", "same text here ok"]) == pytest.approx(100.0)


@pytest.mark.parametrize("recipe", [GPT2, [], SPEEDRUN], ids=["gpt2", "default", "speedrun"])
def test_eval_end_to_end_on_a_trained_tiny_model(data_root, tmp_path, recipe):
    run(data_root, tmp_path / "o", "--max_iters=30", "--eval_interval=10", *recipe)
    out = tmp_path / "eval"
    result = evaluate_script.main([f"--ckpt={tmp_path / 'o' / 'best.pt'}", f"--out_dir={out}",
                                   "--gen_documents=4", "--prompt_tokens=16", "--reference_tokens=8"])
    saved = json.loads((out / "eval.json").read_text())
    assert saved["likelihood"] == json.loads(json.dumps(result["likelihood"]))  # saved as returned
    overall, per_source = saved["likelihood"]["overall"], saved["likelihood"]["per_source"]
    assert set(per_source) == {"code", "prose"}
    # the whole is its parts: tokens add up, the loss is their token-weighted mean, and bits per
    # byte is the summed nats over the summed bytes
    assert overall["tokens"] == sum(row["tokens"] for row in per_source.values())
    nats = sum(row["tokens"] * math.log(row["perplexity"]) for row in per_source.values())
    assert overall["loss"] == pytest.approx(nats / overall["tokens"])
    assert overall["perplexity"] == pytest.approx(math.exp(overall["loss"]))
    n_bytes = sum(row["bytes"] for row in per_source.values())
    assert overall["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes)
    for row in per_source.values():
        assert row["bits_per_byte"] == pytest.approx(
            row["tokens"] * math.log(row["perplexity"]) / math.log(2) / row["bytes"])
    assert saved["baselines"]["uniform"]["perplexity"] == pytest.approx(300)
    assert saved["baselines"]["model"]["perplexity"] < saved["baselines"]["uniform"]["perplexity"]
    # bits per byte of every baseline over the same bytes: loss (nats/token) x tokens / ln 2 / bytes
    n_bytes = sum(row["bytes"] for row in saved["likelihood"]["per_source"].values())
    for name, row in saved["baselines"].items():
        assert row["bits_per_byte"] == pytest.approx(
            row["loss"] * row["tokens"] / math.log(2) / n_bytes), name
    assert saved["baselines"]["model"]["bits_per_byte"] == pytest.approx(
        saved["likelihood"]["overall"]["bits_per_byte"])
    # per source, each baseline on that source's bytes; together they make the overall figure
    rows = saved["likelihood"]["per_source"].values()
    for name in ("uniform", "unigram", "kneser_ney"):
        assert sum(r["baselines"][name]["bits_per_byte"] * r["bytes"] for r in rows) == pytest.approx(
            saved["baselines"][name]["bits_per_byte"] * n_bytes), name
    assert all(r["baselines"]["uniform"]["perplexity"] == pytest.approx(300) for r in rows)
    assert saved["generation"]["documents"] == 4 and 0 <= saved["generation"]["bleu"] <= 100
    report = (out / "report.md").read_text()
    assert "## Baselines" in report and "learning_curves.png" in report
    assert (out / "learning_curves.png").exists() and list((out / "tb").iterdir())


def rescore_with_the_scorers_command_lines(folder):
    """BLEU, chrF and the mean ROUGE F1s of references.txt / hypotheses.txt in folder, by
    sacrebleu's and rouge-score's own command lines."""
    sacrebleu = Path(sys.executable).parent / "sacrebleu"
    bleu, chrf = json.loads(subprocess.run(
        [str(sacrebleu), "references.txt", "-i", "hypotheses.txt", "-m", "bleu", "chrf", "-w", "6",
         "--format", "json"], cwd=folder, capture_output=True, text=True, check=True).stdout)
    subprocess.run([sys.executable, "-m", "rouge_score.rouge", "--target_filepattern=references.txt",
                    "--prediction_filepattern=hypotheses.txt", "--output_filename=rouge.csv",
                    "--use_stemmer=true", "--noaggregate"], cwd=folder, capture_output=True, check=True)
    with open(folder / "rouge.csv") as f:
        rows = list(csv.DictReader(f))
    rouge = {key: float(np.mean([float(r[f"{key}-F"]) for r in rows]))
             for key in ("rouge1", "rouge2", "rougeL")}
    return bleu["score"], chrf["score"], rouge, len(rows)


def test_scored_texts_rescore_the_same_with_the_scorers_command_lines(tmp_path):
    references = ["def step(value):\n    return value * 2\n", "The old river-\ncrossed the town.",
                  "A caf\u00e9\r\nin the busy market", "one two three four five six"]
    hypotheses = ["def step(value):\n    return value + 2", "The old river crossed a town.",
                  "A caf\u00e9 in the market\r", ""]
    evaluate_script.write_generations(tmp_path, ["code", "prose", "prose", "prose"],
                                      ["p"] * 4, references, hypotheses)
    expected = evaluate_script.score_generations(["p"] * 4, list(map(metrics.one_line, references)),
                                                 list(map(metrics.one_line, hypotheses)))
    bleu, chrf, rouge, rows = rescore_with_the_scorers_command_lines(tmp_path)
    assert rows == 4 and expected["bleu"] > 10 and expected["rouge1"] > 0.3
    assert bleu == pytest.approx(expected["bleu"], abs=1e-6)
    assert chrf == pytest.approx(expected["chrf"], abs=1e-6)
    for key, value in rouge.items():
        assert value == pytest.approx(expected[key], abs=1e-6), key
    cases = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [c["reference"] for c in cases] == references  # texts as generated, line breaks and all
    assert [c["hypothesis"] for c in cases] == hypotheses


def test_eval_writes_every_generation_case(data_root, tmp_path):
    run(data_root, tmp_path / "o", "--max_iters=20")
    out = tmp_path / "eval"
    result = evaluate_script.main([f"--ckpt={tmp_path / 'o' / 'last.pt'}", f"--out_dir={out}",
                                   "--gen_documents=4", "--prompt_tokens=12", "--reference_tokens=24",
                                   "--temperature=1.0", "--tensorboard=False"])
    g = result["generation"]
    cases = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(cases) == g["documents"] == 4 and {c["source"] for c in cases} == {"code", "prose"}
    assert any("\n" in c["reference"] for c in cases)  # code: the one-line files flatten it
    for name, key in (("references.txt", "reference"), ("hypotheses.txt", "hypothesis")):
        lines = (out / name).read_text().split("\n")
        assert lines[:-1] == [metrics.one_line(c[key]) for c in cases] and lines[-1] == ""
    bleu, chrf, rouge, _ = rescore_with_the_scorers_command_lines(out)
    assert g["bleu"] > 0 and bleu == pytest.approx(g["bleu"], abs=1e-6)
    assert chrf == pytest.approx(g["chrf"], abs=1e-6)
    assert rouge["rougeL"] == pytest.approx(g["rougeL"], abs=1e-6)
    assert "sacrebleu references.txt -i hypotheses.txt" in (out / "report.md").read_text()


def test_eval_on_raw_text_files(data_root, tmp_path):
    run(data_root, tmp_path / "o", "--max_iters=2")
    text = tmp_path / "notes.txt"
    text.write_text("The old town has a market. The river crosses the town. " * 10)
    result = evaluate_script.main([f"--ckpt={tmp_path / 'o' / 'last.pt'}", f"--text=['{text}']",
                                   f"--out_dir={tmp_path / 'e'}", "--tensorboard=False"])
    assert set(result["likelihood"]["per_source"]) == {"text"}
    assert "kneser_ney" not in result["baselines"]  # no train split to count n-grams on


def test_eval_bad_inputs(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_script.main([f"--ckpt={tmp_path / 'missing.pt'}"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    run(data_root, tmp_path / "o", "--max_iters=2")
    other = tmp_path / "other"  # a data folder whose tokenizer differs
    other.mkdir()
    meta = json.loads((Path(data_root) / "tiny" / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(meta))
    tok = json.loads((Path(data_root) / "tiny" / "tokenizer.json").read_text())
    tok["tokens"] = tok["tokens"][:-1]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(SystemExit):
        evaluate_script.main([f"--ckpt={tmp_path / 'o' / 'last.pt'}", f"--data={other}"])
    assert "different tokenizer" in capsys.readouterr().err
    # a prompt longer than the context is cut to block_size - 1 tokens (documented)
    result = evaluate_script.main([f"--ckpt={tmp_path / 'o' / 'last.pt'}", "--prompt_tokens=500",
                                   "--reference_tokens=4", "--gen_documents=2", "--tensorboard=False",
                                   f"--out_dir={tmp_path / 'e2'}"])
    assert result["generation"]["documents"] >= 1


def test_generation_scores_without_the_optional_packages(monkeypatch):
    """A bare GPU machine lacks rouge-score and alt-profanity-check: those rows are left out and
    named, the rest is scored as usual."""
    import sys
    full = evaluate_script.score_generations(["a b"], ["the cat sat"], ["the cat sat"])
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "profanity_check", None)
    bare = evaluate_script.score_generations(["a b"], ["the cat sat"], ["the cat sat"])
    assert set(bare["not_computed"]) == {"rouge1, rouge2, rougeL", "toxicity_rate"}
    assert {k: v for k, v in full.items() if k in bare and k != "not_computed"} == \
        {k: v for k, v in bare.items() if k != "not_computed"}
    assert "rougeL" in full and "rougeL" not in bare and not full["not_computed"]


def test_continuations_stop_at_end_of_text():
    """A continuation ends where the model writes end-of-text (references never cross a document's
    end): the end-of-text id set to a token the model writes a few tokens in, without a stop."""
    from types import SimpleNamespace
    model = tiny_model(block=32, vocab=50)
    free = model.generate([[1, 2, 3]], 10, temperature=1.0, seed=0)[0]  # as generation_task samples
    cut = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i] and t not in (1, 2, 3))
    eot = free[cut]
    tokenizer = SimpleNamespace(eot_id=eot, decode=lambda ids: " ".join(map(str, ids)))
    reference = [t for t in range(50) if t != eot][:10]
    streams = {"prose": np.array([1, 2, 3, *reference, eot])}
    cfg = dict(prompt_tokens=3, reference_tokens=10, gen_documents=1, batch_size=1, temperature=1.0,
               top_k=0, top_p=1.0, seed=0)
    sources, prompts, references, hypotheses = evaluate_script.generation_task(
        model, tokenizer, streams, cfg, "cpu")
    assert prompts == ["1 2 3"] and references == [" ".join(map(str, reference))]
    assert hypotheses == [" ".join(map(str, free[:cut]))]


class IdTokenizer:
    """Token ids as words, so a case's text says which ids it holds."""
    eot_id = 0

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_a_prompt_longer_than_the_context_keeps_its_start_and_the_reference_follows_it():
    """prompt_tokens beyond the context: a case's prompt is its document's first block_size - 1
    tokens, its reference the reference_tokens right after them, and the continuation the model's
    own from that prompt."""
    model = tiny_model(block=16, vocab=60)
    document = np.arange(1, 50)  # ids 1..49, then the end of the document
    streams = {"prose": np.concatenate([document, [0], np.arange(1, 10), [0]])}  # a short one after
    cfg = {"prompt_tokens": 500, "reference_tokens": 4, "gen_documents": 4, "batch_size": 2,
           "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    sources, prompts, references, continuations = evaluate_script.generation_task(
        model, IdTokenizer(), streams, cfg, torch.device("cpu"))
    assert sources == ["prose"]  # the short document has no room for a case
    assert prompts == [" ".join(map(str, range(1, 16)))]
    assert references == ["16 17 18 19"]
    expected = model.generate([list(range(1, 16))], 4, temperature=0, stop_tokens=(0,))[0]
    assert continuations == [" ".join(map(str, expected))]
