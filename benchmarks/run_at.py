"""Run a benchmark script of this tree against the supirkit code of another commit ("before" figures).

    .venv/bin/python benchmarks/run_at.py 40f8a3e benchmarks/bench_curate.py --rounds 3

The commit's tree is exported (``git archive``) to a temporary folder and every ``supirkit.*`` package is
served from it (the ``package-dir`` mapping of that commit's pyproject.toml, put in front of the editable
install's), so the script, its inputs and its floors are today's while the code it measures is the
commit's. Runs in one process (and the processes it forks); the same virtual environment.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import io
import runpy
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


class _TreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``supirkit`` and its subpackages in an exported tree, before any other finder."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.mapping:
            folder = self.mapping[fullname]
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
        parent = fullname.rpartition(".")[0]
        if parent in self.mapping:
            return importlib.machinery.PathFinder.find_spec(fullname, [str(self.mapping[parent])])
        return None


def export(commit: str, dest: Path) -> dict[str, Path]:
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    dirs = tomllib.loads((dest / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: dest / folder for name, folder in dirs.items()}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    commit, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory(prefix="supirkit-at-") as tmp:
        mapping = export(commit, Path(tmp))
        sys.meta_path.insert(0, _TreeFinder(mapping))
        for name in [m for m in sys.modules if m == "supirkit" or m.startswith("supirkit.")]:
            del sys.modules[name]
        sys.argv = [script, *args]
        print(f"[run_at] supirkit from {commit} ({mapping['supirkit.datapipe']})", file=sys.stderr)
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
