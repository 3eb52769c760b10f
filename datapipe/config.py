"""Typed, validated job configuration.

Every job parameter lives in YAML under ``configs/`` and is validated by a pydantic schema before any
work starts. Errors are reduced to one line naming the file, the key and what was expected, because
the user's next action is to open that file at that key.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supirkit.datapipe.decode import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from supirkit.datapipe.errors import ConfigError

T = TypeVar("T", bound="Schema")

#: Folder of the shipped configs (repo checkout or editable install). ``SUPIRKIT_CONFIGS`` overrides it.
CONFIG_ROOT = Path(os.environ.get("SUPIRKIT_CONFIGS", Path(__file__).resolve().parents[1] / "configs"))


class Schema(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


class RunnerConfig(Schema):
    """How a partitioned stage is executed. Does not change outputs, so it is left out of the config hash.
    Every number is bounded: a value past the bound is a typo, and Ray or the OS would fail on it later."""

    executor: Literal["ray", "local"] = "ray"
    ray_address: Optional[str] = Field(None, description="None: join RAY_ADDRESS if set, else start a local Ray.")
    connect_timeout_s: float = Field(30.0, gt=0, le=3600,
                                     description="Seconds to reach ray_address before giving up with one line.")
    num_cpus_per_task: float = Field(1.0, gt=0, le=1024)
    num_gpus_per_actor: float = Field(1.0, ge=0, le=64)
    num_actors: Optional[int] = Field(None, ge=1, le=100_000,
                                      description="GPU stages: actor count; None = one per GPU (1 on CPU).")
    max_in_flight: int = Field(8, ge=1, le=100_000,
                               description="Partitions submitted ahead of completion (bounds driver memory).")
    max_retries: int = Field(3, ge=0, le=100, description="Ray task retries after a worker dies.")
    io_retries: int = Field(3, ge=0, le=100, description="Retries of a transient read error, with backoff.")
    progress: Literal["auto", "bar", "log", "none"] = "auto"
    log_every_s: float = Field(5.0, gt=0, le=86_400,
                               description="Seconds between progress lines when not on a terminal.")


#: a shard-name prefix: letters, digits, ``_`` and ``-`` (no dots: keys and names split at the first dot)
PREFIX_PATTERN = r"^[A-Za-z0-9_\-]+$"


class OutputConfig(Schema):
    """Where a stage's shards go: ``{prefix}-NNNNNN.tar`` at the top of ``--out`` (the section every stage's
    ``output`` extends)."""

    prefix: str = Field("shard", pattern=PREFIX_PATTERN)


class ShardingConfig(OutputConfig):
    """How inputs are cut into partitions; partition i becomes output shard i."""

    samples_per_shard: int = Field(1000, ge=1, le=10_000_000)
    target_bytes: int = Field(1_000_000_000, ge=1, le=1 << 44, description="Approximate input bytes per partition.")


class DecodeConfig(Schema):
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, le=1 << 36,
                            description="Refuse images above this many pixels (bomb guard).")
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, ge=1, le=1 << 40, description="Refuse inputs larger than this.")


class DecodingConfig(Schema):
    """Base of a config that reads images: its ``decode`` section, the limits every decode obeys."""

    decode: DecodeConfig = DecodeConfig()


class JobConfig(Schema):
    """Base of a partitioned job's config: its ``runner`` section (how it runs, left out of the config hash)."""

    runner: RunnerConfig = RunnerConfig()


class DecodingJobConfig(DecodingConfig, JobConfig):
    """Base of a partitioned job that decodes its inputs: ``decode`` and ``runner``."""


class ListingConfig(Schema):
    """What a folder walk takes as inputs. Only regular files are ever read (FIFOs, sockets and devices are
    recorded as ``special_file``); a symlink is followed to a regular file inside the walked folder."""

    follow_symlinks_outside: bool = Field(
        False, description="Also read symlinks that point out of the walked folder (else: outside_source).")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key written twice in one mapping: YAML lets the last one win
    silently, so a second ``runner:`` section would quietly replace the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (YAML would keep only the last one)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set caption.batch_size=16")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _format_error(source: str, err: dict) -> str:
    key = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    msg = err.get("msg", "invalid value")
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{source}: {key}: {msg}{got_s}"


def _suggest(schema: type[Schema], loc: tuple) -> str:
    """Name the valid keys next to an unknown one: a typo is the usual cause."""
    model: Any = schema
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    if not fields:
        return ""
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(fields)}"


def validate(schema: type[T], data: dict, source: str = "<config>") -> T:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        line = _format_error(source, first)
        if first.get("type") == "extra_forbidden":
            line += _suggest(schema, tuple(first.get("loc", ())))
        if len(errs) > 1:
            line += f" (+{len(errs) - 1} more)"
        raise ConfigError(line) from None


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    default: str | Path | None = None,
) -> T:
    """Load ``path`` (or the stage's ``default`` config), apply ``--set`` overrides, validate."""
    chosen = path or default
    data: dict = {}
    source = "<defaults>"
    if chosen is not None:
        chosen = resolve_config_path(chosen)
        data = load_yaml(chosen)
        source = str(chosen)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with --set)"
    return validate(schema, data, source)


def resolve_config_path(path: str | Path) -> Path:
    """Accept a file path or a name relative to ``configs/`` (``curate/default.yaml``, or
    ``configs/curate/default.yaml`` as the docs write it, from any working folder)."""
    p = Path(path)
    if p.is_file():
        return p
    candidate = CONFIG_ROOT / p
    if not p.is_absolute() and p.parts[:1] == (CONFIG_ROOT.name,) and (CONFIG_ROOT.parent / p).is_file():
        candidate = CONFIG_ROOT.parent / p
    if candidate.is_file():
        return candidate
    if candidate.with_suffix(".yaml").is_file():
        return candidate.with_suffix(".yaml")
    raise ConfigError(f"{path}: config file not found (also looked in {CONFIG_ROOT})")


def config_hash(config: BaseModel, exclude: Iterable[str] = ("runner",)) -> str:
    """Hash of what determines a job's outputs; execution settings (``runner``) are left out."""
    data = config.model_dump(mode="json", exclude=set(exclude))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
