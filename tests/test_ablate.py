"""bench.py ablate (benchmarks/bench.py ablate): variants trained in turns; the gpt2 variant trains exactly as train.py does."""
import json
import re

import pytest

from benchmarks import ablate
from model import GPT2_RECIPE
from test_train import args, log_records, run


def test_variants_in_turns_and_gpt2_equals_train_py(data_root, tmp_path, capsys):
    common = ["--max_iters=6", "--lr_decay_iters=6", "--eval_interval=3", "--dropout=0.0"]
    results = ablate.main(args(data_root, tmp_path / "ablation", *common,
                               "--variants=gpt2,muon,rotary,all"))
    out = capsys.readouterr().out
    assert set(results["variants"]) == {"gpt2", "muon", "rotary", "all"}
    saved = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert saved["variants"]["all"]["changes"]["optimizer"] == "muon"
    assert saved["variants"]["gpt2"]["changes"]["position"] == "learned"
    assert "| all |" in out and "Kneser-Ney 3-gram" in out and "- muon: '" in out
    # the same steps as train.py's own run of the config under config/gpt2.py
    # (at gpt2_lr_ratio of the config's rates, as bench.py ablate trains GPT-2's recipe)
    tiny = ablate.configurator.parse(ablate.train.SPEC, args(data_root, tmp_path / "plain"))
    rates = [f"--{key}={tiny[key] * ablate.SPEC['gpt2_lr_ratio'][0]!r}" for key in ("learning_rate", "min_lr")]
    plain = run(data_root, tmp_path / "plain", *common, str(ablate.GPT2_CONFIG), *rates)
    curve = saved["variants"]["gpt2"]["curve"]
    assert [(h["iter"], h["val_loss"]) for h in plain["history"]] == [(s, loss) for s, _, loss in curve]
    assert [r["iter"] for r in log_records(tmp_path / "ablation" / "rotary", "eval")] == [0, 3, 6]


def test_unknown_variant_is_named(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.main(args(data_root, tmp_path / "x", "--variants=gpt2,muonn"))
    assert "muonn" in capsys.readouterr().err


def test_gpt2_config_sets_every_recipe_key_to_gpt2_values():
    """config/gpt2.py sets model.GPT2_RECIPE's values (what old checkpoints and nanoGPT's code
    assume), and names every key a CHANGE touches."""
    recipe = ablate.gpt2_recipe()
    changed = {k for change in ablate.CHANGES.values() for k in change}
    assert changed <= set(recipe)
    assert {key: value for key, value in recipe.items() if key in GPT2_RECIPE} == GPT2_RECIPE


def test_leave_out_and_default_variants():
    """all-<change>-<change> is every change but those; default is the config's own recipe."""
    import train
    cfg = {"out_dir": "o", "learning_rate": 8e-3, "min_lr": 8e-4, "gpt2_lr_ratio": 0.25}
    configs = ablate.variant_configs(cfg, ["all", "all-softcap-untied_head", "default"])
    every, left = configs["all"], configs["all-softcap-untied_head"]
    assert every["logit_softcap"] == 15.0 and not every["tied_head"]
    assert left["logit_softcap"] == 0.0 and left["tied_head"]  # GPT-2's values for the two left out
    assert {k: v for k, v in left.items() if k not in ("logit_softcap", "tied_head", "out_dir")} == \
        {k: v for k, v in every.items() if k not in ("logit_softcap", "tied_head", "out_dir")}
    assert all(configs["default"][k] == train.SPEC[k][0] for k in ablate.gpt2_recipe())
    own = ablate.variant_configs({**cfg, "value_embeddings": 2}, ["default", "all"])
    assert own["default"]["value_embeddings"] == 2  # what the config sets over train.py's defaults
    assert own["all"]["value_embeddings"] == 1  # a named change keeps its own value
    rates = ablate.variant_configs(cfg, ["gpt2", "rotary", "all", "all-muon", "default"])
    assert [rates[n]["learning_rate"] for n in rates] == [2e-3, 2e-3, 8e-3, 8e-3, 8e-3]
    assert [rates[n]["min_lr"] for n in rates] == [2e-4, 2e-4, 8e-4, 8e-4, 8e-4]
    for bad in ("all-muonn", "none-softcap", "all+softcap"):
        with pytest.raises(ablate.configurator.ConfigError, match=re.escape(bad)):
            ablate.variant_configs(cfg, ["gpt2", bad])
    with pytest.raises(ablate.configurator.ConfigError, match="gpt2_lr_ratio=0.0 must be above 0"):
        ablate.variant_configs({**cfg, "gpt2_lr_ratio": 0.0}, ["gpt2"])
