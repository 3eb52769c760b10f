"""Fill .whl/ with exactly the wheels benchmarks/gpu_check.py needs on the GPU machine, and check what travels.

    .venv/bin/python benchmarks/fetch_gpu_wheels.py          # or: make gpu-wheels

1. downloads the wheels of benchmarks/gpu_wheels.txt for the GPU machine's platform (CPython 3.12, manylinux
   x86_64; ``pip download --only-binary``), builds the source-only ones here into pure-Python wheels, and
   builds supirkit's own wheel from this tree (``pip wheel --no-deps --no-build-isolation``);
2. removes every other file from .whl/ (two versions of one package stop pip's install there);
3. resolves the requirements of every carried wheel: each must be carried, on the image
   (benchmarks/gpu_image.txt, versions checked where recorded) or skipped in gpu_wheels.txt with its reason;
4. prints the size of what a device run carries, the working tree (tracked and untracked files git does not
   ignore) plus .whl/, and fails above the 64 MiB such a run may carry.

Needs pip and network access to PyPI. Exit code 0 when everything fits.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEST = ".whl"
BUDGET_MIB = 64.0
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                               "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]]
#: The environment the requirements' markers are evaluated in (the GPU machine's Python).
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_wheel_list(path: Path = HERE / "gpu_wheels.txt") -> tuple[dict, set, dict]:
    """(name -> version, names to build from source, skipped name -> reason)."""
    pins, build, skips = {}, set(), {}
    for raw in path.read_text().splitlines():
        line, _, comment = raw.partition("#")
        words = line.split()
        if not words:
            continue
        if words[0] == "skip":
            skips[normalise(words[1])] = comment.strip()
            continue
        name, version = words[0].split("==")
        pins[normalise(name)] = version
        if words[1:] == ["build"]:
            build.add(normalise(name))
    return pins, build, skips


def read_image(path: Path = HERE / "gpu_image.txt") -> dict:
    """name -> version (None where the image's version is not recorded)."""
    image = {}
    for raw in path.read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[normalise(name)] = version or None
    return image


def package_map(root: Path) -> dict:
    """supirkit's subpackages and the folders pyproject.toml maps them to."""
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def stale_files(installed: Path, root: Path) -> list[str]:
    """Files of this tree (modules and configs) that the installed supirkit (``installed``: its package folder,
    e.g. /tmp/site/supirkit) lacks or holds in another version: a wheel built before the tree changed."""
    site = installed.parent
    stale = []
    for package, folder in package_map(root).items():
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".json") or "__pycache__" in path.parts or not path.is_file():
                continue
            copy = site / package.replace(".", "/") / path.relative_to(root / folder)
            if not copy.is_file() or copy.read_bytes() != path.read_bytes():
                stale.append(str(path.relative_to(root)))
    return stale


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def wheel_name(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def fetch(dest: Path, pins: dict, build: set) -> None:
    binary = [f"{n}=={v}" for n, v in pins.items() if n not in build]
    pip("download", "--no-deps", *PLATFORM_ARGS, "-d", str(dest), *binary)
    if build:
        pip("wheel", "--no-deps", "-w", str(dest), *[f"{n}=={pins[n]}" for n in sorted(build)])
    for old in dest.glob("supirkit-*.whl"):
        old.unlink()
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(ROOT))


def prune(dest: Path, pins: dict) -> list[Path]:
    """Keep one wheel per pinned package (and supirkit's); remove everything else."""
    keep = []
    for path in sorted(dest.iterdir()):
        if path.suffix == ".whl":
            name, version = wheel_name(path)
            if pins.get(name) == version or name == "supirkit":
                keep.append(path)
                continue
        path.unlink()
    missing = set(pins) - {wheel_name(p)[0] for p in keep}
    if missing:
        raise SystemExit(f"fetch_gpu_wheels: no wheel for {', '.join(sorted(missing))}")
    return keep


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def applicable(requirements: list[str]) -> list:
    """The requirements whose markers hold on the GPU machine's Python (extras not asked for)."""
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in requirements]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET_ENV)]


def resolve(owners: dict, pins: dict, skips: dict, image: dict) -> tuple[list[str], list[str]]:
    """``owners``: package -> its Requires-Dist strings. Returns (problems, unverified): requirements nobody
    provides or whose provider's version does not match; those whose provider's version is not recorded."""
    provided = {**image, **pins}
    problems, unverified = [], []
    for owner, requirements in sorted(owners.items()):
        for req in applicable(requirements):
            name = normalise(req.name)
            if name in skips and name not in provided:
                continue
            if name not in provided:
                problems.append(f"{owner} needs {req}: not carried, not on the image, not skipped")
            elif provided[name] is None:
                if req.specifier:
                    unverified.append(f"{owner} needs {req} (the image's version is not recorded)")
            elif req.specifier and not req.specifier.contains(provided[name], prereleases=True):
                problems.append(f"{owner} needs {req}, but {name} {provided[name]} is what the machine gets")
    return problems, unverified


def travelling_bytes(root: Path) -> int:
    """Size of the working tree a device run sends: tracked and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sum((root / p).stat().st_size for p in set(out.split("\0")) if p and (root / p).is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", default=str(ROOT / DEST))
    ap.add_argument("--check-only", action="store_true", help="resolve and size what is in --dest; download nothing")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins, build, skips = read_wheel_list()
    if not args.check_only:
        fetch(dest, pins, build)
    wheels = prune(dest, pins)
    owners = {wheel_name(w)[0]: wheel_requirements(w) for w in wheels}
    problems, unverified = resolve(owners, pins, skips, read_image())
    for line in unverified:
        print(f"unverified: {line}")
    carried = sum(p.stat().st_size for p in dest.iterdir())
    tree = travelling_bytes(ROOT)
    mib = 2 ** 20
    print(f"carried: {len(wheels)} wheels in {dest.name}/ {carried / mib:.1f} MiB + working tree {tree / mib:.1f} MiB "
          f"= {(carried + tree) / mib:.1f} MiB of {BUDGET_MIB:.0f} MiB")
    for line in problems:
        print(f"problem: {line}")
    if (carried + tree) / mib > BUDGET_MIB:
        print(f"fetch_gpu_wheels: {(carried + tree) / mib:.1f} MiB is over the {BUDGET_MIB:.0f} MiB "
              "a device run carries")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
