"""The durable job queue: states (`jobs.states`), transitions (`jobs.queue`), the worker process
(`jobs.worker`; remote ones over the worker API: `jobs.api`, `jobs.remote`, `jobs.tokens`,
`jobs.registry`, `jobs.wire`) and the command line (`python -m jobs`, `jobs.cli`).

Importing this package imports nothing else, so `db.schema` can use `jobs.states` and the CLI stays
fast; torch is only imported by the pipeline, inside a worker.
"""
