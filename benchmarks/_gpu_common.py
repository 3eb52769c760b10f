"""What the parts of ``gpu_check.py`` share: the sizes of a full run and of the dry run, the recorder that
writes a part's results after every case (a part stopped at its time limit keeps what it measured), and
the timing and memory helpers."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PARTS = ("curate", "caption", "negatives", "train", "restore")


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full check (one GPU, full-size models) and the dry run (CPU, tiny)."""

    dry: bool
    budgets_s: dict  # part -> seconds of wall time (hard limit of its process)
    # caption: LLaVA shape (name of a dict in _full_size), image side, fixed new tokens, batch sizes, batches each
    llava: str = "LLAVA_15_13B"
    caption_image: int = 1024
    caption_tokens: int = 200
    caption_batches: tuple = (8, 32)
    caption_rounds: int = 2
    # negatives: output side, batch (one warm-up shard, then timed shards of one batch), scheduler steps
    negatives_size: int = 1024
    negatives_batch: int = 8
    negatives_count: int = 16
    negatives_steps: int = 50
    # train: trunk layouts (name -> configs/model/supir.yaml layout name, or a layout for the tiny UNet), crop
    # side, the reference batch, timed steps and warm-up steps per case
    train_layouts: tuple = (("released", "released"), ("trimmed", "trimmed"))
    train_px: int = 512
    train_batch: int = 4
    train_steps: int = 5
    train_warmup: int = 2
    loader_rounds: int = 6
    # restore: image sides (the second tiled), sampler steps, extra config overrides
    restore_sides: tuple = (1024, 2048)
    restore_steps: int = 50
    restore_overrides: tuple = ()
    # curate: inputs (width, height), how many, overrides of configs/curate/full.yaml
    curate_size: tuple = (2048, 1536)
    curate_images: int = 64
    curate_overrides: tuple = ()
    #: GPU memory share the largest-batch search plans for
    memory_share: float = 0.92

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Sizes(dry=False, budgets_s={"curate": 45, "caption": 95, "negatives": 85, "train": 145, "restore": 100})

DRY = Sizes(
    dry=True, budgets_s={p: 240 for p in PARTS},
    llava="LLAVA_TINY", caption_image=64, caption_tokens=4, caption_batches=(1, 2), caption_rounds=2,
    negatives_size=64, negatives_batch=2, negatives_count=4, negatives_steps=4,
    # the tiny UNet has depths [., 2, 3], middle 3: its trimmed trunk keeps one block per level (as bench_model.py)
    train_layouts=(("released", None), ("trimmed", {"transformer_depth": [1, 1, 1], "mid_transformer_depth": 1})),
    train_px=64, train_batch=1, train_steps=1, train_warmup=0, loader_rounds=1,
    restore_sides=(64, 128), restore_steps=3,
    restore_overrides=("image.min_size=64", "image.size_multiple=32", "tiling.tile_size=8", "tiling.tile_stride=4"),
    curate_size=(256, 192), curate_images=4, curate_overrides=("signals.iqa.tile_size=64", "signals.iqa.batch_size=4",
                                                                "signals.aesthetic.batch_size=4"),
)


class OverBudget(Exception):
    """A case that does not fit in what is left of its part's time (recorded as skipped)."""


@dataclass
class Recorder:
    """One part's results, rewritten to ``path`` (atomically) after every case and note."""

    path: Path
    part: str
    deadline: float  # time.time() by which the part should have finished its last case
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data = {"part": self.part, "status": "running", "cases": [], "notes": [], "info": {},
                     "started": time.time()}
        self.flush()

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, name: str, estimate_s: float) -> bool:
        """Whether a case estimated at ``estimate_s`` fits; if not it is recorded as skipped."""
        if estimate_s <= self.left():
            return True
        self.data["cases"].append({"case": name, "skipped": f"over budget (needs ~{estimate_s:.0f} s, "
                                                             f"{max(0.0, self.left()):.0f} s left)"})
        self.flush()
        return False

    def case(self, name: str, **values) -> dict:
        row = {"case": name, **values}
        self.data["cases"].append(row)
        self.flush()
        print(f"[{self.part}] {name}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()
                                                     if not isinstance(v, (dict, list))), file=sys.stderr, flush=True)
        return row

    def info(self, **values) -> None:
        self.data["info"].update(values)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.flush()

    def finish(self, status: str, **extra) -> None:
        self.data.update(status=status, wall_s=round(time.time() - self.data["started"], 1), **extra)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def device_of(sizes: Sizes):
    import torch

    return torch.device("cpu" if sizes.dry else "cuda")


class Timed:
    """Wall time of a block, with the GPU synchronised at both ends, and the GPU's peak memory inside it."""

    def __init__(self, device):
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.s = 0.0
        self.peak_gib = None

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gib = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        self.s = time.perf_counter() - self.t0
        return False


def total_memory_gib(device) -> float | None:
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2 ** 30


def imported_distributions() -> list[list[str]]:
    """Installed distributions whose top-level modules this process has imported, one list of owners per
    module (``cv2`` comes with opencv-python or opencv-python-headless); the standard library and supirkit
    itself are left out. What the GPU machine must have, or be given as wheels."""
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    found = set()
    for name in list(sys.modules):
        dists = tuple(sorted({normalise(d) for d in owners.get(name.split(".")[0], ())}))
        if dists and "supirkit" not in dists:
            found.add(dists)
    return [list(d) for d in sorted(found)]


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one -."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()
