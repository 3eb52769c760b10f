"""The thin ``supirkit`` command: parse, validate the config, call the library.

Each subcommand is a module in ``supirkit.commands`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import only the standard library at top level so that
``supirkit --help`` stays well under a second; heavy libraries are imported inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys


def _command_modules():
    from supirkit import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"supirkit.commands.{info.name}")
        yield getattr(module, "NAME", info.name.replace("_", "-")), module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supirkit",
        description="Build SUPIR's training corpus and train SUPIR on it. Each stage is a subcommand.",
    )
    from supirkit import __version__

    parser.add_argument("--version", action="version", version=f"supirkit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show our INFO lines and every library's own warnings and progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="show our INFO lines and every library's own warnings and progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           parents=[common])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from supirkit.datapipe.lock import release_output_locks
    from supirkit.logs import configure

    configure(verbose=args.verbose)

    previous = _handle_sigterm()
    try:
        return _run(args)
    finally:
        release_output_locks()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    from supirkit.datapipe.errors import Terminated

    raise Terminated()


def _handle_sigterm():
    """SIGTERM (schedulers, Kubernetes, ``kill``) ends a command like Ctrl-C: the exception unwinds the job
    (units in progress are aborted, nothing half-written keeps a final name), one line, exit 143. Returns the
    previous handler, put back afterwards (``main`` may run inside a larger program)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _run(args) -> int:
    from supirkit.datapipe.conditions import ConditionError
    from supirkit.datapipe.errors import ConfigError, PreflightError, SupirkitError, Terminated

    name = args.command
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"supirkit {name}: config error: {exc}", file=sys.stderr)
        return 2
    except PreflightError as exc:  # a missing library, model or weight file: before any output is made
        print(f"supirkit {name}: error: {exc}", file=sys.stderr)
        return 2
    except ConditionError as exc:
        print(f"supirkit {name}: condition error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"supirkit {name}: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"supirkit {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"supirkit {name}: error: {exc}", file=sys.stderr)
        return 2
    except SupirkitError as exc:  # the output folder is locked, the disk is full
        print(f"supirkit {name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        line = _os_error_line(exc)
        if line is None:
            raise
        print(f"supirkit {name}: error: {line}", file=sys.stderr)
        return 1


def _os_error_line(exc: OSError) -> str | None:
    """One line for what the machine refuses (no space, no permission, a read-only file system); None for
    other OS errors, which keep their traceback (they are bugs or need one)."""
    import errno
    import os

    where = exc.filename or ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        from supirkit.datapipe.files import disk_full

        return str(disk_full(os.path.dirname(os.fspath(where)) if where else os.getcwd()))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: cannot write or read here: {exc.strerror}" if where else f"{exc.strerror}"
    return None


class UserError(Exception):
    """Bad input from the user (missing file, wrong argument): printed as one line, exit code 2."""


if __name__ == "__main__":
    sys.exit(main())
