"""The CPU work estimate (`jobs.work_estimate`): checked against three jobs measured for the results
snapshot (results/parts), and the CPU presets of the seed studies fit in three hours of a 2-core CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.config import validate_config
from jobs.bundle import read_bundle
from jobs.cli import main
from jobs.presets import preset_configs
from jobs.work_estimate import job_seconds, preset_seconds, stage_seconds

PARTS = Path(__file__).resolve().parent.parent / "results" / "parts"
MEASURED = ("instruct-wanda-0.25", "instruct-shortgpt-0.25", "think-sparsegpt-0.25")
"""Three measured runs: unstructured and depth pruning, instruct and think (long decoding)."""


@pytest.mark.parametrize("name", MEASURED)
def test_the_estimate_matches_a_measured_job(name):
    record = read_bundle(PARTS / f"{name}.jsonl.gz").runs[0].record
    estimate = stage_seconds(validate_config(record["config"]))
    measured = record["stage_seconds"]
    # prune and evaluate carry the work (the think run's prune came from the prune cache: left out)
    stages = ("evaluate",) if measured["prune"] < 1 else ("prune", "evaluate")
    estimated, took = sum(estimate[s] for s in stages), sum(measured[s] for s in stages)
    assert 0.6 * took <= estimated <= 1.5 * took, (name, estimated, took)


@pytest.mark.parametrize("preset", ["seed000-cpu", "seed001-cpu"])
def test_the_cpu_presets_fit_in_three_hours(preset):
    configs = preset_configs(preset, {})
    seconds = preset_seconds(configs)
    assert seconds is not None and seconds < 3 * 3600
    assert seconds == pytest.approx(sum(job_seconds(c) for c in configs))


def test_no_figures_no_estimate():
    tiny = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc", "limit": 4}]})
    unlimited = validate_config({"model": "builtin:smollm2-135m-instruct", "tasks": [{"name": "piqa"}]})
    assert job_seconds(tiny) is None and job_seconds(unlimited) is None
    assert preset_seconds(preset_configs("seed000-cpu", {}) + [tiny]) is None


def test_a_longer_budget_costs_more():
    def config(tokens, limit=50):
        return validate_config({"model": "builtin:smollm2-135m-instruct", "evaluation": {"batch_size": 50},
                                "tasks": [{"name": "gsm8k", "limit": limit, "generation": {"max_new_tokens": tokens}}]})

    assert job_seconds(config(256)) < job_seconds(config(512)) < job_seconds(config(512, limit=100))


def test_the_dry_run_reports_the_estimate(capsys):
    assert main(["submit-preset", "seed000-cpu", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimated_cpu_seconds"] == round(preset_seconds(preset_configs("seed000-cpu", {})))
    assert main(["submit-preset", "seed000-grid", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimated_cpu_seconds"] is None  # hub models: no CPU figures
