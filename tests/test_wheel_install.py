"""Installed like a library: the built wheel, installed (not editable) into a fresh virtual environment, runs
``supirkit curate`` with its default config (shipped as package data, Ray workers included) and
``supirkit train`` on 2 CPU processes from a folder that also holds ``train.py``, ``datapipe.py`` and
``degrade.py``, files that would replace our modules if anything imported them by a bare top-level name."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: what the repository holds besides the sources a wheel is built from
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".cache",
                                     "bench_out", "demo_out", ".whl", ".gl", ".tiny", ".pytest_cache")
SHADOW = "raise SystemExit('the working folder shadowed supirkit: {name} was imported')\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; its dependencies come from the test
    environment's site-packages (a path in a .pth file: no network, and none of that environment's .pth
    hooks, so the editable install there stays invisible)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)  # a clean tree: no stale build/ output in the wheel
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, timeout=600, capture_output=True)
    wheel = next((tmp / "dist").glob("supirkit-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    return venv


def _user_folder(tmp_path: Path) -> Path:
    work = tmp_path / "my project"
    work.mkdir()
    for name in ("train", "datapipe", "degrade"):
        (work / f"{name}.py").write_text(SHADOW.format(name=name), encoding="utf-8")
    return work


def _run(venv: Path, work: Path, *argv, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1")
    return subprocess.run([str(venv / "bin" / "supirkit"), *map(str, argv)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_installed_wheel_is_our_code_with_its_configs(installed, tmp_path):
    work = _user_folder(tmp_path)
    probe = ("import supirkit, supirkit.datapipe, supirkit.train, supirkit.degrade\n"
             "from supirkit.datapipe.config import CONFIG_ROOT\n"
             "print(supirkit.datapipe.__file__); print(CONFIG_ROOT)\n")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=work, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)
    assert out.returncode == 0, out.stderr
    module, configs = out.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(configs).is_relative_to(installed)
    assert (Path(configs) / "curate" / "default.yaml").is_file()
    assert (Path(configs) / "accelerate" / "cpu_2proc.yaml").is_file()


def test_curate_then_train_from_a_folder_that_shadows_our_names(installed, tiny_models, tmp_path):
    import yaml

    from supirkit.demo.samples import make_sample_folder

    work = _user_folder(tmp_path)
    make_sample_folder(work / "photos", size=1100, n_good=5, seed=1)  # the default config wants >= 1024 px
    # curate with the default config and the default executor: a local Ray whose workers start in this folder
    proc = _run(installed, work, "curate", "photos", "--out", "hq")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "shadowed" not in proc.stderr and list((work / "hq").glob("*.tar")), proc.stdout

    cfg = yaml.safe_load((ROOT / "configs" / "train" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["data"]["mixture"] = [{"name": "hq", "shards": "hq", "weight": 1}]  # no captions: the quality prompt alone
    cfg["model"]["pretrained"] = str(tiny_models["sdxl"])
    cfg["output_dir"] = "runs/tiny"
    cfg["schedule"]["max_steps"] = 2
    cfg["checkpoint"]["every_steps"] = 2
    cfg["validation"] = {"every_steps": 0, "loss_batches": 0}
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    proc = _run(installed, work, "train", "--config", "tiny.yaml", "--launcher", "cpu_2proc")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "shadowed" not in proc.stderr
    assert list((work / "runs" / "tiny").glob("checkpoint*")) or list((work / "runs" / "tiny").rglob("*.safetensors"))
