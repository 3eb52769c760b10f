"""Opening a supirkit shard set with the field's readers: what each needs that the folder cannot say itself.

``webdataset.WebDataset(pattern)`` takes the brace pattern a stage prints (and writes to ``summary.json``);
``ray.data.read_webdataset(OUT)`` and ``pyarrow.dataset`` need nothing (they skip ``__supirkit__/``).
``datasets.load_dataset("webdataset", data_dir=OUT)`` infers its schema from the first samples and refuses a
set whose samples differ in their image format (a lossless ``shard`` of JPEGs and PNGs); ``hf_features(OUT)``
gives it the schema of the whole set instead::

    datasets.load_dataset("webdataset", data_dir=OUT, features=hf_features(OUT))
"""
from __future__ import annotations

import json
from pathlib import Path

from supirkit.datapipe.shard_format import IMAGE_EXTS, ShardSetLayout
from supirkit.datapipe.tario import list_shards, read_shard


def shard_pattern(root: str | Path) -> str:
    """The brace pattern of a finished shard set (as its stage printed it)."""
    layout = ShardSetLayout(root)
    if layout.summary_file.is_file():
        pattern = json.loads(layout.summary_file.read_text(encoding="utf-8")).get("pattern")
        if pattern:
            return pattern
    shards = list_shards(str(root))
    if not shards:
        raise FileNotFoundError(f"{root}: no finished shard")
    return shards[0] if len(shards) == 1 else str(Path(shards[0]).parent / "*.tar")


def hf_features(root: str | Path, samples: int = 256):
    """``datasets.Features`` of every field of a shard set: images as ``Image``, ``.json`` as the union of the
    first ``samples`` samples' metadata (spread over the shards), text fields as strings."""
    import datasets
    import pyarrow as pa

    from supirkit.datapipe.sinks import rows_to_table

    shards = list_shards(str(root))
    per_shard = max(1, samples // max(len(shards), 1))
    fields: set[str] = set()
    metas: list[dict] = []
    for url in shards[:samples]:
        for i, sample in enumerate(read_shard(url)):
            if i >= per_shard:
                break
            fields.update(k for k in sample if not k.startswith("__"))
            if "json" in sample:
                metas.append(json.loads(sample["json"]))
    features = {"__key__": datasets.Value("string"), "__url__": datasets.Value("string")}
    for field in sorted(fields):
        ext = field.rsplit(".", 1)[-1].lower()
        if ext in IMAGE_EXTS:
            features[field] = datasets.Image()
        elif field == "json":
            schema = rows_to_table(metas).schema if metas else pa.schema([])
            features[field] = datasets.Features.from_arrow_schema(schema)
        else:
            features[field] = datasets.Value("string")
    return datasets.Features(features)


__all__ = ["shard_pattern", "hf_features"]
