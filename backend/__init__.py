"""PruneBoard backend: configuration, models, pruning, calibration, evaluation and the pure pipeline.

Nothing in this package imports `db`, `jobs` or the UI: the pipeline takes a config and an event
sink and returns a `RunResult`; executors decide where results are stored.
"""
