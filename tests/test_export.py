"""export.py: a checkpoint loads in Hugging Face transformers and computes the same logits, token
ids and greedy text: GPT-2's recipe as GPT2LMHeadModel with no project code, train.py's default
recipe and every other option (untied head, soft-cap) through the folder's own modeling file."""
import json
import random

import numpy as np
import pytest
import torch

from core import checkpoint
import export
from model import left_pad
from test_train import GPT2, SPEEDRUN, run

transformers = pytest.importorskip("transformers", reason="export.py's tests need transformers")


RECIPES = {"gpt2": GPT2, "default": [], "speedrun": SPEEDRUN}


@pytest.fixture(scope="module", params=list(RECIPES))
def exported(request, data_root, tmp_path_factory):
    """(model, tokenizer, hf_model, hf_tokenizer, folder, recipe) of a short run of each recipe."""
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    run(data_root, out / "run", "--max_iters=30", *RECIPES[request.param])
    export.main([f"--ckpt={out / 'run' / 'last.pt'}", f"--out={out / 'hf'}"])
    model, tokenizer, _ = checkpoint.load_model(out / "run" / "last.pt")
    trust = request.param != "gpt2"  # GPT-2's loads as transformers' own code
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=trust).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf", trust_remote_code=trust)
    return model, tokenizer, hf_model, hf_tokenizer, out, request.param


def texts(data_root):
    """Real text: the prepared corpus's own documents, code and prose, plus hard cases."""
    import prepare
    docs = [d["text"] for source in ("code", "prose")
            for d in list(prepare.iter_curated(data_root / "tiny" / "curated", source))[:20]]
    rng = random.Random(0)
    alphabet = "aé漢🙂 \n\t'\"sllveremd0123.,;:-_()[]{}<>=+*/\\|!?#$%&@^~`\u00a0\u200b"
    hard = ["", " ", "  leading spaces", "trailing  \n\n", "I'll've we're", "<|endoftext|> inside",
            "\r\n\r\nwindows", "a" * 300, "x = 1_000_000 + 3.14e-10", "naïve café Ελληνικά русский"]
    return docs + hard + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
                          for _ in range(100)]


def test_the_folder_is_transformers_own_or_carries_its_model(exported):
    *_, out, recipe = exported
    files = {p.name for p in (out / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((out / "hf" / "config.json").read_text())
    if recipe == "gpt2":
        assert not [f for f in files if f.endswith(".py")]  # nothing to trust_remote_code
        assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    else:
        assert [f for f in files if f.endswith(".py")] == ["modeling_mini_lm.py"]
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mini_lm.MiniLMForCausalLM"
        source = (out / "hf" / "modeling_mini_lm.py").read_text()
        imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                    if line.startswith(("import ", "from "))}
        assert imported == {"torch", "transformers"}  # none of this project


def test_logits_equal_on_random_ids_and_real_text(exported, data_root):
    model, tokenizer, hf_model, *_ = exported
    block, vocab = model.config.block_size, model.config.vocab_size
    torch.manual_seed(0)
    batches = [torch.randint(0, vocab, (3, block)), torch.randint(0, vocab, (2, 7))]
    real = [tokenizer.encode(t)[:block] for t in texts(data_root)[:10]]
    batches += [torch.tensor([ids]) for ids in real if ids]
    with torch.no_grad():
        for idx in batches:
            ours = model(idx)[0]
            theirs = hf_model(idx).logits
            torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_the_tokenizer_gives_the_same_ids(exported, data_root):
    _, tokenizer, _, hf_tokenizer, *_ = exported
    for text in texts(data_root):
        ours = tokenizer.encode(text)
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ours, text[:80]
        assert hf_tokenizer.decode(ours) == tokenizer.decode(ours)
    assert hf_tokenizer.eos_token_id == tokenizer.eot_id
    assert hf_tokenizer.convert_tokens_to_ids("<|endoftext|>") == tokenizer.eot_id


def test_greedy_generate_gives_the_same_text(exported):
    model, tokenizer, hf_model, hf_tokenizer, *_ = exported
    for prompt in ("The river", "def step_3(value, scale=3):", "A"):
        # within the context: GPT-2's learned positions end there (model.py would slide on)
        new = model.config.block_size - len(tokenizer.encode(prompt))
        ours = model.generate([tokenizer.encode(prompt)], new, temperature=0,
                              stop_tokens=[tokenizer.eot_id])[0]
        ids = hf_tokenizer(prompt, return_tensors="pt").input_ids
        theirs = hf_model.generate(ids, max_new_tokens=new, do_sample=False)[0, ids.shape[1]:].tolist()
        if theirs and theirs[-1] == tokenizer.eot_id:
            theirs = theirs[:-1]  # transformers keeps the end-of-text token it stopped at
        assert theirs == ours, prompt
        assert hf_tokenizer.decode(theirs) == tokenizer.decode(ours)


def test_left_padded_batches_equal_model_py(exported):
    """With an attention_mask, padded keys are invisible and positions count from each sequence's
    first token, as in model.py's left-padded batches."""
    model, tokenizer, hf_model, *_, recipe = exported
    prompts = [tokenizer.encode("The river runs"), tokenizer.encode("def f(x):\n    return x"),
               tokenizer.encode("A")]
    idx, pad = left_pad(prompts, "cpu")
    mask = (torch.arange(idx.shape[1])[None] >= pad[:, None]).long()
    # GPT2LMHeadModel takes the positions as position_ids; modeling_mini_lm.py counts them itself
    positions = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if recipe == "gpt2" else {}
    with torch.no_grad():
        ours = model(idx, pad_lengths=pad)[0]
        theirs = hf_model(idx, attention_mask=mask, **positions).logits
    for row, p in enumerate(pad.tolist()):  # the real positions; what padding rows compute is unread
        torch.testing.assert_close(theirs[row, p:], ours[row, p:], rtol=1e-4, atol=1e-4)


def test_an_out_path_that_is_a_file_is_refused(exported, tmp_path, capsys):
    *_, out, _ = exported
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(SystemExit):
        export.main([f"--ckpt={out / 'run' / 'last.pt'}", f"--out={taken}"])
    assert "is a file, not a folder" in capsys.readouterr().err and taken.read_text() == "mine"


def test_merges_are_recovered_from_the_merge_order():
    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b"bc", b"abcbc", b"cab"]
    assert export.recover_merges(tokens) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"),
                                             (b"abc", b"bc"), (b"c", b"ab")]
    spell = export.byte_to_unicode()
    assert len(set(spell.values())) == 256 and spell[ord("A")] == "A" and spell[ord(" ")] == "Ġ"
    assert np.all([c.isprintable() for c in spell.values()])
