import pytest

from core import configurator
from core.configurator import ConfigError, parse

SPEC = {
    "dataset": ("demo", "name"),
    "workers": (2, "processes"),
    "learning_rate": (1e-3, "lr"),
    "force": (False, "redo"),
    "languages": (["en"], "codes"),
    "seed_text": (None, "anything"),
}


def test_defaults_files_and_overrides_apply_left_to_right(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("import math\nworkers = 4\nlanguages = ['en', 'fr']\n_private = 1\n")
    cfg = parse(SPEC, [str(cfg_file), "--workers=8", "--learning_rate=1", "--force"])
    assert cfg == {"dataset": "demo", "workers": 8, "learning_rate": 1.0, "force": True,
                   "languages": ["en", "fr"], "seed_text": None}
    assert isinstance(cfg["learning_rate"], float)


def test_strings_need_no_quotes_and_numbers_stay_strings_for_string_keys():
    assert parse(SPEC, ["--dataset=wiki"])["dataset"] == "wiki"
    assert parse(SPEC, ["--dataset=2024"])["dataset"] == "2024"
    assert parse(SPEC, ["--workers=1_000"])["workers"] == 1000


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown option --worker.*Did you mean 'workers'"):
        parse(SPEC, ["--worker=2"])


def test_unknown_key_in_config_file_names_the_file(tmp_path):
    cfg_file = tmp_path / "bad.py"
    cfg_file.write_text("learning_rat = 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.py: unknown key 'learning_rat'.*'learning_rate'"):
        parse(SPEC, [str(cfg_file)])


@pytest.mark.parametrize("arg, message", [
    ("--workers=two", "workers='two' must be int"),
    ("--workers=1.5", "workers=1.5 must be int"),
    ("--force=1", "must be True or False"),
    ("--languages=en", "languages='en' must be list"),
    ("--workers", "--workers needs a value"),
    ("--force=yes", "must be True or False"),
])
def test_wrong_types_get_clear_messages(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse(SPEC, [arg])


def test_space_separated_values_work_like_equals(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("workers = 4\n")
    spaced = parse(SPEC, ["--dataset", "out/best.pt", str(cfg_file), "--learning_rate", "-1e-3",
                          "--languages", "['en', 'fr']", "--force"])
    equals = parse(SPEC, ["--dataset=out/best.pt", str(cfg_file), "--learning_rate=-1e-3",
                          "--languages=['en', 'fr']", "--force"])
    assert spaced == equals == {"dataset": "out/best.pt", "workers": 4, "learning_rate": -1e-3,
                                "force": True, "languages": ["en", "fr"], "seed_text": None}


def test_boolean_flags_alone_or_with_a_value():
    assert parse(SPEC, ["--force"])["force"] is True
    assert parse(SPEC, ["--force", "False"])["force"] is False
    assert parse(SPEC, ["--force", "false", "--workers", "3"]) == {**parse(SPEC, []), "workers": 3}
    assert parse(SPEC, ["--force=true"])["force"] is True
    assert parse(SPEC, ["--force", "--workers", "3"])["force"] is True  # the next option is not a value


@pytest.mark.parametrize("argv, message", [
    (["--workers"], "--workers needs a value: --workers=VALUE or --workers VALUE"),
    (["--workers", "--force"], "--workers needs a value"),
    (["--workers", "two"], "workers='two' must be int"),
    (["--wrkers", "2"], "unknown option --wrkers.*Did you mean 'workers'"),
    (["--force", "no"], "--force is True or False: 'no' is neither"),
])
def test_space_separated_errors_match_the_equals_form(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(SPEC, argv)


def test_broken_config_file_is_reported(tmp_path):
    cfg_file = tmp_path / "broken.py"
    cfg_file.write_text("workers = (\n")
    with pytest.raises(ConfigError, match="broken.py failed to run: SyntaxError"):
        parse(SPEC, [str(cfg_file)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse(SPEC, [str(tmp_path / "missing.py")])


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(SPEC, ["--help"], description="Test tool.", prog="tool.py")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Test tool." in text
    for key in SPEC:
        assert f"--{key}=" in text


def test_parse_or_exit_prints_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        configurator.parse_or_exit(SPEC, ["--nope=1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown option --nope")


def test_bench_py_takes_the_same_options_and_errors():
    import bench
    assert bench.parse_args(["serve", "--quick"])[1].quick is True
    assert bench.parse_args(["gpu", "--quick", "False"])[1].quick is False
    with pytest.raises(ConfigError, match="Did you mean 'quick'"):
        bench.parse_args(["serve", "--quik"])
    with pytest.raises(ConfigError, match="unknown suite 'srve'"):
        bench.parse_args(["srve"])


def test_every_benchmark_starts_through_bench_py(capsys):
    """One way in: every suite is an entry of bench.SUITES, the ones with options of their own get
    the arguments as they are and answer --help under bench.py's name."""
    import bench
    assert {"ablate", "kernel_compile", "gpu_run", "model", "gpu"} <= set(bench.SUITES)
    assert bench.parse_args(["ablate", "config/cpu_demo.py", "--variants=gpt2"]) == (
        "ablate", ["config/cpu_demo.py", "--variants=gpt2"])
    for suite in sorted(bench.OWN_OPTIONS):
        with pytest.raises(SystemExit) as exit_info:
            bench.main([suite, "--help"])
        assert exit_info.value.code == 0
        assert f"python bench.py {suite}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"\n  {name} " in listed for name in bench.SUITES)
