"""evaluation: paired test sets and scoring restorations against them (``supirkit testset``, ``supirkit evaluate``)."""
