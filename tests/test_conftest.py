"""tests/conftest.py's own rules, run on a throwaway test file in a separate pytest."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path, ci):
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\ndef test_passes():\n    pass\n\n"
        "def test_needs_what_is_missing():\n    pytest.skip('a browser is not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", "test_one.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_under_ci_and_says_why(tmp_path):
    local = run_pytest(tmp_path, "")
    assert local.returncode == 0, local.stdout
    assert "a browser is not installed" in local.stdout  # -rs: the reason is printed
    ci = run_pytest(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "CI=true: 1 skipped" in ci.stdout and "test_needs_what_is_missing" in ci.stdout
