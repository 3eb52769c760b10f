"""The toolkit's shell: CLI shape, lazy imports, config validation, overrides."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supirkit.datapipe.config import ConfigError, RunnerConfig, Schema, ShardingConfig, config_hash, load_config

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
    from supirkit.datapipe.pack import ShardConfig

    load_config(ShardConfig, ROOT / "configs/shard/default.yaml")


def test_sample_folder_has_every_kind(tmp_path):
    from supirkit.demo.samples import make_sample_folder

    truth = make_sample_folder(tmp_path, size=96, n_good=5)
    kinds = set(truth.values())
    assert {"good", "blurred", "noisy", "compressed", "upscaled", "flat_graphic", "too_small",
            "near_duplicate", "exact_duplicate", "corrupt"} <= kinds
    assert json.loads((tmp_path / "_truth.json").read_text()) == truth
    assert (tmp_path / "photo_01.jpg").read_bytes() == (tmp_path / "photo_01_same.jpg").read_bytes()


def _one_line_error(capsys, argv, *needles):
    from supirkit.cli import main

    rc = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, (argv, rc, err)
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def test_command_line_mistakes_are_one_line_before_any_output(tmp_path, capsys):
    """A typo in SRC, an empty folder, --out naming a file, a missing manifest or model: exit 2, one line,
    and no output folder bound to the mistake (a corrected rerun must not be refused as another job)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("no image here")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    out = tmp_path / "o"
    local = ["--set", "runner.executor=local"]
    for cmd in ("shard", "curate"):
        _one_line_error(capsys, [cmd, tmp_path / "nope", "--out", out, *local], "nope: no such file or folder")
        _one_line_error(capsys, [cmd, tmp_path / "empty", "--out", out, *local], "no image files found")
        _one_line_error(capsys, [cmd, tmp_path / "txt", "--out", out, *local], "no image files found")
        _one_line_error(capsys, [cmd, tmp_path / "*.jpg", "--out", out, *local], "matches no file")
        _one_line_error(capsys, [cmd, tmp_path / "txt", "--out", a_file, *local], "is a file")
    _one_line_error(capsys, ["shard", "--from-manifest", tmp_path / "nope", "--where", "accepted", "--out", out],
                    "--from-manifest", "no such file or folder")
    _one_line_error(capsys, ["caption", tmp_path / "empty", "--out", a_file], "--out", "is a file")
    _one_line_error(capsys, ["caption", tmp_path / "empty", "--out", out, "--model", tmp_path / "nollava"],
                    "cannot be loaded: no such folder")
    _one_line_error(capsys, ["negatives", tmp_path / "empty", "--out", out, "--model", tmp_path / "nosdxl"],
                    "cannot be loaded: no such folder")
    image = tmp_path / "photo.png"
    image.write_bytes(b"not read before the checks")
    adaptor = tmp_path / "adaptor"
    adaptor.mkdir()
    (adaptor / "config.json").write_text("{}")
    _one_line_error(capsys, ["restore", image, "--out", a_file, "--sdxl", tmp_path, "--adaptor", adaptor], "is a file")
    _one_line_error(capsys, ["restore", image, "--out", out, "--sdxl", tmp_path / "nosdxl", "--adaptor", adaptor],
                    "--sdxl", "no such folder")
    _one_line_error(capsys, ["inspect", a_file], "not a readable tar shard")
    _one_line_error(
        capsys, ["inspect", tmp_path / "empty", "--grid", tmp_path, "--no-summary"], "--grid", "is a folder"
    )
    _one_line_error(capsys, ["degrade", "preview", image, "--out", tmp_path], "--out", "is a folder")
    assert not out.exists()


def test_hub_id_missing_from_the_cache_is_one_line_when_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    from supirkit.cli import UserError
    from supirkit.commands._common import check_model_ref

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    check_model_ref("model.id", "org/not-cached", "model_index.json")  # online: left to from_pretrained
    with pytest.raises(UserError, match="not a hub id in the local cache.*hf download org/not-cached"):
        check_model_ref("model.id", "org/not-cached", "model_index.json", local_only=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    _one_line_error(capsys, ["negatives", tmp_path, "--out", tmp_path / "o", "--model", "org/not-cached"],
                    "org/not-cached", "HF_HUB_OFFLINE")
    assert not (tmp_path / "o").exists()
    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "hub" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    check_model_ref("model.id", "org/cached", "model_index.json")


def test_train_inputs_are_checked_before_any_process_starts(tmp_path, capsys):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").write_bytes(b"")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    base = ["train", "--config", ROOT / "configs/train/demo.yaml", "--launcher", "cpu_2proc",
            "--set", f"model.pretrained={sdxl}",
            "--set", f"data.mixture=[{{name: hq, shards: '{shards}', weight: 1}}]"]
    _one_line_error(capsys, [*base, "--out", a_file], "output_dir", "is a file")
    _one_line_error(capsys, [*base, "--out", tmp_path / "run", "--set", f"model.pretrained={tmp_path / 'nosdxl'}"],
                    "model.pretrained", "no such folder")
    _one_line_error(capsys, [*base, "--out", tmp_path / "run", "--set", f"model.dr_encoder={tmp_path / 'nodr'}"],
                    "model.dr_encoder", "--stage encoder")
    _one_line_error(capsys, [*base, "--out", tmp_path / "run",
                             "--set", f"data.mixture=[{{name: hq, shards: '{tmp_path / 'noshards'}', weight: 1}}]"],
                    "data.mixture 'hq'", "no shards found")
    _one_line_error(capsys, [*base, "--out", tmp_path / "run", "--resume", "step-00000099"],
                    "--resume", "not a complete checkpoint")
    assert not (tmp_path / "run").exists()


def test_config_named_as_the_docs_write_it_resolves_from_any_folder(tmp_path, monkeypatch):
    from supirkit.datapipe.config import resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("configs/train/supir.yaml") == ROOT / "configs/train/supir.yaml"
    assert resolve_config_path("train/supir.yaml") == ROOT / "configs/train/supir.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config_path("configs/train/nope.yaml")


def test_set_example_in_help_is_a_key_of_that_command():
    from supirkit.cli import build_parser

    helps = {}
    for action in build_parser()._subparsers._group_actions[0].choices.items():
        name, sub = action
        for a in sub._actions:
            if "--set" in a.option_strings:
                helps[name] = a.help
    # commands whose configs have no runner section show one of their own keys
    for name in ("inspect", "restore", "train", "describe-model"):
        assert "runner." not in helps[name], (name, helps[name])
    assert "runner.executor=local" in helps["curate"]


def test_sample_folder_refuses_too_few_photos_before_writing(tmp_path):
    from supirkit.demo.samples import make_sample_folder

    with pytest.raises(ValueError, match="n_good must be at least 5"):
        make_sample_folder(tmp_path / "s", size=96, n_good=3)
    assert not (tmp_path / "s").exists()
