"""The toolkit's shell: CLI shape, lazy imports, config validation, overrides."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datapipe.config import ConfigError, RunnerConfig, Schema, ShardingConfig, config_hash, load_config

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "diffusers", "ray", "pyiqa", "open_clip", "cv2", "accelerate", "webdataset")


def test_help_imports_no_heavy_library():
    code = ("import sys; from supirkit.cli import build_parser; build_parser().format_help(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_subcommand_has_help():
    from supirkit.cli import _command_modules

    names = [name for name, _ in _command_modules()]
    assert "shard" in names and "demo" in names and "tiny-models" in names
    for name in names:
        out = subprocess.run([sys.executable, "-m", "supirkit.cli", name, "--help"], capture_output=True,
                             text=True, cwd=ROOT)
        assert out.returncode == 0, (name, out.stderr)
        assert "usage:" in out.stdout


class _Job(Schema):
    sharding: ShardingConfig = ShardingConfig()
    runner: RunnerConfig = RunnerConfig()


def test_misspelled_key_is_one_line_naming_key(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("sharding:\n  samples_per_shad: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(_Job, cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(cfg) in msg and "sharding.samples_per_shad" in msg and "samples_per_shard" in msg


def test_wrong_type_and_range_are_reported(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("sharding:\n  samples_per_shard: 0\n")
    with pytest.raises(ConfigError, match=r"sharding\.samples_per_shard.*greater than or equal to 1"):
        load_config(_Job, cfg)
    cfg.write_text("runner:\n  executor: spark\n")
    with pytest.raises(ConfigError, match=r"runner\.executor"):
        load_config(_Job, cfg)


def test_set_overrides_any_key_and_hash_ignores_runner():
    a = load_config(_Job, None, ["sharding.samples_per_shard=16", "runner.executor=local"])
    assert a.sharding.samples_per_shard == 16 and a.runner.executor == "local"
    b = load_config(_Job, None, ["sharding.samples_per_shard=16", "runner.max_in_flight=2"])
    c = load_config(_Job, None, ["sharding.samples_per_shard=17"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(_Job, None, ["sharding.samples_per_shard"])


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sharding:\n  prefx: x\n")
    out = subprocess.run([sys.executable, "-m", "supirkit.cli", "shard", str(tmp_path), "--out",
                          str(tmp_path / "o"), "--config", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sharding.prefx" in lines[0] and "unknown key" in lines[0]
    assert not (tmp_path / "o").exists()  # nothing started


def test_shipped_configs_validate():
    """Every YAML under configs/ parses safely; stage configs validate against their schema."""
    import yaml

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict), path
    from datapipe.pack import ShardJobConfig

    load_config(ShardJobConfig, ROOT / "configs/shard/default.yaml")


def test_sample_folder_has_every_kind(tmp_path):
    from supirkit.demo.samples import make_sample_folder

    truth = make_sample_folder(tmp_path, size=96, n_good=5)
    kinds = set(truth.values())
    assert {"good", "blurred", "noisy", "compressed", "upscaled", "flat_graphic", "too_small",
            "near_duplicate", "exact_duplicate", "corrupt"} <= kinds
    assert json.loads((tmp_path / "_truth.json").read_text()) == truth
    assert (tmp_path / "photo_01.jpg").read_bytes() == (tmp_path / "photo_01_same.jpg").read_bytes()
