"""A run as lm-eval's own files (`python -m jobs results run-files`, jobs.run_files,
backend.evaluation.lm_eval_format), read back with lm-eval's own code: its file-name helpers, the `datasets`
json loader its tracker reads results with, and `make_table`."""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
from lm_eval.utils import (
    get_file_task_name,
    get_latest_filename,
    get_results_filenames,
    get_sample_results_filenames,
    make_table,
)

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.session import dispose_engines, init_db, read_session
from db.traces import decode_trace
from jobs import access, queue
from jobs.cli import main
from jobs.run_files import RunFilesError, run_files_zip, write_run_files
from jobs.worker import Worker

TINY_RUN = {
    "model": "builtin:tiny-llama",
    "tasks": [{"name": "synthetic-mc", "limit": 6},
              {"name": "synthetic-arith", "limit": 3, "generation": {"max_new_tokens": 8}}],
    "seed": 0,
}


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run of the tiny Llama (pipeline, lm-eval, worker, SQLite), shared by the tests that
    only read it: (PRUNEBOARD_HOME, job id)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNEBOARD_HOME", str(home))
        patch.setenv("PRUNEBOARD_AUTO_BASELINES", "0")
        for name in ("DATABASE_URL", "WANDB_API_KEY", "PRUNEBOARD_TRACKIO_PROJECT"):  # as conftest's isolated_home
            patch.delenv(name, raising=False)
        job, _ = queue.submit(validate_config(TINY_RUN))
        assert Worker("test").run(drain=True, install_signals=False) == 1
        assert queue.get_job(job.id).state.value == "succeeded"
        dispose_engines()
    return home, job.id


@pytest.fixture()
def use_tiny_run(tiny_run, monkeypatch):
    home, job_id = tiny_run
    dispose_engines()
    monkeypatch.setenv("PRUNEBOARD_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return job_id


def read_back(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The newest results and each task's samples under `folder`, found and loaded as lm-eval does
    (`EvaluationTracker.recreate_metadata_card`: its file-name helpers, `datasets`' json loader)."""
    from datasets import load_dataset

    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    results_file = get_latest_filename(get_results_filenames(names))
    cache = folder.parent / f"{folder.name}-datasets-cache"
    results = load_dataset("json", data_files=str(folder / results_file), split="train", cache_dir=str(cache))
    samples = {}
    for name in get_sample_results_filenames(names):
        rows = load_dataset("json", data_files=str(folder / name), split="train", cache_dir=str(cache))
        samples[get_file_task_name(Path(name).name)] = rows.to_list()
    return results.to_list()[0], samples


def stored(job_id: int) -> tuple[dict, list[dict], dict]:
    """The run's scores, samples (full texts from traces) and manifest, as the database holds them."""
    from sqlalchemy import select

    from db import queries
    from db.schema import Sample, Trace

    with read_session() as session:
        detail = queries.job_detail(session, job_id)
        traces = {(t.task, t.doc_id): decode_trace(t) for t in session.scalars(select(Trace).where(Trace.job_id == job_id))}
        samples = [{"task": s.task, "doc_id": s.doc_id, "metrics": s.metrics_json, "gold": s.gold,
                    "extracted": s.extracted, **traces[(s.task, s.doc_id)]}
                   for s in session.scalars(select(Sample).where(Sample.job_id == job_id))]
    return detail, samples, detail["manifest"]


def test_run_files_of_a_real_run_read_back_with_lm_eval(use_tiny_run, tmp_path, capsys):
    job_id = use_tiny_run
    out = tmp_path / "files"
    assert main(["results", "run-files", str(job_id), str(out)]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert all(p.is_file() and out in p.parents for p in printed) and len(printed) == 3
    assert not [p for p in out.rglob(".run-files-*")]  # the staging folder is gone

    results, samples = read_back(out)
    detail, rows, manifest = stored(job_id)
    assert set(samples) == {"synthetic-mc", "synthetic-arith"} == set(results["results"])
    for score in detail["scores"]:
        key = score["metric"] if "," in score["metric"] else f"{score['metric']},{filter_of(results, score['task'])}"
        assert results["results"][score["task"]][key] == pytest.approx(score["value"], abs=0)
    assert results["n-samples"]["synthetic-mc"] == {"original": manifest["tasks"]["synthetic-mc"]["docs_available"],
                                                    "effective": 6}
    assert results["results"]["synthetic-arith"]["sample_len"] == 3
    assert results["pruneboard"]["comparability_keys"] == {
        task: manifest["tasks"][task]["comparability_key"] for task in ("synthetic-mc", "synthetic-arith")}
    # configs are the evaluated lm-eval configs: their hash is the comparability key's task_config_sha256
    # (read as plain JSON: arrow fills keys absent from some list items with nulls)
    raw = json.loads(next(out.rglob("results_*.json")).read_text())
    for task in ("synthetic-mc", "synthetic-arith"):
        assert sha256_json(raw["configs"][task]) == manifest["tasks"][task]["task_config_sha256"]
        assert raw["configs"][task]["task"] and raw["configs"][task]["output_type"] in ("multiple_choice", "generate_until")

    table = make_table(results)
    assert "synthetic-arith" in table and "flexible-extract" in table and "exact_match" in table

    by_key = {(r["task"], r["doc_id"]): r for r in rows}
    for task, lines in samples.items():
        assert sorted(line["doc_id"] for line in lines) == sorted(d for t, d in by_key if t == task)
        for line in lines:
            row = by_key[(task, line["doc_id"])]
            assert line["arguments"]["gen_args_0"]["arg_0"] == row["prompt"]
            for metric in line["metrics"]:
                assert line[metric] == row["metrics"][metric]
    arith = samples["synthetic-arith"][0]
    row = by_key[("synthetic-arith", arith["doc_id"])]
    assert arith["resps"] == [[row["output"]]] and arith["filtered_resps"] == [str(row["extracted"])]  # as lm-eval, strings
    assert arith["filter"] == "flexible-extract"
    choice = samples["synthetic-mc"][0]
    row = by_key[("synthetic-mc", choice["doc_id"])]
    options = [re.match(r"^[* ] \[\d+\] \S+ (.*)$", line).group(1) for line in row["output"].split("\n")]
    assert [arg["arg_1"] for arg in choice["arguments"].values()] == [f" {o}" for o in options]
    chosen = max(range(len(options)), key=lambda i: float(choice["filtered_resps"][i][0]))
    assert str(chosen) == row["extracted"]


def filter_of(results: dict, task: str) -> str:
    keys = [k for k in results["results"][task] if "," in k and "_stderr" not in k and results["results"][task][k] is not None]
    return keys[0].split(",", 1)[1]


def sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_the_browser_zip_holds_the_same_layout(use_tiny_run, tmp_path):
    archive = run_files_zip(use_tiny_run, directory=tmp_path)
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        bundle.extractall(tmp_path / "unzipped")
    assert len(get_results_filenames(names)) == 1 and len(get_sample_results_filenames(names)) == 2
    results, samples = read_back(tmp_path / "unzipped")
    assert results["pruneboard"]["job_id"] == use_tiny_run and set(samples) == {"synthetic-mc", "synthetic-arith"}


# --- runs stored before the lm-eval config was recorded --------------------------------------------


def older_run() -> int:
    """A run as older versions stored it (no lm_eval_config): two gsm8k filters, one NaN metric, a
    WinoGrande sample whose options are its contexts, a perplexity task."""
    config = validate_config({"model": "builtin:noop", "tasks": ["gsm8k", "winogrande", "wikitext2-ppl"]})
    job, _ = queue.submit(config, submitter="alice")
    claimed = queue.claim_next("w")
    contexts = "Sarah gave Maria a gift because Sarah\nSarah gave Maria a gift because Maria"
    samples = [
        SampleRecord("gsm8k", 0, "<|user|>What is 2+2?", "It is 4.", "4", "4", True, 5, 3,
                     {"exact_match,strict-match": float("nan"), "exact_match,flexible-extract": 1.0},
                     answer="It is 4.", finish_reason="stop"),
        SampleRecord("winogrande", 0, contexts, "  [0] -7.5000 Sarah gave Maria a gift because Sarah\n"
                     "* [1] -6.2500 Sarah gave Maria a gift because Maria", "1", "1", True, 9, 4, {"acc": 1.0}),
        SampleRecord("wikitext2-ppl", 0, "some text window", "mean NLL 2.0000 over 10 predicted tokens", None, "",
                     None, 10, 0, {"nll": 2.0, "nll_sum": 20.0, "tokens": 10.0}),
    ]
    scores = [ScoreRecord("gsm8k", "exact_match,flexible-extract", 1.0, None, True, True, "key-gsm8k"),
              ScoreRecord("winogrande", "acc", 1.0, None, True, True, "key-wino"),
              ScoreRecord("wikitext2-ppl", "perplexity", 7.389, None, False, True, "key-ppl")]
    manifest = {"lm_eval": "0.4.13", "tasks": {
        "gsm8k": {"comparability_key": "key-gsm8k", "primary_metric": "exact_match,flexible-extract",
                  "output_type": "generate", "docs": 1, "docs_available": 1319, "num_fewshot": 0,
                  "generation": {"until": [], "max_gen_toks": 256, "do_sample": False}, "lm_eval_task_version": 3.0},
        "winogrande": {"comparability_key": "key-wino", "primary_metric": "acc", "output_type": "loglikelihood",
                       "docs": 1, "docs_available": 1267, "num_fewshot": 0, "lm_eval_task_version": 1.0},
        "wikitext2-ppl": {"comparability_key": "key-ppl", "output_type": "perplexity", "primary_metric": "perplexity",
                          "docs": 1, "windows_available": 4, "protocol": "windows of 512 tokens",
                          "key_fields": {"protocol_version": 1}}}}
    assert queue.complete(job.id, claimed.attempts, RunResult(scores, samples, {}, {}, manifest, {"evaluate": 2.0}))
    return job.id


def test_older_runs_get_filters_from_their_metric_keys_and_rebuilt_configs(tmp_path):
    init_db()
    job_id = older_run()
    write_run_files(job_id, tmp_path / "out")
    results, samples = read_back(tmp_path / "out")

    gsm8k = results["results"]["gsm8k"]
    assert gsm8k["exact_match,flexible-extract"] == 1.0 and gsm8k["exact_match_stderr,flexible-extract"] == "N/A"
    assert results["configs"]["gsm8k"]["metadata"]["pruneboard_reconstructed"] is True
    assert results["configs"]["gsm8k"]["output_type"] == "generate_until"
    lines = {line["filter"]: line for line in samples["gsm8k"]}
    assert set(lines) == {"strict-match", "flexible-extract"}
    assert lines["flexible-extract"]["filtered_resps"] == ["4"] and lines["flexible-extract"]["exact_match"] == 1.0
    assert lines["strict-match"]["filtered_resps"] == ["None"] and lines["strict-match"]["exact_match"] is None

    wino = samples["winogrande"][0]
    assert [a["arg_0"] for a in wino["arguments"].values()] == ["Sarah gave Maria a gift because Sarah",
                                                                 "Sarah gave Maria a gift because Maria"]
    assert results["results"]["winogrande"]["acc,none"] == 1.0
    assert results["configs"]["winogrande"]["output_type"] == "multiple_choice"

    ppl = samples["wikitext2-ppl"][0]
    assert ppl["resps"] == [["-20.0"]] and ppl["nll"] == 2.0
    assert results["results"]["wikitext2-ppl"]["perplexity,none"] == pytest.approx(7.389)
    assert results["n-samples"]["wikitext2-ppl"] == {"original": 4, "effective": 1}
    assert float(results["total_evaluation_time_seconds"]) == pytest.approx(2.0, abs=0.5)


# --- refusals -------------------------------------------------------------------------------------


def test_unknown_and_unfinished_jobs_exit_2_and_write_nothing(tmp_path, capsys):
    init_db()
    queued, _ = queue.submit(validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"]}))
    for job_id, message in ((999, "no job with id 999"), (queued.id, f"job {queued.id} is queued")):
        out = tmp_path / f"out-{job_id}"
        assert main(["results", "run-files", str(job_id), str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_hidden_runs_need_include_hidden(tmp_path, capsys):
    init_db()
    job_id = older_run()
    access.hide_run(access.User("admin", is_admin=True), job_id, "bad scores")
    assert main(["results", "run-files", str(job_id), str(tmp_path / "a")]) == 2
    assert "is hidden" in capsys.readouterr().err and not (tmp_path / "a").exists()
    with pytest.raises(RunFilesError, match="hidden"):
        run_files_zip(job_id)
    assert main(["results", "run-files", str(job_id), str(tmp_path / "b"), "--include-hidden"]) == 0
    assert len(list((tmp_path / "b").rglob("samples_*.jsonl"))) == 3

    # the run detail's download: admins only for a hidden run
    from ui import run_actions

    path, note = run_actions.lm_eval_files(job_id, access.User.named("alice"))
    assert path is None and "hidden" in note
    path, note = run_actions.lm_eval_files(job_id, access.User("carol", is_admin=True))
    with zipfile.ZipFile(path) as bundle:
        assert len(get_sample_results_filenames(bundle.namelist())) == 3
