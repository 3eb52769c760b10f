"""What the user sees besides our own lines: quiet by default, everything with ``-v``.

Third-party libraries print a lot that says nothing to a supirkit user: weight-loading bars (with colour
codes in log files), deprecation and future warnings, bitsandbytes' notice about optional 4-bit CPU kernels,
Ray's start-up chatter. By default they are turned down to errors, also in the workers this process starts
(through environment variables, which a local Ray's workers inherit); ``-v`` leaves every library at its
own defaults and shows our INFO lines.
"""
from __future__ import annotations

import logging
import os
import warnings

#: loggers of libraries that log warnings a user cannot act on
NOISY = ("bitsandbytes", "transformers", "diffusers", "accelerate", "timm", "torch", "urllib3", "fsspec", "PIL",
         "open_clip", "pyiqa", "huggingface_hub", "datasets", "matplotlib")
#: the same, for processes started from here (Ray workers, accelerate ranks)
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
             "RAY_DEDUP_LOGS": "1"}


def configure(verbose: bool = False) -> None:
    """Our own lines at INFO (``-v``) or WARNING; third-party libraries quiet unless ``verbose``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(name)s: %(message)s"))
    ours = logging.getLogger("supirkit")
    if not ours.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        if value:
            os.environ.setdefault(key, value)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
