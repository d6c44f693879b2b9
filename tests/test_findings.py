"""Findings verdicts from seeded result rows: each finding supported, contradicted and inconclusive
(interval crossing zero, too few paired samples), with the numbers checked against hand-computed
values. Rows are written directly (jobs + samples with correctness), no model runs."""
from __future__ import annotations

import hashlib
import json
import math

import pytest

from db.findings import (
    FINDINGS,
    MIN_PAIRED,
    bootstrap_mean_difference,
    findings,
    verdict_for,
)
from db.schema import Job, Sample
from db.session import dispose_engines, init_db, read_session, write_session
from jobs.states import JobState

MODEL = "builtin:smollm2-135m-instruct"
TEXT = {"source": "text", "path": "wikitext2/valid.txt"}
ALIGNED = {"source": "task-aligned", "task": "gsm8k"}
SELF_GENERATED = {"source": "self-generated", "task": "gsm8k"}
TTS_TASK = {"name": "math500", "limit": 100, "generation": {"num_samples": 4, "temperature": 0.6}}


@pytest.fixture(autouse=True)
def _database():
    init_db()
    yield
    dispose_engines()


def seed_run(method: str, samples: dict[str, list], sparsity: float = 0.2, calibration: dict | None = None,
             paradigm: str = "instruct", state: JobState = JobState.SUCCEEDED, tasks: list | None = None,
             seed: int = 0) -> int:
    """A job whose samples are `samples[task][doc_id]`: a bool (correct) or a metrics dict (TTS)."""
    config = {"model": MODEL, "paradigm": paradigm, "seed": seed,
              "tasks": tasks or [{"name": name, "limit": 100} for name in sorted(samples)]}
    if method != "dense":
        config["pruning"] = {"method": method, "sparsity": sparsity}
        config["calibration"] = calibration or TEXT
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    with write_session() as session:
        job = Job(config_hash=hashlib.sha256(text.encode()).hexdigest(), config_json=text, model=MODEL,
                  paradigm=paradigm, method=method, sparsity=sparsity if method != "dense" else 0.0, state=state,
                  attempts=1, requeues=0, progress=1.0, cancel_requested=False)
        session.add(job)
        session.flush()
        for task, values in samples.items():
            for doc_id, value in enumerate(values):
                metrics = value if isinstance(value, dict) else {}
                correct = bool(metrics.get("exact_match", 0)) if metrics else value
                session.add(Sample(job_id=job.id, task=task, doc_id=doc_id, prompt="q", output="a", gold="g",
                                   correct=correct, prompt_tokens=1, output_tokens=1, metrics_json=metrics))
        return job.id


def verdicts(**filters) -> dict:
    with read_session() as session:
        return {v.key: v for v in findings(session, **filters)}


def ones(n: int) -> list[bool]:
    return [True] * n


def zeros(n: int) -> list[bool]:
    return [False] * n


def test_no_results_every_finding_is_inconclusive_with_its_rule():
    result = verdicts()
    assert list(result) == [f.key for f in FINDINGS]
    for v in result.values():
        assert v.verdict == "inconclusive"
        assert v.numbers["n_paired"] == 0 and v.numbers["diff"] is None and v.numbers["job_ids"] == []
        assert "bootstrap" in v.rule and str(MIN_PAIRED) in v.rule
        assert "no paired samples" in v.reason


# --- depth vs width --------------------------------------------------------------------------------


def test_depth_beats_width_on_classification_supported_with_exact_numbers():
    depth = seed_run("shortgpt", {"piqa": ones(40)})
    width = seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "supported"
    assert v.numbers["diff"] == 1.0 and v.numbers["ci_low"] == 1.0 and v.numbers["ci_high"] == 1.0
    assert v.numbers["n_paired"] == 40
    assert v.numbers["runs"] == {"depth": [depth], "width": [width]}
    assert v.numbers["job_ids"] == sorted([depth, width])


def test_depth_vs_width_hand_computed_mixed_differences():
    # docs 0-9 both right, 10-29 only depth right, 30-39 both wrong: diff = 20/40 = 0.5,
    # sd of the differences 0.5, standard error 0.5 / sqrt(40) = 0.079: CI about 0.5 +- 0.155
    depth = ones(30) + zeros(10)
    width = ones(10) + zeros(30)
    seed_run("shortgpt", {"piqa": depth})
    seed_run("flap", {"piqa": width})
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["diff"] == pytest.approx(0.5)
    assert v.numbers["n_paired"] == 40
    assert v.numbers["ci_low"] == pytest.approx(0.5 - 1.96 * 0.5 / math.sqrt(40), abs=0.04)
    assert v.numbers["ci_high"] == pytest.approx(0.5 + 1.96 * 0.5 / math.sqrt(40), abs=0.04)
    assert v.verdict == "supported"


def test_depth_vs_width_contradicted_when_width_wins_on_classification():
    seed_run("shortgpt", {"piqa": zeros(35)})
    seed_run("flap", {"piqa": ones(35)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "contradicted"
    assert (v.numbers["diff"], v.numbers["ci_low"], v.numbers["ci_high"]) == (-1.0, -1.0, -1.0)


def test_interval_crossing_zero_is_inconclusive():
    # alternating +1 / -1 differences: diff 0, sd 1, CI about +-1.96 / sqrt(100) = +-0.196
    seed_run("shortgpt", {"winogrande": [i % 2 == 0 for i in range(100)]})
    seed_run("flap", {"winogrande": [i % 2 == 1 for i in range(100)]})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "inconclusive" and "contains 0" in v.reason
    assert v.numbers["diff"] == 0.0 and v.numbers["n_paired"] == 100
    assert v.numbers["ci_low"] == pytest.approx(-0.196, abs=0.03)
    assert v.numbers["ci_high"] == pytest.approx(0.196, abs=0.03)


def test_fewer_than_30_paired_samples_is_inconclusive_even_with_a_clear_interval():
    seed_run("shortgpt", {"piqa": ones(MIN_PAIRED - 1)})
    seed_run("flap", {"piqa": zeros(MIN_PAIRED - 1)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "inconclusive"
    assert v.numbers["n_paired"] == MIN_PAIRED - 1 and v.numbers["ci_low"] == 1.0
    assert f"only {MIN_PAIRED - 1} paired samples" in v.reason


def test_width_beats_depth_on_reasoning_supported_and_classification_ignored():
    depth = seed_run("shortgpt", {"gsm8k": zeros(30) + ones(10), "piqa": ones(50)})
    width = seed_run("flap", {"gsm8k": ones(40), "piqa": zeros(50)})
    result = verdicts()
    v = result["width-beats-depth-reasoning"]
    assert v.verdict == "supported"
    assert v.numbers["diff"] == pytest.approx(30 / 40) and v.numbers["n_paired"] == 40
    assert v.numbers["runs"] == {"width": [width], "depth": [depth]}
    assert result["depth-beats-width-classification"].numbers["n_paired"] == 50


def test_width_beats_depth_contradicted():
    seed_run("shortgpt", {"math500": ones(40)})
    seed_run("flap", {"math500": zeros(40)})
    assert verdicts()["width-beats-depth-reasoning"].verdict == "contradicted"


def test_only_runs_of_the_same_setting_are_paired():
    seed_run("shortgpt", {"piqa": ones(40)}, sparsity=0.2)
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.4)  # other sparsity
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.2, calibration=ALIGNED)  # other calibration
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.2, paradigm="think")  # other paradigm
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.2, state=JobState.FAILED)
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["n_paired"] == 0 and v.verdict == "inconclusive"


def test_runs_of_one_family_are_averaged_per_sample():
    # two depth methods in the same setting: per doc (1 + 0) / 2 = 0.5 against width's 0
    shortgpt = seed_run("shortgpt", {"piqa": ones(40)})
    sleb = seed_run("sleb", {"piqa": zeros(40)})
    width = seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["n_paired"] == 40
    assert (v.numbers["diff"], v.numbers["ci_low"], v.numbers["ci_high"]) == (0.5, 0.5, 0.5)
    assert v.numbers["runs"] == {"depth": sorted([shortgpt, sleb]), "width": [width]}


def test_latest_succeeded_job_of_a_config_is_used():
    seed_run("shortgpt", {"piqa": zeros(40)})
    later = seed_run("shortgpt", {"piqa": ones(40)})  # same config, newer run
    seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["runs"]["depth"] == [later] and v.numbers["diff"] == 1.0


def test_model_and_paradigm_filters():
    seed_run("shortgpt", {"piqa": ones(40)}, paradigm="think")
    seed_run("flap", {"piqa": zeros(40)}, paradigm="think")
    assert verdicts(paradigm="think")["depth-beats-width-classification"].verdict == "supported"
    assert verdicts(paradigm="instruct")["depth-beats-width-classification"].numbers["n_paired"] == 0
    assert verdicts(model="builtin:tiny-llama")["depth-beats-width-classification"].numbers["n_paired"] == 0


def test_samples_match_only_under_equal_task_settings():
    seed_run("shortgpt", {"gsm8k": ones(40)}, tasks=[{"name": "gsm8k", "generation": {"max_new_tokens": 64}}])
    seed_run("flap", {"gsm8k": zeros(40)}, tasks=[{"name": "gsm8k", "generation": {"max_new_tokens": 128}}])
    assert verdicts()["width-beats-depth-reasoning"].numbers["n_paired"] == 0


# --- dynamic ---------------------------------------------------------------------------------------


def test_dynamic_degrades_on_reasoning_supported():
    # drop on reasoning 1 (dense right, dynamic wrong), on classification 0: diff = 1 - 0
    dense = seed_run("dense", {"gsm8k": ones(40), "piqa": ones(40)})
    dynamic = seed_run("skipgpt-style", {"gsm8k": zeros(40), "piqa": ones(40)})
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.verdict == "supported"
    assert (v.numbers["diff"], v.numbers["ci_low"], v.numbers["ci_high"]) == (1.0, 1.0, 1.0)
    assert v.numbers["n_reasoning"] == 40 and v.numbers["n_classification"] == 40 and v.numbers["n_paired"] == 40
    assert v.numbers["runs"] == {"dense": [dense], "dynamic": [dynamic]}


def test_dynamic_hand_computed_difference_of_drops():
    # reasoning drop: 20 of 40 docs lost -> 0.5; classification drop: 10 of 50 lost -> 0.2; diff 0.3
    # se = sqrt(0.25/40 + 0.16/50) = 0.0972: CI about 0.3 +- 0.19
    seed_run("dense", {"gsm8k": ones(40), "piqa": ones(50)})
    seed_run("skipgpt-style", {"gsm8k": zeros(20) + ones(20), "piqa": zeros(10) + ones(40)})
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.numbers["drop_reasoning"] == pytest.approx(0.5) and v.numbers["drop_classification"] == pytest.approx(0.2)
    assert v.numbers["diff"] == pytest.approx(0.3)
    se = math.sqrt(0.25 / 40 + 0.16 / 50)
    assert v.numbers["ci_low"] == pytest.approx(0.3 - 1.96 * se, abs=0.04)
    assert v.numbers["ci_high"] == pytest.approx(0.3 + 1.96 * se, abs=0.04)
    assert v.verdict == "supported"


def test_dynamic_contradicted_when_classification_suffers_more():
    seed_run("dense", {"gsm8k": ones(40), "piqa": ones(40)})
    seed_run("skipgpt-style", {"gsm8k": ones(40), "piqa": zeros(40)})
    assert verdicts()["dynamic-degrades-long-chains"].verdict == "contradicted"


def test_dynamic_needs_30_samples_in_each_category():
    seed_run("dense", {"gsm8k": ones(20), "piqa": ones(100)})
    seed_run("skipgpt-style", {"gsm8k": zeros(20), "piqa": ones(100)})
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.verdict == "inconclusive" and v.numbers["n_paired"] == 20 and v.numbers["diff"] == 1.0


def test_dynamic_runs_pair_with_the_dense_run_across_sparsity_and_calibration():
    seed_run("dense", {"gsm8k": ones(40), "piqa": ones(40)})
    seed_run("skipgpt-style", {"gsm8k": zeros(40), "piqa": ones(40)}, sparsity=0.2)
    seed_run("skipgpt-style", {"gsm8k": ones(40), "piqa": ones(40)}, sparsity=0.6, calibration=ALIGNED)
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.numbers["drop_reasoning"] == pytest.approx(0.5) and len(v.numbers["runs"]["dynamic"]) == 2


# --- calibration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [ALIGNED, SELF_GENERATED])
def test_aligned_calibration_helps_supported(aligned):
    generic = seed_run("wanda", {"gsm8k": zeros(20), "piqa": ones(20)}, calibration=TEXT)
    better = seed_run("wanda", {"gsm8k": ones(20), "piqa": ones(20)}, calibration=aligned)
    v = verdicts()["aligned-calibration-helps"]
    # 20 gsm8k units at +1, 20 piqa units at 0: diff 0.5 over 40
    assert v.numbers["n_paired"] == 40 and v.numbers["diff"] == pytest.approx(0.5)
    assert v.verdict == "supported"
    assert v.numbers["runs"] == {"aligned": [better], "generic": [generic]}


def test_aligned_calibration_contradicted_and_other_methods_not_paired():
    seed_run("wanda", {"gsm8k": ones(40)}, calibration=TEXT)
    seed_run("wanda", {"gsm8k": zeros(40)}, calibration=ALIGNED)
    seed_run("shortgpt", {"gsm8k": ones(40)}, calibration=ALIGNED)  # no generic shortgpt run: unpaired
    v = verdicts()["aligned-calibration-helps"]
    assert v.verdict == "contradicted" and v.numbers["n_paired"] == 40


def test_aligned_calibration_inconclusive_when_equal():
    seed_run("flap", {"piqa": [i % 3 == 0 for i in range(60)]}, calibration=TEXT)
    seed_run("flap", {"piqa": [i % 3 == 0 for i in range(60)]}, calibration=ALIGNED)
    v = verdicts()["aligned-calibration-helps"]
    assert v.verdict == "inconclusive" and v.numbers["diff"] == 0.0 and v.numbers["ci_low"] == 0.0


# --- test-time scaling -----------------------------------------------------------------------------


def tts(n: int, vote: float, single: float) -> list[dict]:
    return [{"exact_match": 0.0, "pass@1": single, "pass@4": 1.0, "maj@4": vote}] * n


def test_unstructured_preserves_test_time_scaling_supported():
    # unstructured gain maj@4 - pass@1 = 1 - 0.25 = 0.75; depth gain 0 - 0.25 = -0.25; diff 1.0
    unstructured = seed_run("wanda", {"math500": tts(40, 1.0, 0.25)}, tasks=[TTS_TASK])
    depth = seed_run("shortgpt", {"math500": tts(40, 0.0, 0.25)}, tasks=[TTS_TASK])
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "supported" and v.numbers["diff"] == pytest.approx(1.0) and v.numbers["n_paired"] == 40
    assert v.numbers["runs"] == {"unstructured": [unstructured], "depth": [depth]}


def test_unstructured_tts_contradicted_and_single_sample_tasks_ignored():
    seed_run("wanda", {"math500": tts(40, 0.25, 0.25)}, tasks=[TTS_TASK])
    seed_run("shortgpt", {"math500": tts(40, 0.75, 0.25)}, tasks=[TTS_TASK])
    seed_run("wanda", {"gsm8k": ones(40)}, sparsity=0.4)
    seed_run("shortgpt", {"gsm8k": zeros(40)}, sparsity=0.4)
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "contradicted" and v.numbers["diff"] == pytest.approx(-0.5) and v.numbers["n_paired"] == 40


def test_unstructured_tts_inconclusive_with_few_samples():
    seed_run("wanda", {"math500": tts(10, 1.0, 0.25)}, tasks=[TTS_TASK])
    seed_run("shortgpt", {"math500": tts(10, 0.0, 0.25)}, tasks=[TTS_TASK])
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "inconclusive" and v.numbers["n_paired"] == 10


# --- the statistics on their own -------------------------------------------------------------------


def test_verdict_rule_boundaries():
    assert verdict_for(0.1, 0.0, 0.2, 100)[0] == "inconclusive"  # touching zero is not "above"
    assert verdict_for(0.1, 0.01, 0.2, 100)[0] == "supported"
    assert verdict_for(-0.1, -0.2, -0.01, 100)[0] == "contradicted"
    assert verdict_for(0.5, 0.4, 0.6, MIN_PAIRED - 1)[0] == "inconclusive"
    assert verdict_for(0.5, 0.4, 0.6, MIN_PAIRED)[0] == "supported"


def test_stratified_bootstrap_is_deterministic_and_brackets_the_difference():
    x = [1.0] * 30 + [0.0] * 50 + [-1.0] * 20
    y = [0.0] * 60 + [1.0] * 10
    first, second = bootstrap_mean_difference(x, y), bootstrap_mean_difference(x, y)
    assert first == second
    diff, low, high = first
    assert diff == pytest.approx(0.1 - 10 / 70) and low < diff < high
    assert bootstrap_mean_difference([1.0] * 40, [0.0] * 40) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_mean_difference([], [1.0]))
