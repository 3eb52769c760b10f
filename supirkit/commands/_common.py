"""Argument shapes shared by every stage command: inputs and output on the command line, the rest
from a config (``--config FILE``, default: the stage's file under ``configs/``) with ``--set key=value``."""
from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, default: str, example: str = "runner.executor=local") -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"YAML config (default: configs/{default})")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help=f"override any config key, e.g. --set {example} (repeatable)")
    p.set_defaults(_default_config=default)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: a local path (on a cluster: storage every node mounts)")
    p.add_argument("--fresh", action="store_true",
                   help="delete what an earlier run left in --out and start over (else: resume)")


#: what a stage's SRC arguments may name (every source is listed by datapipe.sources alike)
SOURCES_HELP = "folder, glob, fsspec URL, .parquet/.csv list, or .tar"


def add_io_args(p: argparse.ArgumentParser, nargs: str = "*", name: str = "sources", metavar: str = "SRC",
                help: str = SOURCES_HELP) -> None:
    """The positional inputs, then ``--out`` and ``--fresh``: the command line of every stage reading inputs."""
    p.add_argument(name, nargs=nargs, metavar=metavar, help=help)
    add_output_args(p)


def load(args: argparse.Namespace, schema):
    from supirkit.datapipe.config import load_config

    return load_config(schema, args.config, args.overrides, default=args._default_config)


def check_sources(sources) -> None:
    """One line for a local SRC that names no input (a typo, an empty folder, a glob that matches nothing),
    before an output folder is bound to it. The job itself records a vanished or unreadable input as a
    rejection; a whole SRC that names nothing is a mistake on the command line. URLs are left to the job."""
    from supirkit.cli import UserError
    from supirkit.datapipe.sources import INVALID, check_protocols, has_braces, is_url, list_inputs

    check_protocols(sources)
    for src in sources:
        if is_url(src):
            continue
        first = next(iter(list_inputs([src])), None)
        if first is None:
            raise UserError(f"{src}: no image files found")
        if first.kind == INVALID and first.reason == "glob_matched_nothing":
            raise UserError(f"{src}: matches no file")
        if first.kind == INVALID and first.reason == "not_found" and not has_braces(src):
            raise UserError(f"{src}: no such file or folder")


def check_output_file(path, flag: str) -> None:
    """An output file option (``--grid``, ``--out PNG``) must not name a folder."""
    import os

    from supirkit.cli import UserError

    if path and os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; give a file name")


def check_output_folder(path, flag: str = "--out") -> None:
    """An output folder option must not name an existing file."""
    import os

    from supirkit.cli import UserError

    if path and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file; give a folder")


def check_model_ref(what: str, ref: str, marker: str = "config.json", local_only: bool = False,
                    fetch: str = "") -> None:
    """One line for a model reference that cannot load: a path that does not exist, or a hub id whose
    ``marker`` file is not in the local Hugging Face cache when the hub is off (``HF_HUB_OFFLINE``) or with
    ``local_only`` (training: every process would download it at once). A reference that starts with
    ``/``, ``.`` or ``~`` or has more than one ``/`` is a path; others may be hub ids (``namespace/name``).
    ``fetch``: the command that would fill it (default: ``hf download REF``)."""
    import os

    from supirkit.cli import UserError

    if os.path.exists(os.path.expanduser(ref)):
        return
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise UserError(f"{what} {ref} cannot be loaded: no such folder")
    from huggingface_hub import constants, try_to_load_from_cache

    offline = bool(constants.HF_HUB_OFFLINE)
    if not (offline or local_only):
        return
    try:
        cached = isinstance(try_to_load_from_cache(ref, marker), str)
    except Exception:  # not even a valid repo id
        cached = False
    if not cached:
        why = "HF_HUB_OFFLINE is set" if offline else "download it first"
        raise UserError(f"{what} {ref} cannot be loaded: no such folder, and not a hub id in the local cache "
                        f"({why}: {fetch or 'hf download ' + ref})")


def finish(stage: str, result, out, what: str, inputs: int | None = None) -> int:
    """The last lines of a stage command, and its exit code: what was made, the rejections by reason (the
    same counts as the summary file), each failed unit by number and first input, and a non-zero exit for
    a job that failed units or wrote nothing although it had inputs."""
    from pathlib import Path

    from supirkit.datapipe.shard_format import ShardSetLayout

    print(f"{stage}: {what}; rejected: {result.rejection_line()}")
    summary = ShardSetLayout(Path(out)).summary_file
    if summary.is_file():
        import json

        pattern = json.loads(summary.read_text(encoding="utf-8")).get("pattern")
        if pattern and result.samples:
            print(f"{stage}: shards: {pattern}")
        print(f"{stage}: summary in {summary}")
    for fail in result.failed[:5]:
        print(f"{stage}: failed {fail.describe_failure()}")
    if result.failed:
        print(f"{stage}: {len(result.failed)} unit(s) failed; rerun the same command to retry them")
        return 1
    inputs = result.inputs if inputs is None else inputs
    if result.samples == 0 and inputs:
        print(f"{stage}: error: wrote no samples although there were {inputs} inputs: every one was rejected "
              f"({result.rejection_line()}); see the summary for each input's reason")
        return 1
    return 0
