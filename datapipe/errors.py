"""The error types supirkit raises on purpose, and what "this input is corrupt" means, in one place.

Three kinds of trouble, handled three ways by every stage:

- **a corrupt input** (undecodable image, damaged tar, hostile metadata): the input is rejected with a
  stable reason code and the unit goes on. ``CORRUPT_INPUT_ERRORS`` lists what counts, and
  ``rejection_reason`` turns any of them into ``(reason, detail)``;
- **a transient failure** (network timeout, reset connection, a storage hiccup that outlived its retries):
  ``TransientIOError``. It is deliberately *not* an ``OSError``, so no handler for a missing or unreadable
  file can turn it into a permanent rejection: it fails the unit, which Ray retries and a rerun redoes;
- **a mistake of the user or the machine** (bad config, missing weights, a protocol whose library is not
  installed): one line for the user before any output is made (``ConfigError``, ``MissingWeights``,
  ``PreflightError``).
"""
from __future__ import annotations

import gzip
import json
import tarfile
import zlib


class SupirkitError(Exception):
    """Base of the errors below."""


class ConfigError(SupirkitError, ValueError):
    """A configuration problem, already phrased as one line for the user."""


class PreflightError(SupirkitError):
    """Something the job needs is missing (a library, a model, a credential); one line, before any work."""


class MissingWeights(PreflightError):
    """A model's weight file is not on this machine and may not be downloaded; the message says which
    file and how to get it."""


class TransientIOError(SupirkitError):
    """A read that kept failing for a reason that may pass (timeouts, resets) after its retries: the unit
    fails and is retried; the input is never rejected for it."""


class DecodeError(SupirkitError):
    """An input that cannot be turned into an image; ``reason`` is a short stable code for statistics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FileTooLarge(OSError):
    """An input larger than ``decode.max_file_bytes``, refused before it is read whole."""

    def __init__(self, source: str, limit: int):
        super().__init__(f"{source}: larger than max_file_bytes={limit}")
        self.source, self.limit = source, limit


class BadMetadata(SupirkitError):
    """A sample's metadata member that is not a JSON object (a list, a number, nesting too deep to parse)."""


class NotARegularFile(OSError):
    """An input that is a FIFO, socket or device: never read (a FIFO would block ``open`` forever, a device
    could be read without end). Found by ``fstat`` on a descriptor opened without blocking."""

    def __init__(self, source: str, kind: str):
        super().__init__(f"{source}: is a {kind}, not a regular file")
        self.source, self.kind = source, kind


class OutputLocked(SupirkitError):
    """Another live run holds the output folder's lock; the message names it."""


class DiskFull(SupirkitError):
    """A write failed for lack of space; the message names the folder, the free and the needed space."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, Kubernetes, ``kill``), raised in the main thread and handled like SIGINT."""


#: What a corrupt input can raise while it is read, unpacked or parsed. Network and storage errors are
#: not here: they fail the unit, which is retried (``TransientIOError``), or are a missing file (vanished).
CORRUPT_INPUT_ERRORS = (DecodeError, BadMetadata, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
                        RecursionError, json.JSONDecodeError, UnicodeDecodeError)


def rejection_reason(exc: BaseException) -> tuple[str, str]:
    """``(reason, detail)`` of an input that failed with ``exc`` (a ``CORRUPT_INPUT_ERRORS`` member or one of
    the file errors that are properties of the input: missing, a folder, unreadable, too large)."""
    detail = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, DecodeError):
        return exc.reason, exc.detail
    if isinstance(exc, FileTooLarge):
        return "too_large", detail
    if isinstance(exc, FileNotFoundError):
        return "vanished", "listed but gone when read"
    if isinstance(exc, IsADirectoryError):
        return "is_directory", ""
    if isinstance(exc, NotARegularFile):
        return "special_file", exc.kind
    if isinstance(exc, (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)):
        return "corrupt_tar", detail
    if isinstance(exc, (BadMetadata, RecursionError, json.JSONDecodeError, UnicodeDecodeError)):
        return "bad_metadata", detail
    if isinstance(exc, OSError):
        return "unreadable", f"{exc.strerror or exc}"[:300]
    return "corrupt", detail


def is_transient(exc: BaseException) -> bool:
    """Errors that may pass on a retry (network timeouts, resets): never a property of the input."""
    return isinstance(exc, (TransientIOError, TimeoutError, ConnectionError))


__all__ = ["SupirkitError", "ConfigError", "PreflightError", "MissingWeights", "TransientIOError", "DecodeError",
           "FileTooLarge", "BadMetadata", "NotARegularFile", "OutputLocked", "DiskFull", "Terminated",
           "CORRUPT_INPUT_ERRORS", "rejection_reason", "is_transient"]
