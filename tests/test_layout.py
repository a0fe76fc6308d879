"""The tree's rules, checked on every run: no project import name shadows an installed or standard
module, no import cycle, no project import hidden in a function, imports that run down the layers
only, files and functions a reader can hold, a root a reader can take in; and the lock file pins
every requirement and is refreshed by `make lock`."""
import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def import_names():
    """Every name the project puts on sys.path's first entries: root scripts and packages, and the
    test modules (pytest imports them by bare name)."""
    return ({p.stem for p in ROOT.glob("*.py")} | set(PACKAGES)
            | {p.stem for p in (ROOT / "tests").glob("*.py")})


def shadowed(names):
    """{name: [distributions]} for the names that an installed distribution's top-level module (or
    the standard library) also uses."""
    installed = importlib.metadata.packages_distributions()
    return {name: installed.get(name, ["the standard library"]) for name in sorted(names)
            if name in installed or name in sys.stdlib_module_names}


def test_no_project_import_name_shadows_an_installed_module():
    assert shadowed(import_names()) == {}


def test_the_check_sees_a_collision():
    # a top-level kernels/ (the Hugging Face `kernels` distribution, which transformers installs),
    # or numpy.py, would be reported
    assert shadowed({"numpy", "json", "train"}) == {"numpy": ["numpy"], "json": ["the standard library"]}
    if "kernels" in importlib.metadata.packages_distributions():
        assert "kernels" in shadowed({"kernels"})


def project_modules():
    """{dotted module name: path} of the root scripts and every package's modules (tests excluded)."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported_modules(node, modules):
    """The project modules an Import / ImportFrom node names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph():
    """({module: imported project modules}, [function-level imports of project modules])."""
    modules, edges, hidden = project_modules(), {}, []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= imported_modules(node, modules) - {name}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{path.relative_to(ROOT)}:{inner.lineno}" for inner in ast.walk(node)
                           if isinstance(inner, (ast.Import, ast.ImportFrom))
                           and imported_modules(inner, modules)]
    return edges, hidden


def cycle_from(start, edges):
    """One import cycle through start, as a list of modules, or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        name, path = stack.pop()
        for nxt in edges.get(name, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycles_and_no_imports_hidden_in_functions():
    edges, hidden = import_graph()
    assert hidden == []
    cycles = [cycle_from(name, edges) for name in edges]
    assert [c for c in cycles if c] == []


# The layers, top to bottom. A module may import from a lower layer and from its own package, never
# from a higher layer, and a stage package never from another stage package; model.py imports only
# torch and fused_kernels (and the standard library).
STAGE_PACKAGES = {"curation", "training", "serving", "evaluation"}
TOP = {"bench", "benchmarks"}  # the benchmarks measure the scripts, so they may import them


def layer(module):
    """(rank, group) of a project module: a higher rank may import a lower one."""
    top = module.split(".")[0]
    if top in TOP:
        return 5, top
    if top == "fused_kernels":
        return 0, top
    if top == "model":
        return 1, top
    if top == "core":
        return 2, top
    if top in STAGE_PACKAGES:
        return 3, top
    return 4, top  # a script at the root


def layer_violations(edges):
    """['a -> b: why'] for each import that runs up a layer, between stage packages, or between
    scripts."""
    wrong = []
    for module, imported in sorted(edges.items()):
        (rank, group) = layer(module)
        for target in sorted(imported):
            (target_rank, target_group) = layer(target)
            if target_group == group:
                continue
            if target_rank > rank:
                wrong.append(f"{module} -> {target}: upward")
            elif target_rank == rank and rank in (3, 4):
                wrong.append(f"{module} -> {target}: across {'stage packages' if rank == 3 else 'scripts'}")
    return wrong


def test_imports_run_down_the_layers_only():
    edges, _ = import_graph()
    assert {"core", "curation", "training", "serving", "evaluation", "benchmarks"} <= set(PACKAGES)
    assert layer_violations(edges) == []


def test_model_imports_only_torch_and_fused_kernels():
    tree = ast.parse((ROOT / "model.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"torch", "fused_kernels"}


def test_the_layer_check_sees_a_planted_import():
    edges, _ = import_graph()
    planted = {name: set(targets) for name, targets in edges.items()}
    planted["core.atomic"].add("training.optim")      # the core reaching into a stage
    planted["curation.filters"].add("serving.engine")  # one stage into another
    planted["training.optim"].add("train")             # a stage package into a script
    planted["model"].add("core.configurator")          # model.py into anything but fused_kernels
    planted["eval"].add("train")                       # one script into another
    assert layer_violations(planted) == [
        "core.atomic -> training.optim: upward", "curation.filters -> serving.engine: across stage packages",
        "eval -> train: across scripts", "model -> core.configurator: upward", "training.optim -> train: upward"]


def test_the_root_stays_small():
    entries = sorted(p.name for p in ROOT.iterdir() if not p.name.startswith(".")
                     and p.name not in ("data", "out", "__pycache__"))  # what the scripts write
    assert len(entries) <= 25, entries


def test_files_and_functions_a_reader_can_hold():
    long_files, long_functions = [], []
    for path in project_modules().values():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert long_files == [] and long_functions == []


def requirement_names(path):
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(normalise(re.split(r"[<>=!~;\[ ]", line)[0]))
    return names


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path):
    return dict(normalise(line.split("==")[0]) and (normalise(line.split("==")[0]), line.split("==")[1])
                for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_the_lock_pins_every_requirement_exactly():
    pins = lock_pins(ROOT / "requirements.lock")
    wanted = requirement_names(ROOT / "requirements.txt") | requirement_names(ROOT / "requirements-extra.txt")
    assert wanted - set(pins) == set(), "run `make lock` after changing a requirements file"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!]*", version) for version in pins.values()), pins
    assert pins["torch"] == "2.13.0"  # the CPU build's +cpu label dropped: the pin holds everywhere


def write_wheel(folder, name, version):
    """A minimal pure-Python wheel of one empty module, enough for pip to install offline."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        whl.writestr(f"{dist}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def test_make_lock_refreshes_the_pins_from_what_the_registry_serves(tmp_path):
    """`make lock` against a local wheel folder standing for the registry: the newest version it
    serves is written to the lock, with its local label dropped, beside pip's own tools."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "lock-probe", "1.0")
    write_wheel(wheels, "lock-probe", "1.1+cpu")
    (tmp_path / "req.txt").write_text("lock-probe\n")
    lock = tmp_path / "test.lock"
    lock.write_text("lock-probe==0.9\n")
    result = subprocess.run(
        ["make", "-C", str(ROOT), "lock", f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}",
         f"REQUIREMENTS={tmp_path / 'req.txt'}", f"LOCK={lock}",
         f"PIP_OPTIONS=--no-index --find-links {wheels}"],
        capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    pins = [line for line in lock.read_text().splitlines() if not line.startswith("#")]
    assert "lock-probe==1.1" in pins and "lock-probe==0.9" not in pins
    assert {line.split("==")[0] for line in pins} <= {"lock-probe", "pip", "setuptools", "wheel"}
    assert not Path(f"{lock}.tmp").exists() and not (tmp_path / "venv.lock").exists()
