"""inspection: look at any shard set or scores table (``supirkit inspect``), and the pictures every stage draws.

- ``collection``: what a path names (a shard set or a manifest) and where its indexes and stats are;
- ``summary``: streamed summary statistics (``summarize``, ``format_summary``);
- ``samples``: which samples to show, read from shards or re-read from a manifest's sources;
- ``render``: thumbnails, HQ/LQ pairs, the one contact-sheet renderer (``draw_sheet``) and the HTML page;
- ``degrade_views``: what a degradation profile does to a crop (the degrade preview, ``inspect --degrade``).

Built on ``supirkit.datapipe`` (shard reading, decoding) and ``supirkit.degrade`` (HQ/LQ pairs).
"""
from supirkit.inspection.collection import Collection, open_collection
from supirkit.inspection.config import InspectConfig
from supirkit.inspection.degrade_views import make_stored_pair_tiles
from supirkit.inspection.render import (
                                        Cell,
                                        Tile,
                                        draw_sheet,
                                        make_pair_tiles,
                                        make_tiles,
                                        save_png,
                                        write_grid,
                                        write_html,
)
from supirkit.inspection.samples import Sample, format_sample, iter_samples
from supirkit.inspection.summary import format_summary, summarize

__all__ = [
    "Collection",
    "open_collection",
    "InspectConfig",
    "Cell",
    "Tile",
    "draw_sheet",
    "make_pair_tiles",
    "make_stored_pair_tiles",
    "make_tiles",
    "save_png",
    "write_grid",
    "write_html",
    "Sample",
    "format_sample",
    "iter_samples",
    "format_summary",
    "summarize",
]
