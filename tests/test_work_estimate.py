"""The CPU seconds estimate (`backend.work.cpu_seconds`): checked against three jobs measured for the
results snapshot (results/parts), and the CPU presets of the seed studies fit in three hours of a
2-core CPU (what `submit-preset --dry-run` reports)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.config import validate_config
from backend.work import cpu_seconds
from jobs.bundle import read_bundle
from jobs.cli import main
from jobs.presets import preset_configs

PARTS = Path(__file__).resolve().parent.parent / "results" / "parts"
MEASURED = ("instruct-wanda-0.25", "instruct-shortgpt-0.25", "think-sparsegpt-0.25")
"""Three measured runs: unstructured and depth pruning, instruct and think (long decoding)."""


def total(config) -> float | None:
    stages = cpu_seconds(config)
    return None if stages is None else sum(stages.values())


@pytest.mark.parametrize("name", MEASURED)
def test_the_estimate_matches_a_measured_job(name):
    record = read_bundle(PARTS / f"{name}.jsonl.gz").runs[0].record
    estimate = cpu_seconds(validate_config(record["config"]))
    measured = record["stage_seconds"]
    # prune and evaluate carry the work (a think run's pruned model may come from the prune cache)
    stages = ("evaluate",) if measured["prune"] < 1 else ("prune", "evaluate")
    estimated, took = sum(estimate[s] for s in stages), sum(measured[s] for s in stages)
    assert 0.6 * took <= estimated <= 1.5 * took, (name, estimated, took)


@pytest.mark.parametrize("preset", ["seed000-cpu", "seed001-cpu"])
def test_the_cpu_presets_fit_in_three_hours(preset, capsys):
    seconds = sum(total(c) for c in preset_configs(preset, {}))
    assert seconds < 3 * 3600
    assert main(["submit-preset", preset, "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimated_cpu_seconds"] == round(seconds)


def test_no_figures_no_estimate(capsys):
    tiny = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc", "limit": 4}]})
    perplexity = validate_config({"model": "builtin:smollm2-135m-instruct",
                                  "tasks": [{"name": "wikitext2-ppl", "limit": 4}]})
    assert cpu_seconds(tiny) is None and cpu_seconds(perplexity) is None
    assert main(["submit-preset", "seed000-grid", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimated_cpu_seconds"] is None  # hub models: no CPU figures


def test_a_longer_budget_costs_more():
    def config(tokens, limit=50):
        return validate_config({"model": "builtin:smollm2-135m-instruct", "evaluation": {"batch_size": 50},
                                "tasks": [{"name": "gsm8k", "limit": limit, "generation": {"max_new_tokens": tokens}}]})

    assert total(config(256)) < total(config(512)) < total(config(512, limit=100))
