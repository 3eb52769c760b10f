"""inspection: look at any shard set or scores table (``supirkit inspect``), and the pictures every stage draws.

Built on ``supirkit.datapipe`` (shard reading, decoding) and ``supirkit.degrade`` (HQ/LQ pairs).
"""
from supirkit.inspection.core import (InspectConfig, format_sample, format_summary, iter_samples, make_pair_tiles,
                                      make_tiles, open_collection, summarize, write_grid, write_html)
from supirkit.inspection.degrade_views import make_stored_pair_tiles

__all__ = ["InspectConfig", "format_sample", "format_summary", "iter_samples", "make_pair_tiles",
           "make_stored_pair_tiles", "make_tiles",
           "open_collection", "summarize", "write_grid", "write_html"]
