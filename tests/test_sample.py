"""sample.py: the printed text against model.generate, seeds, prompt files, dtypes, UTF-8 held back
until whole, bad input."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import checkpoint
import sample
from test_train import GPT2, run
from core import inference

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def out_dir(ckpt, tmp_path_factory):
    """A folder whose best.pt (sample.py's default) is conftest's 30-step checkpoint."""
    out = tmp_path_factory.mktemp("sample_out")
    (out / "best.pt").symlink_to(ckpt)
    return out


def draw(out_dir, capsys, *extra):
    """sample.py on the CPU: the expected texts are the model's there (on CUDA another generator
    draws the samples and other kernels round differently)."""
    texts = sample.main([f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=12", *extra])
    return texts, capsys.readouterr()


def test_greedy_sample_equals_model_generate(out_dir, capsys):
    texts, printed = draw(out_dir, capsys, "--start=The river", "--temperature=0", "--num_samples=2")
    model, tokenizer, _ = checkpoint.load_model(out_dir / "best.pt")
    expected = model.generate([tokenizer.encode("The river")], 12, temperature=0,
                              stop_tokens=[tokenizer.eot_id])[0]
    assert texts == [tokenizer.decode(expected)] * 2  # greedy: every sample the same
    assert printed.out == ("-" * 72 + "\nThe river" + texts[0] + "\n") * 2
    assert "sample 2:" in printed.err and "tokens/s" in printed.err


def test_sample_i_uses_seed_plus_i(out_dir, capsys):
    three, _ = draw(out_dir, capsys, "--start=A", "--num_samples=3", "--seed=5", "--temperature=1.5")
    third, _ = draw(out_dir, capsys, "--start=A", "--num_samples=1", "--seed=7", "--temperature=1.5")
    again, _ = draw(out_dir, capsys, "--start=A", "--num_samples=3", "--seed=5", "--temperature=1.5")
    assert three == again and three[2] == third[0]
    assert len(set(three)) > 1  # different seeds, different samples (at temperature 1.5)


def test_prompt_from_a_file_and_an_empty_prompt(out_dir, capsys, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("def step_1(value,\n", encoding="utf-8")
    from_file, _ = draw(out_dir, capsys, f"--start=FILE:{prompt}", "--temperature=0", "--num_samples=1")
    inline, _ = draw(out_dir, capsys, "--start=def step_1(value,\n", "--temperature=0", "--num_samples=1")
    assert from_file == inline
    model, tokenizer, _ = checkpoint.load_model(out_dir / "best.pt")
    new_document = model.generate([[tokenizer.eot_id]], 12, temperature=0, stop_tokens=[tokenizer.eot_id])
    empty, _ = draw(out_dir, capsys, "--temperature=0", "--num_samples=1")
    assert empty == [tokenizer.decode(new_document[0])]


def test_bfloat16_weights_and_top_p(out_dir, capsys):
    """The samples are the bf16 model's, drawn from the top 90% of the probability, seed 1337 + i:
    a script that ignored --dtype or --top_p would draw other tokens."""
    texts, printed = draw(out_dir, capsys, "--start=The", "--dtype=bfloat16", "--top_p=0.9",
                          "--top_k=0", "--num_samples=2")
    assert len(texts) == 2 and printed.out.count("-" * 72) == 2
    model, tokenizer, _ = inference.load_for_inference(out_dir / "best.pt", "cpu", "bfloat16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    expected = [tokenizer.decode(model.generate([tokenizer.encode("The")], 12, temperature=0.8,
                                                top_p=0.9, stop_tokens=[tokenizer.eot_id],
                                                seed=1337 + i)[0]) for i in range(2)]
    assert texts == expected
    float32, _, _ = inference.load_for_inference(out_dir / "best.pt", "cpu", "float32")
    assert expected != [tokenizer.decode(float32.generate([tokenizer.encode("The")], 12,
                                                          temperature=0.8, stop_tokens=[tokenizer.eot_id],
                                                          seed=1337 + i)[0]) for i in range(2)]


def test_a_split_utf8_character_is_printed_once_whole():
    class Bytes:  # decodes ids as raw bytes, like the BPE tokenizer's 256 base tokens
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    e_acute = list("é".encode())  # two bytes, arriving one step apart
    steps = [[[ord("a")]], [[ord("a"), e_acute[0]]], [[ord("a"), *e_acute]], [[ord("a"), *e_acute, 0xff]]]
    deltas = list(sample.text_deltas(iter(steps), Bytes()))
    assert deltas == [("a", 1), ("é", 3), ("\ufffd", 4)]  # a byte that never completes shows at the end


@pytest.mark.parametrize("extra, message", [
    (["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["--num_samples=0"], "num_samples=0 must be at least 1"),
    (["--dtype=float8"], "dtype='float8' must be one of"),
    (["--start=FILE:/no/such/prompt.txt"], "start=FILE:/no/such/prompt.txt: cannot read the prompt file"),
    (["--ckpt=/no/such.pt"], "checkpoint /no/such.pt does not exist"),
])
def test_bad_settings_are_named(out_dir, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        sample.main([f"--out_dir={out_dir}", *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_gpt2_recipe_checkpoint_from_the_command_line(data_root, tmp_path):
    run(data_root, tmp_path, "--max_iters=4", *GPT2)
    result = subprocess.run([sys.executable, "sample.py", f"--ckpt={tmp_path / 'last.pt'}",
                             "--start", "The", "--num_samples", "1", "--max_new_tokens", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-" * 72 + "\nThe") and "sample 1:" in result.stderr


def test_compile_gives_the_eager_tokens(out_dir, capsys):
    eager, _ = draw(out_dir, capsys, "--start=The", "--temperature=0", "--num_samples=1",
                    "--max_new_tokens=3")
    torch._dynamo.reset()
    compiled, _ = draw(out_dir, capsys, "--start=The", "--temperature=0", "--num_samples=1",
                       "--max_new_tokens=3", "--compile=True")
    assert compiled == eager
