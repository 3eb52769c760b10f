"""datapipe: sources, safe decoding, lossless WebDataset shards, parquet manifests, exactly-once runner.

The ground floor of supirkit: it imports none of the other packages. Stages elsewhere subclass
``PartitionStage`` and hand it to ``run_stage``; everything else here is plumbing they share.
Submodules import their heavy dependencies lazily.
"""
from supirkit.datapipe.conditions import Condition, ConditionError, filter_table
from supirkit.datapipe.config import (CONFIG_ROOT, ConfigError, DecodeConfig, RunnerConfig, Schema, ShardingConfig,
                             config_hash, load_config)
from supirkit.datapipe.decode import (DecodeError, ImageHeader, decode_rgb, decode_rgb_reduced, decode_thumbnail,
                                      encode_image, probe)
from supirkit.datapipe.keys import content_key, display_source, sub_key
from supirkit.datapipe.runner import (JobResult, Partition, PartitionStage, iter_rejections, load_partition,
                             plan_partitions, prepare_output, run_stage, write_job_summary)
from supirkit.datapipe.shards import (ShardSink, ShardStats, TableSink, list_shards, read_shard, sample_image, sample_meta)
from supirkit.datapipe.sources import InputRef, list_inputs

__all__ = [
    "Condition", "ConditionError", "filter_table", "CONFIG_ROOT", "ConfigError", "DecodeConfig", "RunnerConfig",
    "Schema", "ShardingConfig", "config_hash", "load_config", "DecodeError", "ImageHeader", "decode_rgb",
    "decode_rgb_reduced", "decode_thumbnail", "encode_image", "probe", "content_key", "display_source", "sub_key",
    "JobResult", "Partition",
    "PartitionStage", "iter_rejections", "load_partition", "plan_partitions", "prepare_output", "run_stage",
    "write_job_summary", "ShardSink", "ShardStats", "TableSink", "list_shards", "read_shard", "sample_image",
    "sample_meta", "InputRef", "list_inputs",
]
