"""The README's command block, read from the README itself and run as written from a temporary folder: generated
photos stand for ``/data/photos``, folders under the temporary one for ``/corpus`` and ``/eval``, the demo's tiny
models for the hub ids. Lines marked ``# GPU`` are parsed by the CLI (a typo in one still fails here) but not
run."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- the block below is run by tests/test_readme.py -->"
GPU = "# GPU"


def readme_commands() -> list[tuple[str, bool]]:
    """(command line, needs a GPU) for every command of the README's tested block, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "README.md lost its tested command block"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands.append((line, line.endswith(GPU)))
    return commands


def test_readme_block_is_what_users_run():
    commands = readme_commands()
    assert all(c.startswith("supirkit ") for c, _ in commands)
    ran = {c.split()[1] for c, gpu in commands if not gpu}
    assert {"curate", "shard", "inspect", "degrade", "testset"} <= ran
    assert {c.split()[1] for c, gpu in commands if gpu} >= {"caption", "negatives", "train", "restore"}


def test_readme_commands_run_as_written(tmp_path, tiny_models):
    from supirkit.cli import build_parser
    from supirkit.demo.samples import make_sample_folder

    make_sample_folder(tmp_path / "data" / "photos", size=1100, n_good=5, seed=2)  # curate's default: >= 1024 px
    places = {"/data/": f"{tmp_path}/data/", "/corpus/": f"{tmp_path}/corpus/", "/eval/": f"{tmp_path}/eval/",
              "llava-hf/llava-1.5-13b-hf": str(tiny_models["llava"]),
              "stabilityai/stable-diffusion-xl-base-1.0": str(tiny_models["sdxl"])}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    supirkit = str(Path(sys.executable).with_name("supirkit"))
    parser = build_parser()
    ran = 0
    for line, gpu in readme_commands():
        for written, here in places.items():
            line = line.replace(written, here)
        argv = shlex.split(line, comments=True)
        if gpu:
            parser.parse_args(argv[1:])  # the command and its options exist as written
            continue
        proc = subprocess.run([supirkit, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        ran += 1
    assert ran >= 7
    assert list((tmp_path / "corpus" / "hq").glob("*.tar")) and list((tmp_path / "corpus" / "large").glob("*.tar"))
    assert (tmp_path / "corpus" / "browse.html").is_file() and (tmp_path / "corpus" / "degradations.png").is_file()
    pairs = tmp_path / "eval" / "pairs" / "__supirkit__" / "pairs"
    lq, hq = sorted(p.name for p in (pairs / "lq").glob("*.png")), sorted(p.name for p in (pairs / "hq").glob("*.png"))
    assert 0 < len(lq) <= 8 and lq == hq
