"""CI's check of the README's install lines ("Without make"), as a user runs them on a fresh machine:
a new virtual environment with the pip that `python3 -m venv` ships, then each line in order, every
`pip install -r` one resolved by pip without installing (--dry-run --report). The line with both
requirement files must resolve to every package requirements.lock pins (what `make setup` installs),
and the main-requirements line to a part of them: a package an older pip leaves out fails here.

    python3 .ci/check_install.py        # from the project's root; needs the package registry
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("requirements.txt", "requirements-extra.txt", "requirements.lock")
PIP_OWN = {"pip", "setuptools", "wheel"}


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def readme_lines():
    """The commands of the bash block that follows "Without make" in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Without make.*?```bash\n(.*?)```", text, re.S)
    if not block:
        raise SystemExit("error: README.md has no ```bash block after 'Without make'")
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def resolved(line, folder, report):
    """The normalised names a `pip install -r` line resolves to (dry run)."""
    result = subprocess.run(f"{line} --dry-run --quiet --report {report}", shell=True, cwd=folder,
                            capture_output=True, text=True, timeout=1500)
    if result.returncode:
        raise SystemExit(f"error: `{line}` failed:\n{result.stderr[-3000:]}")
    return {normalise(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def main():
    pins = {normalise(line.split("==")[0]) for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in FILES:
            shutil.copy(ROOT / name, folder / name)
        for number, line in enumerate(readme_lines()):
            if "pip install" in line and " -r " in line:
                names = resolved(line, folder, folder / f"report{number}.json")
                found = []
                if "requirements-extra.txt" in line and pins - PIP_OWN - names:
                    found.append(f"`{line}` leaves out {sorted(pins - PIP_OWN - names)}, which make "
                                 "setup installs")
                if names - pins:
                    found.append(f"`{line}` installs what the lock does not pin: {sorted(names - pins)}")
                print(f"{'NOT OK' if found else 'ok'}: {line} ({len(names)} packages)")
                problems += found
            else:
                subprocess.run(line, shell=True, cwd=folder, check=True, capture_output=True, timeout=300)
                print(f"ran: {line}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
