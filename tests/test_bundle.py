"""Results bundles (jobs.bundle, `python -m jobs results ...`): round trip into an empty database
with equal leaderboard, compare and findings views; idempotent import; and bad bundles (truncated,
a future format, rows contradicting their hashes) refused with nothing written."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.config import config_hash, validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import Job, Sample, Score, Trace
from db.session import dispose_engines, init_db, read_session
from jobs import bundle, queue

ROOT = Path(__file__).resolve().parent.parent
MODEL = "builtin:smollm2-135m-instruct"


def _config(method: str, sparsity: float, paradigm: str = "instruct") -> dict:
    config = {"model": MODEL, "paradigm": paradigm,
              "tasks": [{"name": "piqa", "limit": 4}, {"name": "gsm8k", "limit": 4}]}
    if method != "dense":
        config["pruning"] = {"method": method, "sparsity": sparsity}
        config["calibration"] = {"source": "text", "path": "wikitext2/valid.txt"}
    return config


def _samples(pattern: list[bool], paradigm: str) -> list[SampleRecord]:
    samples = []
    for doc_id, correct in enumerate(pattern):
        samples.append(SampleRecord(task="piqa", doc_id=doc_id, prompt=f"Question {doc_id}\nAnswer:", output=" sol1",
                                    extracted="0", gold="0" if correct else "1", correct=correct, prompt_tokens=5,
                                    output_tokens=2, metrics={"acc": float(correct), "acc_norm": float(correct)}))
        reasoning = f"<think>let me think about {doc_id} ñ 🙂</think>" if paradigm == "think" else None
        answer = f"The answer is {doc_id if correct else 99}."
        output = (reasoning or "") + answer
        samples.append(SampleRecord(
            task="gsm8k", doc_id=doc_id, prompt=f"<|im_start|>user\nq{doc_id} <b>&amp;</b><|im_end|>", output=output,
            extracted=str(doc_id if correct else 99), gold=str(doc_id), correct=correct, prompt_tokens=12,
            output_tokens=30 + doc_id, metrics={"exact_match,flexible-extract": float(correct),
                                                "exact_match,strict-match": float("nan")},
            reasoning=reasoning, answer=answer, finish_reason="stop" if doc_id % 2 else "length",
            thinking_tokens=10 + doc_id if paradigm == "think" else None, truncated=False, repetition=0.1 * doc_id))
    return samples


def seed(method: str, sparsity: float, pattern: list[bool], paradigm: str = "instruct") -> int:
    """A run through the real queue: submit, claim, complete with scores and samples."""
    job, _ = queue.submit(validate_config(_config(method, sparsity, paradigm)))
    claimed = queue.claim_next("test-worker")
    assert claimed is not None and claimed.id == job.id
    accuracy = sum(pattern) / len(pattern)
    scores = [ScoreRecord("piqa", "acc", accuracy, 0.1, True, True, "key-piqa"),
              ScoreRecord("piqa", "acc_norm", accuracy, None, True, False, "key-piqa"),
              ScoreRecord("gsm8k", "exact_match,flexible-extract", accuracy, 0.2, True, True, "key-gsm8k")]
    result = RunResult(scores=scores, samples=_samples(pattern, paradigm),
                       efficiency={"params": 1000, "decode_tokens_per_s": 12.5},
                       prune_report={"method": method, "achieved_sparsity": sparsity},
                       manifest={"project_commit": "abc123", "config": _config(method, sparsity, paradigm)},
                       stage_seconds={"evaluate": 1.5})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


@pytest.fixture()
def seeded(tmp_path, monkeypatch):
    init_db()
    ids = {"dense": seed("dense", 0.0, [True, True, True, False]),
           "wanda": seed("wanda", 0.5, [True, False, True, False]),
           "shortgpt": seed("shortgpt", 0.25, [False, False, True, False]),
           "think": seed("dense", 0.0, [True, False, False, True], paradigm="think")}
    yield ids
    dispose_engines()


def _use_database(monkeypatch, home: Path) -> None:
    dispose_engines()
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PRUNEBOARD_HOME", str(home))
    init_db()


def _views() -> dict:
    """What a visitor sees: leaderboard, a trace comparison and the findings, without job ids."""
    from db.compare import compare
    from db.findings import findings
    from db.leaderboard import board

    with read_session() as session:
        jobs = {j.id: (j.paradigm, j.method, j.sparsity) for j in session.scalars(select(Job))}
        shown = board(session)
        frame = shown.frame.drop(columns=[c for c in shown.frame.columns if "job" in str(c).lower()], errors="ignore")
        ids = sorted(i for i, key in jobs.items() if key[0] == "instruct")
        compared = compare(session, ids[:3], "gsm8k")
        verdicts = [(v.key, v.verdict, v.numbers.get("n"), v.numbers.get("estimate")) for v in findings(session)]
    rows = compared.rows.drop(columns=[c for c in compared.rows.columns if "job" in str(c).lower()], errors="ignore")
    pairs = [{k: v for k, v in pair.items() if "job" not in k and k not in ("a", "b")} for pair in compared.pairs]
    return {"board": frame.to_dict(orient="records"), "notes": shown.notes, "pairs": pairs,
            "compare_rows": rows.to_dict(orient="records"), "compare_total": compared.total, "findings": verdicts}


def _strip_run(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("record_sha256",)}


def test_round_trip_into_an_empty_database_gives_the_same_runs_and_views(seeded, tmp_path, monkeypatch):
    first = tmp_path / "first.jsonl.gz"
    counts = bundle.export_bundle(first, job_ids=None)
    assert counts == {"runs": 4, "samples": 32}
    views_before = _views()

    _use_database(monkeypatch, tmp_path / "empty")
    assert bundle.import_bundle(first) == {"imported": 4, "skipped": 0}
    views_after = _views()
    second = tmp_path / "second.jsonl.gz"
    bundle.export_bundle(second, job_ids=None)

    a, b = bundle.read_bundle(first), bundle.read_bundle(second)
    assert [r.origin_id for r in a.runs] == [r.origin_id for r in b.runs]
    for ra, rb in zip(a.runs, b.runs):
        assert _strip_run(ra.record) == _strip_run(rb.record)  # config, scores, manifest, provenance
        assert ra.samples == rb.samples  # full texts, reasoning, metrics (NaN kept as null)
    assert views_after == views_before
    with read_session() as session:
        job = session.scalars(select(Job).order_by(Job.id)).first()
        assert job.imported_at is not None and job.provenance_json["bundle"] == "first.jsonl.gz"
        assert job.provenance_json["commit"] == "abc123"
        assert job.provenance_json["deployment"] == a.runs[0].origin_id.split("/")[0]
        assert session.scalar(select(func.count()).select_from(Trace)) == 32
        stats = job.trace_stats_json
        assert stats and "gsm8k" in stats  # derived columns rebuilt on import


def test_import_is_idempotent_and_skips_runs_made_here(seeded, tmp_path):
    path = tmp_path / "runs.jsonl.gz"
    bundle.export_bundle(path, job_ids=[seeded["wanda"], seeded["dense"]])
    assert bundle.import_bundle(path) == {"imported": 0, "skipped": 2}  # both were made in this database
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4


def test_import_twice_into_another_database_adds_nothing_the_second_time(seeded, tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl.gz"
    bundle.export_bundle(path, job_ids=None)
    _use_database(monkeypatch, tmp_path / "other")
    assert bundle.import_bundle(path) == {"imported": 4, "skipped": 0}
    assert bundle.import_bundle(path) == {"imported": 0, "skipped": 4}
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4
        assert session.scalar(select(func.count()).select_from(Sample)) == 32


def test_export_is_deterministic_and_leaves_out_secrets(seeded, tmp_path):
    from jobs import tokens

    import hashlib

    token = tokens.create("worker-in-the-basement")
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    bundle.export_bundle(a, job_ids=None)
    bundle.export_bundle(b, job_ids=None)
    assert a.read_bytes() == b.read_bytes()
    text = gzip.decompress(a.read_bytes()).decode()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() not in text
    assert "worker-in-the-basement" not in text and "log_tail" not in text and "audit" not in text


def test_export_refuses_unknown_and_unfinished_jobs(seeded, tmp_path):
    queued, _ = queue.submit(validate_config(_config("magnitude", 0.3)))
    with pytest.raises(bundle.BundleError, match="queued"):
        bundle.export_bundle(tmp_path / "x.jsonl.gz", job_ids=[queued.id])
    with pytest.raises(bundle.BundleError, match="no job"):
        bundle.export_bundle(tmp_path / "x.jsonl.gz", job_ids=[9999])
    assert not (tmp_path / "x.jsonl.gz").exists()


def _rewrite(path: Path, out: Path, change) -> Path:
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    change(lines)
    out.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    return out


def _counts() -> tuple[int, int, int]:
    with read_session() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Job, Score, Sample))


def test_bundle_written_under_older_defaults_is_pinned_on_import(seeded, tmp_path, monkeypatch):
    """A v1 bundle's shortgpt config (no params, no calibration section) imports with the v1 values
    written out: the last block compared raw, synthetic 8 x 128 calibration; its hash recomputed."""
    old_document = {"model": MODEL, "pruning": {"method": "shortgpt", "sparsity": 0.25},
                    "tasks": [{"name": "gsm8k", "limit": 4}, {"name": "piqa", "limit": 4}]}
    good = tmp_path / "good.jsonl.gz"
    bundle.export_bundle(good, job_ids=[seeded["shortgpt"]])

    def as_version_1(lines):
        lines[0]["defaults_version"] = 1
        lines[1]["config"] = old_document
        lines[1]["config_hash"] = bundle.document_hash(old_document)
        lines[1]["record_sha256"] = bundle._record_hash(lines[1])

    old = _rewrite(good, tmp_path / "v1.jsonl.gz", as_version_1)
    _use_database(monkeypatch, tmp_path / "target")
    assert bundle.import_bundle(old) == {"imported": 1, "skipped": 0}
    with read_session() as session:
        job = session.scalars(select(Job)).one()
    stored = json.loads(job.config_json)
    assert stored["pruning"]["params"] == {"last_block_output": "raw"} and stored["calibration"] == {}
    assert job.config_hash == config_hash(validate_config(stored)) != bundle.document_hash(old_document)


@pytest.mark.parametrize("damage, message", [
    ("truncated", "truncated"),
    ("no-end", "truncated"),
    ("future", "newer than this PruneBoard"),
    ("future-defaults", "newer than this PruneBoard"),
    ("score-changed", "record_sha256"),
    ("sample-changed", "samples_sha256"),
    ("config-changed", "config_hash"),
    ("not-gzip", "gzip"),
    ("sample-dropped", "samples"),
])
def test_bad_bundles_are_refused_with_nothing_written(seeded, tmp_path, monkeypatch, damage, message):
    good = tmp_path / "good.jsonl.gz"
    bundle.export_bundle(good, job_ids=None)
    bad = tmp_path / "bad.jsonl.gz"
    if damage == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "not-gzip":
        bad.write_text("model: x\n")
    else:
        def change(lines):
            if damage == "no-end":
                lines.pop()
            elif damage == "future":
                lines[0]["format_version"] = bundle.FORMAT_VERSION + 1
            elif damage == "future-defaults":
                lines[0]["defaults_version"] += 1
            elif damage == "score-changed":
                lines[1]["scores"][0]["value"] = 0.99
            elif damage == "sample-changed":
                lines[2]["correct"] = not lines[2]["correct"]
            elif damage == "config-changed":
                lines[1]["config"]["seed"] = 1
                lines[1]["record_sha256"] = bundle._record_hash(lines[1])
            elif damage == "sample-dropped":
                del lines[2]
        _rewrite(good, bad, change)
    _use_database(monkeypatch, tmp_path / "target")
    seed("dense", 0.0, [True, False, True, False])  # the target is not empty: nothing of it may change
    before = _counts()
    with pytest.raises(bundle.BundleError, match=message):
        bundle.import_bundle(bad)
    assert _counts() == before


def test_a_config_invalid_here_refuses_the_whole_bundle(seeded, tmp_path, monkeypatch):
    good = tmp_path / "good.jsonl.gz"
    bundle.export_bundle(good, job_ids=None)

    def change(lines):
        run = [x for x in lines if x["kind"] == "run"][-1]
        run["config"]["pruning"] = {"method": "no-such-method", "sparsity": 0.5}
        run["config_hash"] = bundle.document_hash(run["config"])
        run["record_sha256"] = bundle._record_hash(run)

    bad = _rewrite(good, tmp_path / "bad.jsonl.gz", change)
    _use_database(monkeypatch, tmp_path / "target")
    with pytest.raises(bundle.BundleError, match="no-such-method"):
        bundle.import_bundle(bad)
    assert _counts() == (0, 0, 0)


def test_hidden_runs_leave_only_on_request_and_stay_hidden(seeded, tmp_path, monkeypatch):
    from jobs import access

    access.hide_run(access.User(name="admin", is_admin=True), seeded["wanda"], "checking")
    public, backup = tmp_path / "public.jsonl.gz", tmp_path / "backup.jsonl.gz"
    assert bundle.export_bundle(public)["runs"] == 3
    assert bundle.export_bundle(backup, include_hidden=True)["runs"] == 4
    _use_database(monkeypatch, tmp_path / "restored")
    bundle.import_bundle(backup)
    with read_session() as session:
        assert [j.method for j in session.scalars(select(Job).where(Job.hidden.is_(True)))] == ["wanda"]


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PRUNEBOARD_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_export_import_inspect(seeded, tmp_path):
    import os

    home = Path(os.environ["PRUNEBOARD_HOME"])
    path = tmp_path / "cli.jsonl.gz"
    done = _cli("results", "export", str(path), "--all", env_home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"runs": 4, "samples": 32}

    inspected = _cli("results", "inspect", str(path), "--json", env_home=home)
    summary = json.loads(inspected.stdout)
    assert summary["format_version"] == bundle.FORMAT_VERSION and summary["runs"] == 4 and summary["samples"] == 32
    assert summary["methods"] == ["dense", "shortgpt", "wanda"] and summary["tasks"] == ["gsm8k", "piqa"]
    assert summary["models"] == [MODEL]

    other = tmp_path / "other-home"
    other.mkdir()
    first = _cli("results", "import", str(path), env_home=other)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1]) == {"imported": 4, "skipped": 0}
    again = _cli("results", "import", str(path), env_home=other)
    assert json.loads(again.stdout.splitlines()[-1]) == {"imported": 0, "skipped": 4}

    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(path.read_bytes()[:200])
    failed = _cli("results", "import", str(truncated), env_home=other)
    assert failed.returncode == 2 and "truncated" in failed.stderr and failed.stdout == ""


def test_an_empty_database_is_seeded_once_in_one_transaction(seeded, tmp_path, monkeypatch):
    import app

    snapshot = tmp_path / "snapshot.jsonl.gz"
    bundle.export_bundle(snapshot)
    monkeypatch.setenv("PRUNEBOARD_SEED_RESULTS", "1")

    _use_database(monkeypatch, tmp_path / "broken")  # a failure midway leaves the database empty
    with monkeypatch.context() as patched:
        patched.setattr("jobs.result_rows.write_results", _fail_on_second_call())
        with pytest.raises(RuntimeError, match="disk gone"):
            app.seed_results(snapshot)
    assert _counts() == (0, 0, 0)

    assert app.seed_results(snapshot) == {"imported": 4, "skipped": 0}
    assert app.seed_results(snapshot) is None  # once
    access_delete_all()
    assert app.seed_results(snapshot) is None  # emptied by hand later: not seeded again

    _use_database(monkeypatch, tmp_path / "busy")
    seed("dense", 0.0, [True, True, False, False])
    assert app.seed_results(snapshot) is None  # a database with runs is never seeded

    _use_database(monkeypatch, tmp_path / "off")
    monkeypatch.setenv("PRUNEBOARD_SEED_RESULTS", "0")
    assert app.seed_results(snapshot) is None and _counts() == (0, 0, 0)


def _fail_on_second_call():
    from jobs.result_rows import write_results

    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return write_results(*args, **kwargs)
    return flaky


def access_delete_all() -> None:
    from jobs import access

    admin = access.User(name="admin", is_admin=True)
    with read_session() as session:
        ids = list(session.scalars(select(Job.id)))
    for job_id in ids:
        access.delete_run(admin, job_id, "clearing")


def test_the_shipped_snapshot_is_its_parts_and_covers_the_study():
    """The shipped snapshot joins exactly the committed parts (results/build_snapshot.py build): one
    run per point of the study's grid (40), at least 12 methods besides dense."""
    snapshot = ROOT / "results" / "snapshot.jsonl.gz"
    parts = sorted((ROOT / "results" / "parts").glob("*.jsonl.gz"))
    if not snapshot.is_file():
        pytest.skip("results/snapshot.jsonl.gz is not built yet")
    summary = bundle.inspect_bundle(snapshot)
    part_runs = [bundle.read_bundle(p).runs[0] for p in parts]
    assert summary["runs"] == len(parts)
    assert {r.record["origin_id"] for r in bundle.read_bundle(snapshot).runs} == {r.record["origin_id"] for r in part_runs}
    methods = {(r.record["config"].get("pruning") or {}).get("method", "dense") for r in part_runs}
    assert set(summary["methods"]) == methods
    assert summary["models"] == [MODEL] and summary["paradigms"] == ["instruct", "think"]
    assert snapshot.stat().st_size <= 8 * 1024 * 1024
    assert summary["runs"] >= 40 and len(set(summary["methods"]) - {"dense"}) >= 12
