"""Conversions from files as a Hugging Face dataset repo holds them to the local layout the task
loaders read (`backend/tasks/*.py`, `../shared/data/README.md`).

A `Conversion` names the repo files it reads, the data-dir files it writes and the function that
does it; `backend.taskdata.sources` lists one or more per task. The functions only read and write
the paths they are given (downloads and placement are `backend.taskdata.fetch`'s job), so each can
be tested on a handful of rows. pyarrow is imported only to read parquet.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.tasks._common import write_jsonl

__all__ = ["Conversion", "ConversionError", "read_table", "rows", "verbatim", "json_list", "piqa_split",
           "text_lines", "truthfulqa_targets", "livecodebench_tests"]

Writer = Callable[[list[Path], list[Path]], None]
"""(downloaded source paths, target paths), both in the order the Conversion names them."""

MAX_CSV_FIELD = 16 * 1024 * 1024
"""GPQA's explanations and LiveCodeBench's tests are long; csv's default field limit is 128 KiB."""


class ConversionError(ValueError):
    """An upstream file is not in the format its conversion expects."""


@dataclass(frozen=True)
class Conversion:
    """Repo files (`sources`, paths in the repo) -> data-dir files (`targets`, relative paths)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    write: Writer
    note: str = ""
    """What the conversion changes, for the manifest and `jobs tasks --json`."""


# --- reading upstream files -------------------------------------------------------------------------


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet, JSON-lines, JSON (a list, or lines), CSV or TSV file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(MAX_CSV_FIELD)
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json" and text.lstrip().startswith("["):
        table = json.loads(text)
    elif suffix in (".json", ".jsonl"):
        table = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raise ConversionError(f"{path.name}: no reader for {suffix or 'files without a suffix'}")
    if not all(isinstance(row, dict) for row in table):
        raise ConversionError(f"{path.name}: expected one JSON object per row")
    return table


def _pick(table: list[dict[str, Any]], fields: Mapping[str, str] | None, name: str) -> list[dict[str, Any]]:
    """Each row as {local field: row[upstream field]} (all fields when `fields` is None)."""
    if fields is None:
        return table
    out = []
    for i, row in enumerate(table):
        absent = [upstream for upstream in fields.values() if upstream not in row]
        if absent:
            raise ConversionError(f"{name}: row {i + 1} has no field(s) {', '.join(absent)}")
        out.append({local: row[upstream] for local, upstream in fields.items()})
    return out


def _single(paths: list[Path]) -> Path:
    (path,) = paths
    return path


# --- conversions ------------------------------------------------------------------------------------


def rows(source: str, target: str, fields: Mapping[str, str] | None = None, note: str = "") -> Conversion:
    """Any table -> JSON lines, keeping every field or renaming the chosen ones ({local: upstream})."""

    def write(sources: list[Path], targets: list[Path]) -> None:
        table = _pick(read_table(_single(sources)), fields, source)
        write_jsonl(_single(targets), table)

    renamed = [f"{upstream} -> {local}" for local, upstream in (fields or {}).items() if local != upstream]
    kept = "all fields" if fields is None else f"fields {', '.join(fields)}"
    return Conversion((source,), (target,), write,
                      note or f"rows as JSON lines, {kept}" + (f" (renamed: {', '.join(renamed)})" if renamed else ""))


def verbatim(source: str, target: str) -> Conversion:
    """The upstream bytes unchanged (the file already is in the local layout)."""

    def write(sources: list[Path], targets: list[Path]) -> None:
        shutil.copyfile(_single(sources), _single(targets))

    return Conversion((source,), (target,), write, "copied unchanged")


def json_list(source: str, target: str, fields: Iterable[str]) -> Conversion:
    """A JSON list (or JSON lines) -> one JSON list of the named fields (JEEBench's dataset.json)."""
    names = tuple(fields)

    def write(sources: list[Path], targets: list[Path]) -> None:
        table = _pick(read_table(_single(sources)), {f: f for f in names}, source)
        _single(targets).write_text(json.dumps(table, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    return Conversion((source,), (target,), write, f"a JSON list of {', '.join(names)}")


def piqa_split(source: str, rows_target: str, labels_target: str) -> Conversion:
    """PIQA rows with a `label` column -> the original release's pair: rows without labels, and one
    0/1 label a line."""

    def write(sources: list[Path], targets: list[Path]) -> None:
        table = _pick(read_table(_single(sources)), {"goal": "goal", "sol1": "sol1", "sol2": "sol2",
                                                     "label": "label"}, source)
        rows_path, labels_path = targets
        write_jsonl(rows_path, [{k: row[k] for k in ("goal", "sol1", "sol2")} for row in table])
        labels_path.write_text("".join(f"{int(row['label'])}\n" for row in table), encoding="utf-8")

    return Conversion((source,), (rows_target, labels_target), write, "labels split into a .lst file")


def text_lines(source: str, target: str) -> Conversion:
    """WikiText rows (one line each, `text`) -> the original plain-text file. The datasets version
    stores the original's blank lines (" \\n") as empty strings; they are written back as " \\n"."""

    def write(sources: list[Path], targets: list[Path]) -> None:
        table = _pick(read_table(_single(sources)), {"text": "text"}, source)
        lines = [row["text"] or " \n" for row in table]
        if any(not line.endswith("\n") for line in lines):
            raise ConversionError(f"{source}: every text row should end with a newline")
        _single(targets).write_text("".join(lines), encoding="utf-8")

    return Conversion((source,), (target,), write, 'rows joined into text, empty rows written as " \\n"')


def truthfulqa_targets(source: str, target: str) -> Conversion:
    """`truthful_qa` multiple_choice rows ({choices, labels} per target set) -> TruthfulQA's own
    `mc_task.json` layout ({answer: 1/0} per target set), answers in the same order."""

    def mapping(targets: dict[str, Any], name: str) -> dict[str, int]:
        choices, labels = list(targets["choices"]), [int(x) for x in targets["labels"]]
        if len(choices) != len(labels) or len(set(choices)) != len(choices):
            raise ConversionError(f"{source}: {name} needs distinct choices, one label each")
        return dict(zip(choices, labels))

    def write(sources: list[Path], targets: list[Path]) -> None:
        table = _pick(read_table(_single(sources)), {"question": "question", "mc1_targets": "mc1_targets",
                                                     "mc2_targets": "mc2_targets"}, source)
        out = [{"question": row["question"], "mc1_targets": mapping(row["mc1_targets"], "mc1_targets"),
                "mc2_targets": mapping(row["mc2_targets"], "mc2_targets")} for row in table]
        _single(targets).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    return Conversion((source,), (target,), write, "{choices, labels} -> {answer: label}, as mc_task.json")


class _PlainUnpickler(pickle.Unpickler):
    """Loads only pickles of plain values: every global (class, function) is refused, so a data file
    cannot make the unpickler call anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise ConversionError(f"refusing to unpickle {module}.{name} from a data file")


def _decode_tests(value: Any, where: str) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a list, its JSON text, or (private tests of the HF release) base64 of
    zlib of a pickled JSON string. Returned as a plain list."""
    if isinstance(value, list):
        return value
    if value in (None, ""):
        return []
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        decoded = _PlainUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        tests = json.loads(decoded) if isinstance(decoded, (str, bytes)) else decoded
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as exc:
        raise ConversionError(f"{where}: undecodable test cases ({exc})") from None
    if not isinstance(tests, list):
        raise ConversionError(f"{where}: test cases are not a list")
    return tests


def livecodebench_tests(sources: Iterable[str], target: str) -> Conversion:
    """`code_generation_lite` JSON lines (several release files, concatenated in order) -> one file
    whose test cases and metadata are plain JSON (the task loader refuses the compressed form)."""
    names = tuple(sources)

    def write(paths: list[Path], targets: list[Path]) -> None:
        out = []
        for name, path in zip(names, paths):
            for i, row in enumerate(read_table(path)):
                where = f"{name} row {i + 1}"
                metadata = row.get("metadata") or {}
                out.append({
                    **row,
                    "public_test_cases": _decode_tests(row.get("public_test_cases"), where),
                    "private_test_cases": _decode_tests(row.get("private_test_cases"), where),
                    "metadata": json.loads(metadata) if isinstance(metadata, str) else metadata,
                })
        write_jsonl(_single(targets), out)

    return Conversion(names, (target,), write, "release files concatenated; test cases decoded to plain JSON")
