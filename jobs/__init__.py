"""The durable job queue: states (`jobs.states`), transitions (`jobs.queue`), the worker process
(`jobs.worker`) and the command line (`python -m jobs`, `jobs.cli`).

Importing this package imports nothing else, so `db.schema` can use `jobs.states` and the CLI stays
fast; torch is only imported by the pipeline, inside a worker.
"""
