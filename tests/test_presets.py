"""Study presets: expansion (counts, sizes), validation, evaluability of every finding, the
`submit-preset` CLI (dry run, submit, dedup on resubmit) and bad input with nothing queued."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.config import ConfigError, JobConfig, canonical_json, config_hash
from backend.pruning import get_method
from backend.tasks import get_task
from db.findings import FINDINGS, MIN_PAIRED, findings
from db.schema import Job, Sample, Score
from db.session import dispose_engines, read_session, write_session
from jobs import presets
from jobs.facts import run_facts, task_facts
from jobs.cli import main
from jobs.presets import (
    GPU_INSTRUCT_MODEL,
    GPU_THINK_MODEL,
    SMOKE_MAX_JOBS,
    SMOLLM2,
    UnknownPreset,
    list_presets,
    model_unavailable_reason,
    preset_configs,
    submit_preset,
)
from db.states import JobState

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("depth", "width", "dynamic", "unstructured")


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def job_count() -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def family(config: JobConfig) -> str:
    return get_method(config.pruning.method).family


def generate_tasks(config: JobConfig):
    return [t for t in config.tasks if get_task(t.name).output_type == "generate"]


# --- expansion -------------------------------------------------------------------------------------


def test_list_presets_names_descriptions_and_counts():
    listed = {p["name"]: p for p in list_presets()}
    assert set(listed) == {"study-cpu", "study-gpu", "study-smoke", "seed000-grid", "seed001-tts", "seed000-cpu",
                           "seed001-cpu"}
    assert listed["study-cpu"]["n_jobs"] == listed["study-gpu"]["n_jobs"] == 2 * (1 + 4 * 3 * 3)
    assert listed["study-smoke"]["n_jobs"] <= SMOKE_MAX_JOBS
    assert all(p["description"] for p in listed.values())


def test_study_cpu_is_the_full_grid_on_smollm2_in_both_paradigms():
    configs = preset_configs("study-cpu")
    assert len(configs) == 74 and all(isinstance(c, JobConfig) for c in configs)
    assert {c.model for c in configs} == {SMOLLM2}
    assert Counter(c.paradigm for c in configs) == {"instruct": 37, "think": 37}
    grid = Counter((c.paradigm, family(c), c.pruning.sparsity, c.calibration and c.calibration.source) for c in configs)
    for paradigm in ("instruct", "think"):
        assert grid[(paradigm, "dense", 0.0, None)] == 1  # dense names no calibration
        for fam in FAMILIES:
            for sparsity in (0.2, 0.4, 0.6):
                for source in ("text", "task-aligned", "self-generated"):
                    assert grid[(paradigm, fam, sparsity, source)] == 1, (paradigm, fam, sparsity, source)
    wanda = [c for c in configs if c.pruning.method == "wanda"]
    assert wanda and all(c.pruning.params.get("allocation") == "owl" for c in wanda)
    assert len({config_hash(c) for c in configs}) == 74
    think = [c for c in configs if c.paradigm == "think"]
    assert all(t.generation.thinking_budget for c in think for t in generate_tasks(c))


def test_study_tasks_cover_every_finding():
    for config in preset_configs("study-cpu"):
        categories = {get_task(t.name).category for t in config.tasks}
        assert {"classification", "reasoning"} <= categories
        scaling = [t for t in config.tasks if t.generation.num_samples > 1]
        assert scaling and all(get_task(t.name).test_time_scaling and t.generation.temperature > 0 for t in scaling)


def test_study_gpu_names_a_reasoning_model_by_hub_id(hub):
    configs = preset_configs("study-gpu")
    assert len(configs) == 74
    models = {c.paradigm: c.model for c in configs}
    assert models == {"instruct": GPU_INSTRUCT_MODEL, "think": GPU_THINK_MODEL}
    budgets = [t.generation.max_new_tokens for c in configs for t in generate_tasks(c)]
    assert min(budgets) >= 1024  # GPU-sized


def test_study_smoke_is_ci_sized():
    configs = preset_configs("study-smoke")
    assert 1 <= len(configs) <= SMOKE_MAX_JOBS
    for config in configs:
        assert config.model == SMOLLM2
        assert all(t.limit is not None and t.limit <= 10 for t in config.tasks)
        assert all(t.generation.max_new_tokens is not None and t.generation.max_new_tokens <= 128
                   for t in generate_tasks(config))
        if family(config) != "dense":  # every pruned run names its (CI-sized) calibration
            assert config.calibration.num_samples * config.calibration.seq_len <= 8 * 128
    assert {family(c) for c in configs} == {"dense", *FAMILIES}
    assert {c.calibration.source for c in configs if family(c) != "dense"} == {"text", "task-aligned"}


def seed_results(configs: list[JobConfig]) -> None:
    """Store each config as a succeeded job with a sample per evaluated doc (all correct)."""
    with write_session() as session:
        for config in configs:
            job = Job(config_hash=config_hash(config), config_json=canonical_json(config), model=config.model,
                      paradigm=config.paradigm, method=config.pruning.method, sparsity=config.pruning.sparsity,
                      state=JobState.SUCCEEDED, attempts=1, requeues=0, progress=1.0, cancel_requested=False,
                      **run_facts(json.loads(canonical_json(config))))
            session.add(job)
            session.flush()
            for task in config.tasks:
                k = task.generation.num_samples
                metrics = {"exact_match": 1.0, "pass@1": 0.5, f"pass@{k}": 1.0, f"maj@{k}": 1.0} if k > 1 else {}
                session.add_all(Sample(job_id=job.id, task=task.name, doc_id=i, prompt="q", output="a", gold="g",
                                       correct=True, prompt_tokens=1, output_tokens=1, metrics_json=metrics)
                                for i in range(task.limit))
                session.add(Score(job_id=job.id, task=task.name, metric="exact_match", value=1.0, stderr=None,
                                  higher_is_better=True, is_primary=True, comparability_key="k",
                                  **task_facts(task.name)))


NEEDS_TWO_MODELS = "allocation-helps-weaker-model"
"""Out of every preset's reach: it needs two models of one paradigm and uniform-allocation runs, the
presets prune one model per paradigm with OWL allocation."""
INSTRUCT_ONLY = "pruning-effect-depends-on-paradigm"
"""Out of study-smoke's reach: it runs the instruct paradigm only."""


@pytest.mark.parametrize("name, least, out_of_reach", [("study-smoke", 1, {NEEDS_TWO_MODELS, INSTRUCT_ONLY}),
                                                        ("study-cpu", MIN_PAIRED, {NEEDS_TWO_MODELS})])
def test_every_finding_has_paired_samples_in_the_preset(name, least, out_of_reach):
    """The preset's runs pair up for every finding within its reach (the CPU study with enough
    documents to conclude); the others stay listed, with no documents."""
    seed_results(preset_configs(name))
    with read_session() as session:
        verdicts = findings(session)
    assert [v.key for v in verdicts] == [f.key for f in FINDINGS]
    for v in verdicts:
        if v.key in out_of_reach:
            assert v.numbers["n"] == 0 and v.verdict == "inconclusive", v.key
        else:
            assert v.numbers["n"] >= least, v.key


# --- submitting ------------------------------------------------------------------------------------


def test_submit_preset_queues_every_config_and_dedups_on_resubmit():
    first = submit_preset("study-smoke", submitter="test")
    assert [existing for _, existing in first] == [False] * len(first)
    assert job_count() == len(first) <= SMOKE_MAX_JOBS
    again = submit_preset("study-smoke")
    assert [job.id for job, _ in again] == [job.id for job, _ in first]
    assert all(existing for _, existing in again) and job_count() == len(first)
    with read_session() as session:
        assert {j.submitter for j in session.scalars(select(Job))} == {"test"}


def test_cli_dry_run_lists_configs_without_queueing(capsys):
    code, out, _ = run_cli(capsys, "submit-preset", "study-smoke", "--dry-run", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["preset"] == "study-smoke" and len(data["configs"]) == len(preset_configs("study-smoke"))
    assert {c["model"] for c in data["configs"]} == {SMOLLM2}
    code, out, _ = run_cli(capsys, "submit-preset", "study-smoke", "--dry-run")
    assert code == 0 and len(out.strip().splitlines()) == len(data["configs"])
    assert "skipgpt-style" in out and "task-aligned" in out
    assert job_count() == 0


def test_cli_submits_then_reports_existing(capsys):
    code, out, _ = run_cli(capsys, "submit-preset", "study-smoke", "--json")
    assert code == 0
    jobs = json.loads(out)["jobs"]
    assert [j["existing"] for j in jobs] == [False] * len(jobs) and {j["state"] for j in jobs} == {"queued"}
    code, out, _ = run_cli(capsys, "submit-preset", "study-smoke")
    assert code == 0 and [int(x) for x in out.split()] == [j["id"] for j in jobs]
    assert job_count() == len(jobs)


def test_cli_submit_preset_does_not_import_torch():
    code = ("import sys\nfrom jobs.cli import main\n"
            "print('exit', main(['submit-preset', 'study-smoke', '--dry-run']), file=sys.stderr)\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "exit 0" in proc.stderr, proc.stderr[-2000:]
    assert "TORCH False" in proc.stdout


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_preset_suggests_the_closest_name(capsys):
    with pytest.raises(KeyError) as info:
        preset_configs("study-smok")
    assert isinstance(info.value, UnknownPreset)
    assert "did you mean 'study-smoke'?" in str(info.value)
    code, out, err = run_cli(capsys, "submit-preset", "study-smok")
    assert code == 2 and out == ""
    assert err.startswith("error: unknown preset 'study-smok' (did you mean 'study-smoke'?)")
    assert "seed001-tts, study-cpu, study-gpu, study-smoke" in err
    assert job_count() == 0


def test_unavailable_hub_model_is_refused_before_anything_is_queued(capsys, monkeypatch):
    monkeypatch.delenv("PRUNEBOARD_USE_HUB", raising=False)
    assert len(preset_configs("study-gpu")) == 74  # validating checks no availability
    with pytest.raises(ConfigError, match=f"model '{GPU_INSTRUCT_MODEL}' is not available"):
        submit_preset("study-gpu")
    code, out, err = run_cli(capsys, "submit-preset", "study-gpu")
    assert code == 2 and out == "" and "PRUNEBOARD_USE_HUB=1" in err
    assert job_count() == 0


def test_hub_reads_off_by_an_offline_variable(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_unavailable_reason(GPU_THINK_MODEL)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert model_unavailable_reason(GPU_THINK_MODEL) is None


def test_builtin_and_local_models_are_always_available(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNEBOARD_USE_HUB", raising=False)
    assert model_unavailable_reason(SMOLLM2) is None
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert model_unavailable_reason(str(local)) is None
    assert model_unavailable_reason("someone/missing-model")


def test_a_preset_failing_late_queues_nothing(monkeypatch, capsys):
    """The first configs are fine, a later one names an unavailable model: no job at all."""
    monkeypatch.delenv("PRUNEBOARD_USE_HUB", raising=False)
    good = presets.PRESETS["study-smoke"]
    mixed = presets.Preset("mixed", "test", lambda: [*good.documents(), {**good.documents()[0], "model": "someone/x"}])
    invalid = presets.Preset("invalid", "test", lambda: [*good.documents(),
                                                         {**good.documents()[0], "tasks": ["no-such-task"]}])
    monkeypatch.setitem(presets.PRESETS, "mixed", mixed)
    monkeypatch.setitem(presets.PRESETS, "invalid", invalid)
    with pytest.raises(ConfigError, match="'someone/x' is not available"):
        submit_preset("mixed")
    code, _, err = run_cli(capsys, "submit-preset", "invalid")
    assert code == 2 and f"preset 'invalid', job {len(good.documents()) + 1}" in err and "no-such-task" in err
    assert job_count() == 0


# --- the seed studies' experiments -------------------------------------------------------------------


def _cli_json(*args: str, env: dict | None = None) -> tuple[int, dict, str]:
    import os

    proc = subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def test_seed000_grid_dry_run_covers_nine_methods_three_sparsities_17_tasks_two_paradigms(tmp_path):
    from jobs.seed_presets import SEED000_METHODS, STUDY_TASKS, THINK_MODEL_PLACEHOLDER, TULU_SFT

    # offline, hub ids and no task data: the dry run still prints every config and exits 0
    code, data, err = _cli_json("submit-preset", "seed000-grid", "--dry-run", "--json",
                                env={"PRUNEBOARD_DATA_DIR": str(tmp_path / "empty"), "PRUNEBOARD_USE_HUB": "0"})
    assert code == 0, err
    covered = {(c.get("paradigm", "instruct"), c["pruning"]["method"], c["pruning"]["sparsity"], t["name"])
               for c in data["configs"] if "pruning" in c for t in c["tasks"]}
    expected = {(p, m, s, t) for p in ("instruct", "think") for m in SEED000_METHODS for s in (0.2, 0.4, 0.6)
                for t in STUDY_TASKS}
    assert len(expected) == 9 * 3 * 17 * 2 and expected <= covered
    assert {c["model"] for c in data["configs"] if c.get("paradigm", "instruct") == "instruct"} == {TULU_SFT}
    assert any(THINK_MODEL_PLACEHOLDER in line for line in data["missing"])
    assert any("python -m jobs data fetch" in line for line in data["missing"])
    aime = [t for c in data["configs"] for t in c["tasks"] if t["name"] == "aime24"]
    assert all(t["generation"]["num_samples"] == 3 and t["generation"]["temperature"] == 0.7 for t in aime)
    sources = {(c.get("calibration") or {}).get("source") for c in data["configs"] if "pruning" in c}
    assert sources == {"text", "self-generated"} and any("recovery" in c for c in data["configs"])

    code, data, _ = _cli_json("submit-preset", "seed000-grid", "--model", "think=me/llama-ot", "--dry-run", "--json")
    assert code == 0 and {c["model"] for c in data["configs"] if c.get("paradigm") == "think"} == {"me/llama-ot"}
    assert not any("placeholder" in line for line in data["missing"])


def test_seed001_tts_covers_two_methods_three_allocations_and_shortgpt_on_four_tasks():
    from jobs.seed_presets import SEED001_TASKS

    configs = preset_configs("seed001-tts")
    covered = {(c.pruning.method, c.pruning.params.get("allocation", "uniform"), t.name)
               for c in configs if c.pruning.method != "dense" for t in c.tasks}
    expected = {(m, a, t) for m in ("magnitude", "wanda") for a in ("uniform", "owl", "reconstruction-sensitivity")
                for t in SEED001_TASKS} | {("shortgpt", "uniform", t) for t in SEED001_TASKS}
    assert expected == covered
    parallel = [t for c in configs for t in c.tasks if t.generation.num_samples == 8]
    budgets = {t.generation.thinking_budget for c in configs for t in c.tasks}
    assert parallel and {1024, 4096, 16384} <= budgets
    assert {c.paradigm for c in configs} == {"think"}
    by_sparsity = Counter((c.pruning.method, c.pruning.sparsity) for c in configs if c.pruning.method == "shortgpt")
    assert set(s for _, s in by_sparsity) == {c.pruning.sparsity for c in configs if c.pruning.method == "wanda"}


def test_seed_cpu_presets_run_on_smollm2_with_local_data(shared_data):
    for name in ("seed000-cpu", "seed001-cpu"):
        configs = preset_configs(name)
        assert {c.model for c in configs} == {SMOLLM2} and {c.paradigm for c in configs} == {"instruct"}
        assert len({c.pruning.sparsity for c in configs if c.pruning.method != "dense"}) == 1
        assert all(len(c.tasks) == 4 for c in configs)
        assert presets.missing(configs) == []  # nothing absent with the development data
    assert {c.pruning.method for c in preset_configs("seed000-cpu")} == {"dense", *__import__(
        "jobs.seed_presets", fromlist=["x"]).SEED000_METHODS}


def test_a_submit_says_what_is_missing_and_queues_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path / "no-data"))
    with pytest.raises(ConfigError, match='python -m jobs data fetch gsm8k math500 piqa winogrande'):
        submit_preset("seed000-cpu")
    code, out, err = run_cli(capsys, "submit-preset", "seed000-cpu")
    assert code == 2 and out == "" and "task data missing" in err
    code, out, err = run_cli(capsys, "submit-preset", "study-smoke", "--model", "instruct=x/y")
    assert code == 2 and "takes no models" in err
    assert job_count() == 0
