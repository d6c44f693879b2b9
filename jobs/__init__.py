"""The durable job queue: the lifecycle (`jobs.states`; the state values are `db.states`), transitions (`jobs.queue`), the worker process
(`jobs.worker`; remote ones over the worker API: `jobs.api`, `jobs.remote`, `jobs.tokens`,
`jobs.registry`, `jobs.wire`) and the command line (`python -m jobs`, `jobs.cli`).

Importing this package imports nothing else, so the CLI stays fast; torch is only imported by the pipeline, inside a worker.
"""

import os as _os

LAUNCHED_BY = _os.getppid()
"""The parent process when this package was first imported: `worker --stop-with-parent` compares
against it. Read here, before anything slow is imported, so a parent that dies while the worker
is still starting up is noticed too (reading it later would see the reaper that adopted us)."""
