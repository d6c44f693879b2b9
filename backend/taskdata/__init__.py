"""Task data from the Hugging Face Hub: the one way a task's files get into PRUNEBOARD_DATA_DIR
besides being put there by hand.

* `sources`: per task, the Hub dataset repo, revision, files and conversions (a declarative table);
* `convert`: upstream formats (parquet, JSON lines, JSON, CSV, TSV) -> the local layout;
* `fetch`: download, hash check against the Hub's stated hashes, conversion, manifest, atomic
  placement (`python -m jobs data fetch`);
* `availability`: whether a job's data can be had, at submit and in the worker's preflight (which
  fetches on demand when PRUNEBOARD_USE_HUB=1).

Tasks always run from local files; nothing reads a dataset from the Hub during evaluation.
"""
from backend.taskdata.sources import SOURCES, HubSource, get_source

__all__ = ["SOURCES", "HubSource", "get_source"]
