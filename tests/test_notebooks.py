"""The three notebooks, executed top to bottom against tiny outputs of the real scripts (prepare.py's
folder, train.py runs, eval.py's folder), and the loud failure when an output is missing."""
import json
from pathlib import Path

import numpy as np
import pytest

import eval as evaluate_script
from test_train import GPT2, log_records, run

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


# Run in the kernel after the notebook's first cell: every plt.show() first records what each open
# figure draws (per axis: labels, each line's points by label, each bar group's lengths by label, the
# y tick labels), so the tests check the figures' data, not only that images were drawn.
RECORD_FIGURES = """
import matplotlib.pyplot as _plt
_figures, _show = [], _plt.show
def _record_and_show(*args, **kwargs):
    for number in _plt.get_fignums():
        figure = _plt.figure(number)
        figure.canvas.draw()
        _figures.append([{
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "title": ax.get_title(),
            "lines": {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()},
            "bars": {bars.get_label(): [bar.get_width() for bar in bars.patches]
                     for bars in ax.containers},
            "yticks": [tick.get_text() for tick in ax.get_yticklabels()]} for ax in figure.axes])
    return _show(*args, **kwargs)
_plt.show = _record_and_show
"""
PRINT_FIGURES = 'print("FIGURES " + __import__("json").dumps(_figures))'


def execute(name):
    """Run a notebook (not saved back) in its own kernel, in notebooks/ as Jupyter would, with the
    figure recorder around it."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(RECORD_FIGURES))
    nb.cells.append(nbformat.v4.new_code_cell(PRINT_FIGURES))
    nbclient.NotebookClient(nb, timeout=280, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def figures(nb):
    """What each figure the notebook showed draws, in order: a list of axes per figure. The kernel
    may send one long print as several stdout messages (it did on a loaded machine): joined here."""
    line = "".join(out["text"] for out in nb.cells[-1]["outputs"] if out.get("name") == "stdout")
    return json.loads(line.removeprefix("FIGURES "))


def assert_points(drawn, expected):
    np.testing.assert_allclose(np.array(drawn, dtype=float), np.array(expected, dtype=float),
                               rtol=1e-12)


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
    nb = execute("01_data_exploration.ipynb")
    text, images = outputs(nb)
    assert "| code |" in text and "| prose |" in text and "near_duplicate" not in text.split("rule")[0]
    assert "tokens per word" in text and "bytes per token" in text and images >= 2
    lengths, dropped = figures(nb)
    stats = json.loads((data_root / "tiny" / "curated" / "stats.json").read_text())
    assert [ax["title"] for ax in lengths] == list(stats)  # one axis per source
    for ax, s in zip(lengths, stats.values()):
        assert_points([y for _, y in ax["lines"]["collected"]], s["length_histogram_in"])
        assert_points([y for _, y in ax["lines"]["kept"]], s["length_histogram_kept"])
    rules = sorted({rule for s in stats.values() for rule in s["dropped"]})
    (ax,) = dropped
    assert ax["yticks"] == rules and list(ax["bars"]) == list(stats)
    for source, s in stats.items():  # each source's stacked bars: its documents dropped per rule
        assert ax["bars"][source] == [s["dropped"].get(rule, 0) for rule in rules]


def test_training_analysis(runs, monkeypatch):
    monkeypatch.setenv("MINI_LM_RUNS", f"{runs / 'default'},{runs / 'gpt2'}")
    nb = execute("02_training_analysis.ipynb")
    text, images = outputs(nb)
    assert "2 evaluations" not in text and "| muon |" in text and "| adamw |" in text
    assert images >= 3
    losses, schedules, gaps = figures(nb)
    assert [ax["xlabel"] for ax in losses] == ["step", "tokens seen (millions)", "minutes"]
    for folder in (runs / "default", runs / "gpt2"):  # each run's lines: its log.jsonl records
        evals, steps = log_records(folder, "eval"), log_records(folder, "step")
        name = str(folder)
        assert_points(losses[0]["lines"][name], [(e["iter"], e["val_loss"]) for e in evals])
        assert_points(losses[1]["lines"][name], [(e["tokens"] / 1e6, e["val_loss"]) for e in evals])
        for ax, key in zip(schedules, ("lr", "grad_norm", "tokens_per_s")):
            assert_points(ax["lines"][name], [(r["iter"], r[key]) for r in steps])
        assert_points(gaps[0]["lines"][name],
                      [(e["iter"], e["val_loss"] - e["train_loss"]) for e in evals])


def test_evaluation(runs, monkeypatch):
    monkeypatch.setenv("MINI_LM_EVAL", str(runs / "eval"))
    nb = execute("03_evaluation.ipynb")
    text, images = outputs(nb)
    assert "kneser_ney" in text and "bleu" in text and "| model |" in text and images >= 1
    baselines = json.loads((runs / "eval" / "eval.json").read_text())["baselines"]
    ((ax,),) = figures(nb)
    (widths,) = ax["bars"].values()
    assert ax["yticks"] == list(baselines)
    assert_points(widths, [b["bits_per_byte"] for b in baselines.values()])


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
