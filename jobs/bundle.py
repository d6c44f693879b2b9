"""Results bundles: one versioned file holding a set of finished runs, to move results between
databases (the shipped snapshot, a Space's backup on the Hub, a colleague's runs).

Format (`FORMAT_VERSION` 1): gzip-compressed JSON Lines, one object a line, keys sorted, gzip
header time 0 (equal runs give equal bytes).

1. `{"kind": "header", "format": "pruneboard-results", "format_version": 1, "defaults_version": D,
   "created_by": {"commit", "deployment", "deployment_name"}, "runs": R, "samples": S}`;
   `defaults_version` is `backend.defaults.DEFAULTS_VERSION` of the code that wrote it: configs omit
   parameters at their default, so import writes out every default changed since (see
   `backend.defaults`).
2. For each run, a run line, then its sample lines:
   `{"kind": "run", "origin_id", "config", "config_hash", "submitter", "created_at", "started_at",
   "finished_at", "hidden", "manifest", "efficiency", "prune_report", "stage_seconds", "scores": [...],
   "provenance": {"commit", "deployment", "deployment_name"}, "samples": n, "samples_sha256",
   "record_sha256"}` and n lines `{"kind": "sample", "origin_id", "task", "doc_id", "prompt",
   "output", "reasoning", "answer", "extracted", "gold", "correct", "prompt_tokens",
   "output_tokens", "metrics", "finish_reason", "thinking_tokens", "truncated", "repetition",
   "truncated_for_storage"}` with the full texts.
3. `{"kind": "end", "runs": R, "samples": S}`: a file cut short has none.

Only succeeded runs are exported; never tokens, the audit log or log tails. What the database
derives (previews, compressed traces, trace statistics, the job's model/method columns) is rebuilt
on import. `config_hash` is the sha256 of the config as written, `record_sha256` of the run line
without itself, `samples_sha256` of the run's sample lines: a bundle whose rows contradict them is
refused whole. Import is one transaction and skips runs whose origin id is already present (a run
made here has origin id "<this deployment's id>/<job id>").
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from backend.defaults import DEFAULTS_VERSION, pin_changed_defaults
from backend.result import SampleRecord, ScoreRecord
from db import results_version
from db.schema import Deployment, Job, Sample, Score, Trace, utcnow
from db.states import JobState
from jobs import result_rows

__all__ = [
    "FORMAT", "FORMAT_VERSION", "Bundle", "BundleError", "BundleRun", "deployment_id", "export_bundle",
    "import_bundle", "inspect_bundle", "load_run", "merge_bundles", "origin_id", "read_bundle", "seed_empty_database",
    "write_bundle",
]

FORMAT = "pruneboard-results"
FORMAT_VERSION = 1
SAMPLE_FIELDS = (
    "task", "doc_id", "prompt", "output", "reasoning", "answer", "extracted", "gold", "correct",
    "prompt_tokens", "output_tokens", "metrics", "finish_reason", "thinking_tokens", "truncated",
    "repetition", "truncated_for_storage",
)
SCORE_FIELDS = ("task", "metric", "value", "stderr", "higher_is_better", "primary", "comparability_key",
                "scorer_version")
RUN_FIELDS = ("origin_id", "config", "config_hash", "submitter", "created_at", "started_at", "finished_at",
              "hidden", "manifest", "efficiency", "prune_report", "stage_seconds", "scores", "provenance",
              "samples", "samples_sha256", "record_sha256")


class BundleError(ValueError):
    """A bundle that cannot be read or imported; the message is one line. Nothing was written."""


@dataclass
class BundleRun:
    record: dict[str, Any]
    """The run line (config, manifest, scores, provenance, hashes)."""
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def origin_id(self) -> str:
        return self.record["origin_id"]

    @property
    def config_hash(self) -> str:
        return self.record["config_hash"]


@dataclass
class Bundle:
    header: dict[str, Any]
    runs: list[BundleRun]

    @property
    def sample_count(self) -> int:
        return sum(len(run.samples) for run in self.runs)


# --- identity ---------------------------------------------------------------------------------


def deployment_id(session) -> str:
    """This database's id (made by migration 0007, one row)."""
    row = session.scalars(select(Deployment)).first()
    if row is None:  # a database created from the schema rather than the migrations
        raise BundleError("this database has no deployment id (run the migrations: python -m jobs status)")
    return row.id


def origin_id(job: Job, deployment: str) -> str:
    return job.origin_id or f"{deployment}/{job.id}"


def _deployment_name() -> str | None:
    """The Space a deployment runs on; nothing else (host names stay private)."""
    return os.environ.get("SPACE_ID") or None


# --- hashing ------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def document_hash(document: dict[str, Any]) -> str:
    """`backend.config.config_hash` of a config as written (canonical, without `resources`)."""
    return _sha256(json.dumps({k: v for k, v in document.items() if k != "resources"},
                              sort_keys=True, separators=(",", ":")))


def _samples_hash(samples: Iterable[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(_canonical(sample).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def _record_hash(record: dict[str, Any]) -> str:
    return _sha256(_canonical({k: v for k, v in record.items() if k != "record_sha256"}))


# --- export -----------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (as the database stores them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sample_dict(sample: Sample, trace: Trace | None) -> dict[str, Any]:
    from db.traces import decode_trace

    if trace is not None:
        texts = decode_trace(trace)
    else:  # rows stored before traces existed keep their full texts in `samples`
        texts = {"prompt": sample.prompt, "output": sample.output, "reasoning": None, "answer": sample.answer,
                 "truncated_for_storage": False}
    return _clean({
        "task": sample.task, "doc_id": sample.doc_id, "prompt": texts["prompt"], "output": texts["output"],
        "reasoning": texts["reasoning"], "answer": texts["answer"], "extracted": sample.extracted,
        "gold": sample.gold, "correct": sample.correct, "prompt_tokens": sample.prompt_tokens,
        "output_tokens": sample.output_tokens, "metrics": dict(sample.metrics_json or {}),
        "finish_reason": sample.finish_reason, "thinking_tokens": sample.thinking_tokens,
        "truncated": bool(sample.truncated), "repetition": sample.repetition,
        "truncated_for_storage": bool(texts["truncated_for_storage"]),
    })


def _run_from_job(session, job: Job, deployment: str) -> BundleRun:
    origin = origin_id(job, deployment)
    samples = session.scalars(select(Sample).where(Sample.job_id == job.id)
                              .order_by(Sample.task, Sample.doc_id)).all()
    traces = {(t.task, t.doc_id): t for t in session.scalars(select(Trace).where(Trace.job_id == job.id))}
    sample_dicts = [{"origin_id": origin, **_sample_dict(s, traces.get((s.task, s.doc_id)))} for s in samples]
    scores = session.scalars(select(Score).where(Score.job_id == job.id).order_by(Score.task, Score.metric)).all()
    manifest = job.manifest_json or {}
    provenance = ({k: v for k, v in job.provenance_json.items() if k != "bundle"} if job.provenance_json else
                  {"commit": manifest.get("project_commit"), "deployment": deployment,
                   "deployment_name": _deployment_name()})  # which file it came in by stays local
    record = _clean({
        "kind": "run",
        "origin_id": origin,
        "config": json.loads(job.config_json),
        "config_hash": job.config_hash,
        "submitter": job.submitter,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "hidden": bool(job.hidden),
        "manifest": manifest,
        "efficiency": job.efficiency_json or {},
        "prune_report": job.prune_report_json or {},
        "stage_seconds": job.stage_seconds_json or {},
        "scores": [{"task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr,
                    "higher_is_better": bool(s.higher_is_better), "primary": bool(s.is_primary),
                    "comparability_key": s.comparability_key, "scorer_version": s.scorer_version} for s in scores],
        "provenance": provenance,
        "samples": len(sample_dicts),
        "samples_sha256": None,
    })
    sample_dicts = [{"kind": "sample", **s} for s in sample_dicts]
    record["samples_sha256"] = _samples_hash(sample_dicts)
    record["record_sha256"] = _record_hash(record)
    return BundleRun(record, sample_dicts)


def load_run(session, job: Job) -> BundleRun:
    """One stored run as a bundle holds it: its run record and its samples with their full texts
    (`jobs.run_files` writes lm-eval's files from it)."""
    return _run_from_job(session, job, deployment_id(session))


def export_bundle(path: str | Path, job_ids: Iterable[int] | None = None, include_hidden: bool = False) -> dict[str, int]:
    """Write the named succeeded runs (None: every succeeded run; hidden ones only with
    `include_hidden`) to `path`; return {"runs", "samples"}. Raises BundleError for a job that does
    not exist or has not succeeded (nothing is written then)."""
    from db.session import read_session

    with read_session() as session:
        deployment = deployment_id(session)
        if job_ids is None:
            query = select(Job).where(Job.state == JobState.SUCCEEDED).order_by(Job.id)
            if not include_hidden:
                query = query.where(Job.hidden.is_(False))
            jobs = list(session.scalars(query))
        else:
            jobs = []
            for job_id in dict.fromkeys(job_ids):
                job = session.get(Job, job_id)
                if job is None:
                    raise BundleError(f"no job with id {job_id}")
                if job.state != JobState.SUCCEEDED:
                    raise BundleError(f"job {job_id} is {job.state.value}; only succeeded runs are exported")
                jobs.append(job)
        runs = [_run_from_job(session, job, deployment) for job in jobs]
    header = {"created_by": {"commit": _commit(), "deployment": deployment, "deployment_name": _deployment_name()}}
    return write_bundle(path, runs, header)


def _commit() -> str:
    from backend.manifest import project_commit

    return project_commit()


def write_bundle(path: str | Path, runs: list[BundleRun], header: dict[str, Any] | None = None) -> dict[str, int]:
    """Write runs as a bundle (atomically: a temporary file renamed over `path`)."""
    path = Path(path)
    samples = sum(len(run.samples) for run in runs)
    head = {"kind": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
            "defaults_version": DEFAULTS_VERSION, "created_by": {}, **(header or {}),
            "runs": len(runs), "samples": samples}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                with io.TextIOWrapper(gz, encoding="utf-8", errors="surrogatepass", newline="\n") as out:
                    out.write(_canonical(head) + "\n")
                    for run in runs:
                        out.write(_canonical(run.record) + "\n")
                        for sample in run.samples:
                            out.write(_canonical(sample) + "\n")
                    out.write(_canonical({"kind": "end", "runs": len(runs), "samples": samples}) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return {"runs": len(runs), "samples": samples}


# --- reading ------------------------------------------------------------------------------------


def read_bundle(source: str | Path | bytes) -> Bundle:
    """Parse and check a whole bundle (a path or its bytes); raise BundleError naming the first
    problem. Configs written under older defaults come back with those defaults written out."""
    lines = _lines(source)
    try:
        header = json.loads(next(lines))
    except StopIteration:
        raise BundleError("empty file: not a results bundle") from None
    except json.JSONDecodeError:
        raise BundleError("line 1: not JSON; not a results bundle") from None
    if not isinstance(header, dict) or header.get("kind") != "header" or header.get("format") != FORMAT:
        raise BundleError(f"line 1 is not a {FORMAT} header; not a results bundle")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle format version {version} is newer than this PruneBoard reads "
                          f"(up to {FORMAT_VERSION}); upgrade PruneBoard to import it")
    defaults_version = header.get("defaults_version")
    if not isinstance(defaults_version, int) or defaults_version < 0:
        raise BundleError(f"bad defaults_version {defaults_version!r}")
    if defaults_version > DEFAULTS_VERSION:
        raise BundleError(f"bundle configs use defaults version {defaults_version}, newer than this PruneBoard's "
                          f"({DEFAULTS_VERSION}); upgrade PruneBoard to import it")
    runs: list[BundleRun] = []
    end = None
    number = 1
    for number, line in enumerate(lines, start=2):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise BundleError(f"line {number}: not JSON") from None
        kind = item.get("kind") if isinstance(item, dict) else None
        if end is not None:
            raise BundleError(f"line {number}: content after the end line")
        if kind == "run":
            runs.append(BundleRun(item))
        elif kind == "sample":
            if not runs or item.get("origin_id") != runs[-1].origin_id:
                raise BundleError(f"line {number}: a sample outside its run")
            runs[-1].samples.append(item)
        elif kind == "end":
            end = item
        else:
            raise BundleError(f"line {number}: unknown line kind {kind!r}")
    if end is None:
        raise BundleError(f"the bundle ends at line {number} without its end line: truncated")
    counted = {"runs": len(runs), "samples": sum(len(r.samples) for r in runs)}
    for name, value in counted.items():
        if end.get(name) != value or header.get(name) != value:
            raise BundleError(f"the bundle says {header.get(name)} {name} but holds {value}")
    seen: set[str] = set()
    for run in runs:
        _check_run(run, seen)
        if defaults_version < DEFAULTS_VERSION:
            run.record["config"] = pin_changed_defaults(run.record["config"], defaults_version)
    return Bundle(header, runs)


def _lines(source: str | Path | bytes):
    raw = source if isinstance(source, bytes) else _read_bytes(Path(source))
    try:
        text = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"not a complete gzip file ({exc.__class__.__name__}: {exc}): truncated or not a bundle") from None
    try:
        decoded = text.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise BundleError("not UTF-8 text: not a results bundle") from None
    return iter(line for line in decoded.split("\n") if line.strip())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None


def _check_run(run: BundleRun, seen: set[str]) -> None:
    record = run.record
    missing = [f for f in RUN_FIELDS if f not in record]
    origin = record.get("origin_id")
    if missing:
        raise BundleError(f"run {origin!r}: missing field(s) {', '.join(missing)}")
    if not isinstance(origin, str) or not origin or len(origin) > 120:
        raise BundleError(f"run origin id {origin!r} is not a string of 1 to 120 characters")
    if origin in seen:
        raise BundleError(f"run {origin}: listed twice")
    seen.add(origin)
    if record["record_sha256"] != _record_hash(record):
        raise BundleError(f"run {origin}: its record does not match its record_sha256 (altered or corrupt)")
    if not isinstance(record["config"], dict) or record["config_hash"] != document_hash(record["config"]):
        raise BundleError(f"run {origin}: its config does not match its config_hash (altered or corrupt)")
    if record["samples"] != len(run.samples):
        raise BundleError(f"run {origin}: says {record['samples']} samples but holds {len(run.samples)}")
    if record["samples_sha256"] != _samples_hash(run.samples):
        raise BundleError(f"run {origin}: its samples do not match its samples_sha256 (altered or corrupt)")
    for sample in run.samples:
        absent = [f for f in SAMPLE_FIELDS if f not in sample]
        if absent:
            raise BundleError(f"run {origin}: a sample has no {', '.join(absent)}")
    for score in record["scores"]:
        if not isinstance(score, dict) or any(f not in score for f in SCORE_FIELDS):
            raise BundleError(f"run {origin}: a score lacks one of {', '.join(SCORE_FIELDS)}")


def inspect_bundle(source: str | Path | bytes) -> dict[str, Any]:
    """What a bundle holds: format and defaults versions, counts and the distinct names."""
    bundle = read_bundle(source)
    configs = [run.record["config"] for run in bundle.runs]
    return {
        "format": FORMAT,
        "format_version": bundle.header["format_version"],
        "defaults_version": bundle.header["defaults_version"],
        "created_by": bundle.header.get("created_by", {}),
        "runs": len(bundle.runs),
        "samples": bundle.sample_count,
        "methods": sorted({(c.get("pruning") or {}).get("method", "dense") for c in configs}),
        "tasks": sorted({t["name"] if isinstance(t, dict) else t for c in configs for t in c.get("tasks", [])}),
        "models": sorted({c.get("model") for c in configs if c.get("model")}),
        "paradigms": sorted({c.get("paradigm", "instruct") for c in configs}),
        "hidden": sum(bool(run.record.get("hidden")) for run in bundle.runs),
    }


def merge_bundles(sources: Iterable[str | Path], out: str | Path) -> dict[str, int]:
    """Join bundles into one (runs in order, each origin id once)."""
    runs: dict[str, BundleRun] = {}
    for source in sources:
        for run in read_bundle(source).runs:
            runs.setdefault(run.origin_id, run)
    return write_bundle(out, list(runs.values()), {"created_by": {"commit": _commit()}})


# --- import -------------------------------------------------------------------------------------


def _datetime(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except (TypeError, ValueError):
        raise BundleError(f"not a date: {value!r}") from None


def _sample_record(sample: dict[str, Any]) -> SampleRecord:
    return SampleRecord(
        task=sample["task"], doc_id=int(sample["doc_id"]), prompt=sample["prompt"] or "",
        output=sample["output"] or "", extracted=sample["extracted"], gold=sample["gold"],
        correct=sample["correct"], prompt_tokens=int(sample["prompt_tokens"]),
        output_tokens=int(sample["output_tokens"]),
        metrics={k: (math.nan if v is None else float(v)) for k, v in (sample["metrics"] or {}).items()},
        reasoning=sample["reasoning"], answer=sample["answer"], finish_reason=sample["finish_reason"],
        thinking_tokens=sample["thinking_tokens"], truncated=bool(sample["truncated"]),
        repetition=sample["repetition"],
    )


@dataclass
class _Prepared:
    run: BundleRun
    job: dict[str, Any]
    scores: list[ScoreRecord]
    samples: list[SampleRecord]
    scorer_versions: set[str | None]


def _prepare(run: BundleRun, source_name: str | None) -> _Prepared:
    """Everything needed to write a run, checked before anything is written."""
    from backend.config import ConfigError, canonical_json, config_hash, validate_config
    from common.trace_stats import trace_stats
    from jobs.facts import run_facts
    from jobs.resources import job_requirements

    record = run.record
    try:
        config = validate_config(record["config"])
    except ConfigError as exc:
        raise BundleError(f"run {run.origin_id}: its config is not valid here: {exc}") from None
    try:
        scores = [ScoreRecord(task=s["task"], metric=s["metric"], value=s["value"], stderr=s["stderr"],
                              higher_is_better=bool(s["higher_is_better"]), primary=bool(s["primary"]),
                              comparability_key=s["comparability_key"]) for s in record["scores"]]
        samples = [_sample_record(s) for s in run.samples]
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(f"run {run.origin_id}: a malformed score or sample ({exc.__class__.__name__}: {exc})") from None
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        raise BundleError(f"run {run.origin_id}: a (task, doc) sample appears twice")
    generated = [s for s in samples if s.finish_reason is not None]
    provenance = {**(record.get("provenance") or {}), "bundle": source_name}
    job = {
        "config_hash": config_hash(config), "config_json": canonical_json(config), "model": config.model,
        "paradigm": config.paradigm, "method": config.pruning.method, "sparsity": config.pruning.sparsity,
        "state": JobState.SUCCEEDED, "attempts": 1, "requeues": 0, "progress": 1.0, "stage": "done",
        "cancel_requested": False, "submitter": record.get("submitter"),
        "created_at": _datetime(record.get("created_at")) or utcnow(),
        "started_at": _datetime(record.get("started_at")), "finished_at": _datetime(record.get("finished_at")),
        "manifest_json": record.get("manifest") or {}, "efficiency_json": record.get("efficiency") or {},
        "prune_report_json": record.get("prune_report") or {}, "stage_seconds_json": record.get("stage_seconds") or {},
        "trace_stats_json": trace_stats(generated), "hidden": bool(record.get("hidden")),
        "origin_id": run.origin_id, "provenance_json": provenance, **job_requirements(config),
        **run_facts(json.loads(canonical_json(config))),
    }
    return _Prepared(run, job, scores, samples, {s.get("scorer_version") for s in record["scores"]})


def import_bundle(source: str | Path | bytes, source_name: str | None = None) -> dict[str, int]:
    """Import every run whose origin id is not present yet, in one transaction; return
    {"imported", "skipped"} (runs). Raises BundleError, writing nothing, for a bundle that does not
    read, check or validate."""
    from db.session import write_session

    prepared = _read_prepared(source, source_name)
    with write_session() as session:
        return _import_prepared(session, prepared)


def _read_prepared(source: str | Path | bytes, source_name: str | None) -> list[_Prepared]:
    if source_name is None and not isinstance(source, bytes):
        source_name = Path(source).name
    return [_prepare(run, source_name) for run in read_bundle(source).runs]


def seed_empty_database(source: str | Path | bytes, source_name: str | None = None) -> dict[str, int] | None:
    """Import a bundle into this database if it holds no job and was never seeded: in one
    transaction with the check, so a process stopped midway leaves the database empty. Returns the
    counts, or None when the database was not empty or was seeded before."""
    from db.session import write_session

    prepared = _read_prepared(source, source_name)
    with write_session() as session:
        row = session.scalars(select(Deployment)).first()
        if row is None or row.seeded_at is not None or session.scalar(select(Job.id).limit(1)) is not None:
            return None
        row.seeded_at = utcnow()
        return _import_prepared(session, prepared)


def _import_prepared(session, prepared: list[_Prepared]) -> dict[str, int]:
    imported = skipped = 0
    now = utcnow()
    deployment = deployment_id(session)
    present = {origin_id(job, deployment) for job in session.scalars(select(Job))}
    for item in prepared:
        if item.run.origin_id in present:
            skipped += 1
            continue
        job = Job(**item.job, imported_at=now)
        session.add(job)
        session.flush()
        by_version: dict[str | None, list[ScoreRecord]] = {}
        for score, raw in zip(item.scores, item.run.record["scores"]):
            by_version.setdefault(raw.get("scorer_version"), []).append(score)
        for version, scores in by_version.items():
            result_rows.write_results(session, job.id, scores, [], scorer_version=version)
        result_rows.write_results(session, job.id, [], item.samples)
        present.add(item.run.origin_id)
        imported += 1
    if imported:
        results_version.bump(session)
    return {"imported": imported, "skipped": skipped}
