"""The three notebooks, executed top to bottom against tiny outputs of the real scripts (prepare.py's
folder, train.py runs, eval.py's folder), and the loud failure when an output is missing."""
from pathlib import Path

import pytest

import eval as evaluate_script
from test_train import GPT2, run

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def execute(name):
    """Run a notebook (not saved back) in its own kernel, in notebooks/ as Jupyter would."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=280, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb):
    """Every text and Markdown output of the notebook, and how many images it drew."""
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + out.get("data", {}).get("text/markdown", ""))
            images += "image/png" in out.get("data", {})
    return "\n".join(texts), images


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """Two tiny runs (the default recipe and GPT-2's) and an eval.py folder for the first."""
    out = tmp_path_factory.mktemp("notebook_runs")
    run(data_root, out / "default", "--max_iters=20", "--eval_interval=10", "--log_interval=5")
    run(data_root, out / "gpt2", "--max_iters=20", "--eval_interval=10", "--log_interval=5", *GPT2)
    evaluate_script.main([f"--ckpt={out / 'default' / 'last.pt'}", f"--out_dir={out / 'eval'}",
                          "--gen_documents=4", "--prompt_tokens=12", "--reference_tokens=8",
                          "--tensorboard=False"])
    return out


def test_data_exploration(data_root, monkeypatch):
    monkeypatch.setenv("MINI_LM_DATA", str(data_root / "tiny"))
    text, images = outputs(execute("01_data_exploration.ipynb"))
    assert "| code |" in text and "| prose |" in text and "near_duplicate" not in text.split("rule")[0]
    assert "tokens per word" in text and "bytes per token" in text and images >= 2


def test_training_analysis(runs, monkeypatch):
    monkeypatch.setenv("MINI_LM_RUNS", f"{runs / 'default'},{runs / 'gpt2'}")
    text, images = outputs(execute("02_training_analysis.ipynb"))
    assert "2 evaluations" not in text and "| muon |" in text and "| adamw |" in text
    assert images >= 3


def test_evaluation(runs, monkeypatch):
    monkeypatch.setenv("MINI_LM_EVAL", str(runs / "eval"))
    text, images = outputs(execute("03_evaluation.ipynb"))
    assert "kneser_ney" in text and "bleu" in text and "| model |" in text and images >= 1


@pytest.mark.parametrize("name, variable, missing", [
    ("01_data_exploration.ipynb", "MINI_LM_DATA", "meta.json is missing: run `python prepare.py`"),
    ("02_training_analysis.ipynb", "MINI_LM_RUNS", "log.jsonl is missing"),
    ("03_evaluation.ipynb", "MINI_LM_EVAL", "eval.json is missing: run `python eval.py"),
])
def test_a_missing_output_stops_the_notebook_with_its_name(tmp_path, monkeypatch, name, variable, missing):
    monkeypatch.setenv(variable, str(tmp_path / "nothing_here"))
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="FileNotFoundError") as error:
        execute(name)
    assert missing in str(error.value)
