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
from db.schema import Job, Sample
from db.session import dispose_engines, read_session, write_session
from jobs import presets
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
from jobs.states import JobState

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
    assert set(listed) == {"study-cpu", "study-gpu", "study-smoke"}
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
                      state=JobState.SUCCEEDED, attempts=1, requeues=0, progress=1.0, cancel_requested=False)
            session.add(job)
            session.flush()
            for task in config.tasks:
                k = task.generation.num_samples
                metrics = {"exact_match": 1.0, "pass@1": 0.5, f"pass@{k}": 1.0, f"maj@{k}": 1.0} if k > 1 else {}
                session.add_all(Sample(job_id=job.id, task=task.name, doc_id=i, prompt="q", output="a", gold="g",
                                       correct=True, prompt_tokens=1, output_tokens=1, metrics_json=metrics)
                                for i in range(task.limit))


@pytest.mark.parametrize("name, least", [("study-smoke", 1), ("study-cpu", MIN_PAIRED)])
def test_every_finding_has_paired_samples_in_the_preset(name, least):
    """The preset's runs pair up for every finding (the CPU study with enough samples to conclude)."""
    seed_results(preset_configs(name))
    with read_session() as session:
        verdicts = findings(session)
    assert [v.key for v in verdicts] == [f.key for f in FINDINGS]
    for v in verdicts:
        assert v.numbers["n_paired"] >= least, v.key


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
    assert "study-cpu, study-gpu, study-smoke" in err
    assert job_count() == 0


def test_unavailable_hub_model_is_refused_before_anything_is_queued(capsys, monkeypatch):
    monkeypatch.delenv("PRUNEBOARD_USE_HUB", raising=False)
    with pytest.raises(ConfigError, match=f"names model '{GPU_INSTRUCT_MODEL}', which is not available"):
        preset_configs("study-gpu")
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
    with pytest.raises(ConfigError, match="'someone/x', which is not available"):
        submit_preset("mixed")
    code, _, err = run_cli(capsys, "submit-preset", "invalid")
    assert code == 2 and f"preset 'invalid', job {len(good.documents()) + 1}" in err and "no-such-task" in err
    assert job_count() == 0
