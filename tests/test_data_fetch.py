"""`python -m jobs data fetch` against a loopback Hub (tests/hub_server.py) serving a few rows of every
task in its upstream format (tests/upstream_fixtures.py): the real huggingface_hub client downloads,
the files land in the local layout with their manifest and load through each task's own loader;
corrupt, truncated and failed downloads leave the data dir byte-identical; exit codes; the sources
table; the loopback Hub's upload side; and a job whose data is missing, refused at submit on a local
deployment or failed by the worker with the one line naming the fetch command.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.taskdata.convert import ConversionError, livecodebench_tests
from backend.taskdata.sources import SOURCES
from backend.tasks import get_task, list_tasks
from backend.tasks._common import read_jsonl
from backend.tasks.base import missing_data_message
from hub_server import TEST_TOKEN, FakeHub
from upstream_fixtures import UPSTREAM_ROWS, publish

ROOT = Path(__file__).resolve().parent.parent
DATA_TASKS = sorted(t.name for t in list_tasks() if t.data_files)


def run_jobs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a separate process (the environment of the test, plus `env`)."""
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})}, check=False)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (folders implied): equal trees are byte-identical."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_data(data_dir: Path) -> Path:
    """A data dir holding earlier files of the tasks under test and a file of another task."""
    (data_dir / "piqa").mkdir(parents=True)
    (data_dir / "piqa/dev.jsonl").write_text('{"goal": "old", "sol1": "a", "sol2": "b"}\n')
    (data_dir / "gsm8k").mkdir()
    (data_dir / "gsm8k/test.jsonl").write_text('{"question": "old", "answer": "#### 1"}\n')
    (data_dir / "notes.txt").write_text("not ours\n")
    return data_dir


# --- every task, once, through the CLI --------------------------------------------------------------


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """`data fetch --all --json` in a subprocess against a loopback Hub holding every source."""
    root = tmp_path_factory.mktemp("fetch-all")
    with FakeHub() as hub:
        commits = publish(hub)
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TEST_TOKEN, "HF_HOME": str(root / "hf-home"),
               "PRUNEBOARD_HOME": str(root / "home"), "PRUNEBOARD_DATA_DIR": str(root / "data")}
        proc = run_jobs("data", "fetch", "--all", "--json", env={k: v for k, v in env.items()})
        requests = list(hub.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data": root / "data", "report": json.loads(proc.stdout), "stderr": proc.stderr,
            "commits": commits, "requests": requests}


def test_every_study_task_has_a_hub_source():
    assert sorted(SOURCES) == DATA_TASKS and len(DATA_TASKS) == 21
    for name, source in SOURCES.items():
        spec = get_task(name)
        assert set(spec.data_files) <= set(source.outputs), name
        assert source.files and source.evidence and isinstance(source.verified, bool)
        assert source.pinned == (len(source.revision) == 40), name
        assert set(UPSTREAM_ROWS[name]) == set(source.files), name  # a fixture for every upstream file
    assert [n for n, s in SOURCES.items() if s.gated] == ["gpqa-diamond"]
    assert "not to reveal" in SOURCES["gpqa-diamond"].gated


def test_fetch_all_writes_every_task_with_its_manifest(fetched):
    data, report = fetched["data"], fetched["report"]
    assert report["failed"] == {} and report["data_dir"] == str(data)
    assert {t["task"]: t["status"] for t in report["tasks"]} == {name: "fetched" for name in SOURCES}
    for entry in report["tasks"]:
        source = SOURCES[entry["task"]]
        manifest_file = Path(entry["manifest"])
        assert manifest_file.parent == data / Path(source.outputs[0]).parent
        manifest = json.loads(manifest_file.read_text())
        assert manifest["repo_id"] == source.repo_id and manifest["revision"] == source.revision
        assert manifest["commit"] == fetched["commits"][source.repo_id]
        assert manifest["verified"] is source.verified and manifest["gated"] is (source.gated is not None)
        assert manifest["fetched_at"]
        assert set(manifest["files"]) == set(source.outputs) == set(entry["files"])
        for rel, digest in manifest["files"].items():
            assert sha256(data / rel) == digest, rel  # the recorded hash is the written file's
        for path, record in manifest["upstream"].items():
            assert record["checked"] == ("sha256" if path.endswith(".parquet") else "git blob id")
    assert not list(data.rglob("*.fetching")), "no temporary file left behind"


def test_fetch_all_asked_the_hub_for_commits_hashes_and_files(fetched):
    requests = fetched["requests"]
    for source in SOURCES.values():
        repo = source.repo_id
        assert ("GET", f"/api/datasets/{repo}/revision/{source.revision}") in requests
        commit = fetched["commits"][repo]
        assert ("POST", f"/api/datasets/{repo}/paths-info/{commit}") in requests
        for path in source.files:  # by the commit, so a branch moving mid-fetch changes nothing
            assert ("GET", f"/datasets/{repo}/resolve/{commit}/{path}") in requests


def _lm_eval_docs(configs: dict[str, dict]) -> dict[str, list]:
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_defaults=False).load(list(configs.values()))["tasks"]
    return {name: list(tasks[config["task"]].eval_docs) for name, config in configs.items()}


def test_fetched_files_load_through_each_tasks_loader(fetched, tmp_path):
    """Every task builds from the fetched files, and lm-eval reads every row of each built config."""
    from backend.tasks import gpqa, jeebench, livecodebench, piqa

    data = fetched["data"]
    configs = {}
    for name in SOURCES:
        config = get_task(name).build(data, tmp_path / "work")
        if config:
            configs[name] = config
    docs = _lm_eval_docs(configs)
    expected_rows = {name: len(next(iter(UPSTREAM_ROWS[name].values()))) for name in configs}
    expected_rows["livecodebench"] = 5  # one problem in each of the five release files
    assert {name: len(rows) for name, rows in docs.items()} == expected_rows
    # the conversions, seen through the tasks' own readers
    assert [r["label"] for r in piqa.load_rows(data)] == [0, 1, 0]
    assert docs["arc-challenge"][2]["answerKey"] == "A" and docs["boolq"][0]["label"] == 1
    assert docs["truthfulqa-mc2"][0]["mc2_targets"] == {
        "choices": ["Nothing in particular happens.", "You digest it.", "You must spend winter underground."],
        "labels": [1, 1, 0]}
    assert docs["popqa"][1]["possible_answers"] == json.dumps(["France", "French Republic"])
    assert docs["aime24"][0]["expected_answer"] == 24 and docs["gsm8k"][0]["answer"].endswith("#### 5")
    assert (data / "gsm8k/train.jsonl").is_file()  # the few-shot and calibration pool comes along
    problems = {row["question_id"]: row for row in livecodebench.load_rows(data / "livecodebench/test.jsonl")}
    assert json.loads(problems["q1"]["tests"])[1] == {"input": "5 7\n", "output": "12\n", "testtype": "stdin"}
    assert problems["q2"]["func_name"] == "add"
    gpqa_rows = gpqa.prepare_rows(read_jsonl(data / "gpqa/gpqa_diamond.jsonl"))
    assert [r["correct_answer"] for r in gpqa_rows] == ["Photon", "7"] and gpqa_rows[0]["answer"] in "ABCD"
    assert [r["gold"] for r in jeebench.load_rows(data / "jeebench/dataset.json")] == ["B", "4"]
    text = (data / "wikitext2/test.txt").read_text()
    assert text == " \n = Robert <unk> = \n \n Robert <unk> is an English film , television and theatre actor . \n \n"
    assert (data / "ifeval/input_data.jsonl").read_bytes().decode().count("\n") == 2


def test_tasks_json_shows_each_source_and_presence(fetched):
    proc = run_jobs("tasks", "--json", env={"PRUNEBOARD_DATA_DIR": str(fetched["data"])})
    assert proc.returncode == 0, proc.stderr
    tasks = {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}
    for name, source in SOURCES.items():
        hub = tasks[name]["hub_source"]
        assert tasks[name]["data_present"] is True
        assert hub["repo_id"] == source.repo_id and hub["revision"] == source.revision
        assert hub["verified"] is source.verified and hub["gated"] is (source.gated is not None)
        assert hub["fetch_command"] == f"python -m jobs data fetch {name}"
    assert tasks["synthetic-mc"]["hub_source"] is None
    assert tasks["aime24"]["hub_source"]["verified"] is False  # public scripts disagree on its file
    assert tasks["gpqa-diamond"]["hub_source"]["accept"] == SOURCES["gpqa-diamond"].gated


# --- integrity and failures: the data dir stays byte-identical -----------------------------------------


@pytest.mark.parametrize("knob,task,path", [
    ("corrupt", "piqa", "plain_text/piqa-validation.parquet"),  # LFS file: sha256
    ("truncate", "piqa", "plain_text/piqa-validation.parquet"),
    ("corrupt", "math500", "test.jsonl"),  # plain git file: blob id
    ("truncate", "math500", "test.jsonl"),
    ("corrupt", "gsm8k", "main/train-00000-of-00001.parquet"),  # the second file of a task: none written
])
def test_a_bad_download_is_caught_by_its_hash_and_changes_nothing(knob, task, path, hub, tmp_path):
    publish(hub, [task])
    getattr(hub, knob).add((SOURCES[task].repo_id, path))
    data = old_data(tmp_path / "data")
    before = tree(data)
    proc = run_jobs("data", "fetch", task, "--force", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert proc.returncode == 1, proc.stderr
    assert "does not match the Hub's stated" in proc.stderr and path in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: not fetched: {task}")
    assert tree(data) == before


def test_a_failed_download_exits_1_and_changes_nothing(hub, tmp_path):
    publish(hub, ["gsm8k"])
    hub.fail.add(("openai/gsm8k", "main/train-00000-of-00001.parquet"))
    data = old_data(tmp_path / "data")
    before = tree(data)
    proc = run_jobs("data", "fetch", "gsm8k", "--force", "--json", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["failed"]["gsm8k"].startswith("gsm8k: downloading openai/gsm8k@")
    assert tree(data) == before


def test_a_repo_missing_on_the_hub_is_a_failed_download(hub, tmp_path):
    data = tmp_path / "data"
    proc = run_jobs("data", "fetch", "popqa", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert proc.returncode == 1 and "akariasai/PopQA" in proc.stderr
    assert tree(data) == {}


def test_a_failed_task_does_not_stop_the_others(hub, tmp_path):
    publish(hub, ["piqa", "math500"])
    hub.corrupt.add(("HuggingFaceH4/MATH-500", "test.jsonl"))
    data = tmp_path / "data"
    proc = run_jobs("data", "fetch", "math500", "piqa", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"piqa: fetched ({data / 'piqa/piqa.manifest.json'})"]
    assert sorted(tree(data)) == ["piqa/dev-labels.lst", "piqa/dev.jsonl", "piqa/piqa.manifest.json"]


def test_unknown_task_exits_2_before_any_request(hub, tmp_path):
    proc = run_jobs("data", "fetch", "piqa", "no-such-task", env={"PRUNEBOARD_DATA_DIR": str(tmp_path / "d")})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"error: unknown task 'no-such-task'; known: {', '.join(t.name for t in list_tasks())}")
    assert hub.requests == []


def test_gated_task_without_token_exits_2_naming_what_to_accept(hub, tmp_path):
    publish(hub, ["gpqa-diamond"])
    proc = run_jobs("data", "fetch", "gpqa-diamond", env={"PRUNEBOARD_DATA_DIR": str(tmp_path / "d")})
    assert proc.returncode == 2 and hub.requests == []
    message = proc.stderr.strip()
    assert message.startswith("error: gpqa-diamond: Idavidrein/gpqa is gated: accept the dataset's access "
                              "conditions on https://huggingface.co/datasets/Idavidrein/gpqa")
    assert "set HF_TOKEN" in message and len(message.splitlines()) == 1


def test_gated_task_with_an_unaccepted_token_exits_2(hub, tmp_path):
    publish(hub, ["gpqa-diamond"])
    data = tmp_path / "d"
    proc = run_jobs("data", "fetch", "gpqa-diamond", env={"PRUNEBOARD_DATA_DIR": str(data), "HF_TOKEN": "hf_other"})
    assert proc.returncode == 2
    assert "the Hub refused Idavidrein/gpqa" in proc.stderr and "accept" in proc.stderr
    assert tree(data) == {}


def test_all_without_token_fetches_the_public_tasks_and_exits_2(hub, tmp_path):
    publish(hub, ["piqa", "gpqa-diamond"])
    data = tmp_path / "d"
    proc = run_jobs("data", "fetch", "--all", "--json", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert {t["task"] for t in report["tasks"]} == {"piqa"}
    assert "HF_TOKEN" in report["failed"]["gpqa-diamond"]
    assert len(report["failed"]) == len(SOURCES) - 1  # the rest are not on this loopback hub


def test_present_data_is_kept_unless_forced(hub, tmp_path):
    from backend.taskdata.fetch import fetch_task

    publish(hub, ["aime25"])
    data = tmp_path / "data"
    first = fetch_task("aime25", data)
    assert first.status == "fetched" and first.manifest["commit"] == SOURCES["aime25"].revision
    downloads = [r for r in hub.requests if "/resolve/" in r[1]]
    again = fetch_task("aime25", data)
    assert again.status == "present" and again.manifest == first.manifest
    assert [r for r in hub.requests if "/resolve/" in r[1]] == downloads  # nothing downloaded
    assert fetch_task("aime25", data, force=True).status == "fetched"
    assert fetch_task("synthetic-mc", data).status == "no-data"


def test_a_hub_that_wants_a_token_gets_hf_token(hub, tmp_path, monkeypatch):
    from backend.taskdata.fetch import DownloadFailed, fetch_task

    publish(hub, ["amc23"])
    hub.require_token = True
    with pytest.raises(DownloadFailed, match="401"):
        fetch_task("amc23", tmp_path / "data")
    assert tree(tmp_path / "data") == {}
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    outcome = fetch_task("amc23", tmp_path / "data")
    assert outcome.status == "fetched" and outcome.manifest["commit"] == SOURCES["amc23"].revision
    assert [json.loads(line)["answer"] for line in (tmp_path / "data/aime/amc23.jsonl").read_text().splitlines()] \
        == [2.0, 36.0]


def test_pickled_tests_that_name_a_callable_are_refused(tmp_path):
    """LiveCodeBench's private tests are pickles: only plain values are unpickled, never a global."""
    import base64
    import pickle
    import zlib

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]",
           "private_test_cases": base64.b64encode(zlib.compress(pickle.dumps(Payload()))).decode()}
    source = tmp_path / "test.jsonl"
    source.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        livecodebench_tests(["test.jsonl"], "out.jsonl").write([source], [tmp_path / "out.jsonl"])
    assert not (tmp_path / "out.jsonl").exists()


# --- on demand in the worker, and refusal at submit ------------------------------------------------


def _config(task: str = "piqa") -> dict:
    return {"model": "builtin:tiny-llama", "pruning": {"method": "dense", "sparsity": 0},
            "tasks": [{"name": task, "limit": 2}]}


def test_worker_fetches_missing_data_before_the_model_loads(hub, tmp_path, monkeypatch):
    from backend import pipeline
    from backend.config import validate_config

    publish(hub, ["piqa"])
    data = tmp_path / "data"
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")
    present_at_load = []

    def load_model(*args, **kwargs):
        present_at_load.append(sorted(tree(data)))
        raise RuntimeError("stop after the preflight")

    monkeypatch.setattr("backend.models.loading.load_model", load_model)
    with pytest.raises(RuntimeError, match="stop after the preflight"):
        pipeline.run(validate_config(_config()), lambda event: None)
    assert present_at_load == [["piqa/dev-labels.lst", "piqa/dev.jsonl", "piqa/piqa.manifest.json"]]


def test_worker_without_hub_fails_with_the_one_line(tmp_path, monkeypatch):
    from backend import pipeline
    from backend.config import validate_config
    from backend.tasks.base import TaskDataMissing

    data = tmp_path / "empty"
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    monkeypatch.delenv("PRUNEBOARD_USE_HUB", raising=False)
    monkeypatch.setattr("backend.models.loading.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(TaskDataMissing) as info:
        pipeline.run(validate_config(_config("boolq")), lambda event: None)
    assert str(info.value) == f'task \'boolq\' has no data under PRUNEBOARD_DATA_DIR={data}: run ' \
                              '"python -m jobs data fetch boolq"'


def test_a_job_on_missing_data_fails_before_the_model_loads_naming_the_command(tmp_path):
    data = tmp_path / "empty"
    config = tmp_path / "job.json"
    config.write_text(json.dumps(_config()))
    remote = {"PRUNEBOARD_DATA_DIR": str(data), "PRUNEBOARD_LOCAL_WORKERS": "0"}  # submit leaves it to the worker
    submitted = run_jobs("submit", str(config), "--json", env=remote)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    worker = run_jobs("worker", "--drain", env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert worker.returncode == 0, worker.stderr[-2000:]
    status = run_jobs("status", str(job_id), "--json")
    job = json.loads(status.stdout)["jobs"][0]
    assert job["state"] == "failed" and job["error_type"] == "TaskDataMissing"
    assert job["error_message"] == missing_data_message("piqa", data)
    assert job["error_message"] == f'task \'piqa\' has no data under PRUNEBOARD_DATA_DIR={data}: run ' \
                                   '"python -m jobs data fetch piqa"'
    assert job["stage"] == "claimed"  # failed in the preflight: the "load" stage never started


def test_cli_submit_on_a_local_deployment_refuses_missing_data(tmp_path):
    data = tmp_path / "empty"
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(_config("hellaswag")))
    refused = run_jobs("submit", str(config), env={"PRUNEBOARD_DATA_DIR": str(data)})
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == f"error: {missing_data_message('hellaswag', data)}"
    assert json.loads(run_jobs("status", "--json").stdout)["jobs"] == []
    # where this host's workers would fetch it, or the workers are elsewhere, it is queued
    for env in ({"PRUNEBOARD_USE_HUB": "1"}, {"SPACE_ID": "me/board"}, {"PRUNEBOARD_LOCAL_WORKERS": "0"}):
        accepted = run_jobs("submit", str(config), "--force", env={"PRUNEBOARD_DATA_DIR": str(data), **env})
        assert accepted.returncode == 0, (env, accepted.stderr)


def test_ui_and_presets_refuse_missing_data_with_the_same_line(tmp_path, monkeypatch):
    from backend.config import ConfigError
    from jobs.presets import checked_configs, preset_configs
    from ui import forms, services

    data = tmp_path / "empty"
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    line = missing_data_message("winogrande", data)
    assert services.submit_text(json.dumps(_config("winogrande")), force=False).startswith("**Not submitted.**")
    assert forms.check(_config("winogrande")).error == line
    assert preset_configs("study-smoke")  # validating a preset checks no availability (dry runs work offline)
    with pytest.raises(ConfigError) as info:
        checked_configs("study-smoke")
    assert f'python -m jobs data fetch math500 piqa"' in str(info.value)


# --- the loopback Hub's upload side, for features that publish -------------------------------------


def test_loopback_hub_takes_uploads_and_serves_them_back(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=hub.url, token=TEST_TOKEN)
    url = api.create_repo("results", repo_type="dataset")
    assert url == f"{hub.url}/datasets/tester/results"
    first = api.upload_file(path_or_fileobj=b'{"run": 1}\n', path_in_repo="runs/1.jsonl",
                            repo_id="tester/results", repo_type="dataset", commit_message="first run")
    api.upload_file(path_or_fileobj=b'{"run": 2}\n', path_in_repo="runs/2.jsonl",
                    repo_id="tester/results", repo_type="dataset")
    assert hub.files_at("tester/results")["runs/2.jsonl"] == b'{"run": 2}\n'
    assert "runs/2.jsonl" not in hub.files_at("tester/results", first.oid)
    assert sorted(api.list_repo_files("tester/results", repo_type="dataset")) == [
        ".gitattributes", "runs/1.jsonl", "runs/2.jsonl"]
    path = hf_hub_download("tester/results", "runs/1.jsonl", repo_type="dataset", endpoint=hub.url,
                           token=TEST_TOKEN, local_dir=tmp_path / "dl", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b'{"run": 1}\n'
    with pytest.raises(Exception, match="409|already created"):
        api.create_repo("results", repo_type="dataset")
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(Exception, match="401"):
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="tester/results", repo_type="dataset")
