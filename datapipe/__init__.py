"""datapipe: sources, safe decoding, lossless WebDataset shards, parquet manifests, exactly-once runner.

The ground floor of supirkit: it imports none of the other packages. A stage subclasses ``Stage`` and a
job hands each pass to ``run_stage`` with the ``UnitOutput`` it writes (``ShardOutput`` or ``TableOutput``);
everything else here is plumbing the stages share:

- ``shard_format``: the shard format and the shard-set folder (one definition for every reader and writer);
- ``tario``: reading and writing shards, sequentially or by key; ``sinks``: atomic units of output;
- ``sources`` / ``inputs``: listing inputs (absolute paths, URLs, lists, tars) and reading them as raw items;
- ``plan`` / ``stage`` / ``executors`` / ``runner``: partitions, the stage protocol, where units run, passes;
- ``stats`` / ``progress``: statistics that add up, live progress; ``errors`` / ``files``: typed errors and
  atomic writes; ``lock``: one run per output folder, and which writers are still alive; ``decode`` /
  ``prefilter``: safe decoding and the header checks; ``conditions`` / ``manifest``: selecting rows of scores
  and index tables; ``dedup``: exact duplicate groups; ``pack``: the ``supirkit shard`` job.
Submodules import their heavy dependencies lazily.
"""
from supirkit.datapipe.conditions import Condition, ConditionError, filter_table
from supirkit.datapipe.config import (
                                      CONFIG_ROOT,
                                      DecodeConfig,
                                      DecodingConfig,
                                      DecodingJobConfig,
                                      JobConfig,
                                      ListingConfig,
                                      RunnerConfig,
                                      Schema,
                                      ShardingConfig,
                                      config_hash,
                                      load_config,
)
from supirkit.datapipe.decode import ImageHeader, decode_rgb, decode_rgb_reduced, decode_thumbnail, encode_image, probe
from supirkit.datapipe.errors import (
                                      CORRUPT_INPUT_ERRORS,
                                      ConfigError,
                                      DecodeError,
                                      FileTooLarge,
                                      MissingWeights,
                                      OutputLocked,
                                      PreflightError,
                                      TransientIOError,
                                      rejection_reason,
)
from supirkit.datapipe.files import atomic_write, atomic_write_json, atomic_write_parquet
from supirkit.datapipe.keys import content_key, display_source, sub_key
from supirkit.datapipe.lock import OutputLock
from supirkit.datapipe.plan import Partition, load_partition, plan_partitions
from supirkit.datapipe.runner import (
                                      Pass,
                                      iter_rejections,
                                      prepare_output,
                                      release_output,
                                      run_stage,
                                      write_job_summary,
)
from supirkit.datapipe.shard_format import IMAGE_EXTS, ShardSetLayout
from supirkit.datapipe.sinks import ShardOutput, ShardSink, TableOutput, TableSink
from supirkit.datapipe.sources import InputRef, list_inputs
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import JobResult, UnitResult, UnitStats
from supirkit.datapipe.tario import TarReader, list_shards, read_shard, sample_image, sample_meta

__all__ = [
    "Condition",
    "ConditionError",
    "filter_table",
    "CONFIG_ROOT",
    "DecodeConfig",
    "DecodingConfig",
    "DecodingJobConfig",
    "JobConfig",
    "ListingConfig",
    "RunnerConfig",
    "Schema",
    "ShardingConfig",
    "config_hash",
    "load_config",
    "ImageHeader",
    "decode_rgb",
    "decode_rgb_reduced",
    "decode_thumbnail",
    "encode_image",
    "probe",
    "CORRUPT_INPUT_ERRORS",
    "ConfigError",
    "DecodeError",
    "FileTooLarge",
    "MissingWeights",
    "OutputLocked",
    "PreflightError",
    "TransientIOError",
    "rejection_reason",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_parquet",
    "content_key",
    "display_source",
    "sub_key",
    "Partition",
    "load_partition",
    "plan_partitions",
    "Pass",
    "iter_rejections",
    "prepare_output",
    "release_output",
    "OutputLock",
    "run_stage",
    "write_job_summary",
    "IMAGE_EXTS",
    "ShardSetLayout",
    "ShardOutput",
    "ShardSink",
    "TableOutput",
    "TableSink",
    "InputRef",
    "list_inputs",
    "Stage",
    "JobResult",
    "UnitResult",
    "UnitStats",
    "TarReader",
    "list_shards",
    "read_shard",
    "sample_image",
    "sample_meta",
]
