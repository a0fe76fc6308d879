"""Plain-Python configuration shared by the top-level scripts.

Each script declares its keys once, as ``{name: (default, help)}``. The command line may name config
files (plain Python: ``dataset = "mini_lm"``) and ``--key=value`` or ``--key value`` overrides,
applied left to right (a boolean ``--key`` alone means True):

    python prepare.py config/prepare_mini_lm.py --workers=2 --target_tokens=5_000_000

Values are parsed as Python literals (``--languages="['en', 'fr']"``); anything that is not a literal
is taken as a string. A key the script does not know, or a value of the wrong type, stops with a
message that names it (and the nearest known key).
"""

import ast
import contextlib
import difflib
import sys
from pathlib import Path


class ConfigError(ValueError):
    pass


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(key, value, default, where):
    """Return value if it fits the type of the key's default, else raise a ConfigError."""
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {key}={value!r} must be True or False")
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{where}: {key}={value!r} must be {expected.__name__}, not a bool")
    if expected is str and not isinstance(value, str):
        return str(value)  # --dataset=2024 means the string "2024"
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: {key}={value!r} must be {expected.__name__} "
                          f"(the default is {default!r})")
    return value


def _parse_literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_config_file(path, keys, ignore_unknown=False):
    try:
        source = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:
        raise ConfigError(f"config file {path} failed to run: {type(e).__name__}: {e}") from None
    values = {}
    for name, value in namespace.items():
        if name.startswith("_") or type(value).__name__ in ("module", "function", "type"):
            continue
        if name not in keys:
            if ignore_unknown:
                continue
            raise ConfigError(f"{path}: unknown key '{name}'.{_suggest(name, keys)}")
        values[name] = value
    return values


def format_help(spec, description, prog):
    lines = [f"usage: python {prog} [config.py ...] [--key=value | --key value ...]", "", description.strip(), "",
             "keys (default, then meaning):"]
    for key, (default, text) in spec.items():
        lines.append(f"  --{key}={default!r}")
        lines.append(f"      {text}")
    return "\n".join(lines)


def parse(spec, argv=None, description="", prog=None, ignore_unknown_in_files=False):
    """Resolve a config from defaults, config files and --key=value overrides; returns a dict.

    ignore_unknown_in_files: skip config-file keys this script does not use (a tool that reads
    another script's config, such as model.py reading a training config), instead of failing."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or sys.argv[0]
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(spec, description, prog))
        raise SystemExit(0)
    config = {key: default for key, (default, _) in spec.items()}
    i, bare_flag = 0, None  # bare_flag: the boolean --key just before, given no value
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if bare_flag and not arg.endswith(".py"):
                raise ConfigError(f"--{bare_flag} is True or False: {arg!r} is neither (nor a "
                                  f"config file); write --{bare_flag} False or --{bare_flag}=False")
            bare_flag = None
            for key, value in read_config_file(arg, list(spec), ignore_unknown_in_files).items():
                config[key] = _coerce(key, value, spec[key][0], arg)
            continue
        key, has_value, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in spec:
            raise ConfigError(f"unknown option --{key}.{_suggest(key, list(spec))} "
                              f"(--help lists every key)")
        is_bool = isinstance(spec[key][0], bool)
        if not has_value:  # --key VALUE, or a boolean --key alone (True)
            following = argv[i] if i < len(argv) else None
            if is_bool:
                has_value = following is not None and following.lower() in ("true", "false")
            else:
                if following is None or following.startswith("--"):
                    raise ConfigError(f"--{key} needs a value: --{key}=VALUE or --{key} VALUE")
                has_value = True
            if has_value:
                text, i = following, i + 1
        bare_flag = key if is_bool and not has_value else None
        if not has_value:
            value = True
        elif is_bool and text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            value = _parse_literal(text)
        config[key] = _coerce(key, value, spec[key][0], f"--{key}")
    return config


@contextlib.contextmanager
def errors_exit(*errors):
    """For scripts only (library code raises): inside, the errors named, which say what is wrong and
    how to fix it, print as one line `error: <message>` on stderr and exit with status 2, where a
    traceback would bury the message."""
    try:
        yield
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_or_exit(spec, argv=None, description="", prog=None, ignore_unknown_in_files=False):
    """parse(), but a ConfigError prints one line and exits with status 2 (no traceback)."""
    with errors_exit(ConfigError):
        return parse(spec, argv, description, prog, ignore_unknown_in_files)


PREPARE_DEFAULT_DATASET = "demo"  # prepare.py's default `dataset` (a test keeps the two equal)


def prepare_command(folder):
    """The command that builds the prepared dataset folder data_root/dataset: the shipped
    config/prepare_*.py whose `dataset` is this one, prepare.py alone for its default, otherwise
    prepare.py with that name (the user supplies the sources)."""
    folder = Path(folder)
    root = "" if folder.parent == Path("data") else f" --data_root={folder.parent}"
    for path in sorted((Path(__file__).resolve().parent.parent / "config").glob("prepare_*.py")):
        if read_config_file(path, ["dataset"], ignore_unknown=True).get("dataset") == folder.name:
            return f"python prepare.py config/{path.name}{root}"
    if folder.name == PREPARE_DEFAULT_DATASET:
        return f"python prepare.py{root}"
    return f"python prepare.py --dataset={folder.name}{root} (with your own sources: --help)"
