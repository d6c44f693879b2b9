"""Findings verdicts from seeded result rows: every finding supported, contradicted and inconclusive
(interval containing the threshold, too few documents), the numbers checked against hand-computed
values, pairing at matched measured cost with its nominal fallback, and `python -m jobs findings`.
Rows are written directly (jobs + samples with correctness), no model runs."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db.findings import FINDINGS, MIN_PAIRED, findings
from db.schema import Job, Sample, Score
from db.session import dispose_engines, init_db, read_session, write_session
from db.states import JobState
from jobs.facts import run_facts, task_facts

ROOT = Path(__file__).resolve().parent.parent
MODEL = "builtin:smollm2-135m-instruct"
TEXT = {"source": "text", "path": "wikitext2/valid.txt"}
ALIGNED = {"source": "task-aligned", "task": "gsm8k"}
SELF_GENERATED = {"source": "self-generated", "task": "gsm8k"}
TTS_TASK = {"name": "math500", "limit": 100, "generation": {"num_samples": 4, "temperature": 0.6}}
OWL = {"allocation": "owl"}


@pytest.fixture(autouse=True)
def _database():
    init_db()
    yield
    dispose_engines()


def seed_run(method: str, samples: dict[str, list], sparsity: float = 0.2, calibration: dict | None = None,
             paradigm: str = "instruct", state: JobState = JobState.SUCCEEDED, tasks: list | None = None,
             seed: int = 0, model: str = MODEL, params: dict | None = None, efficiency: dict | None = None) -> int:
    """A job whose samples are `samples[task][doc_id]`: a bool (correct) or a metrics dict (TTS)."""
    config = {"model": model, "paradigm": paradigm, "seed": seed,
              "tasks": tasks or [{"name": name, "limit": 100} for name in sorted(samples)]}
    if method != "dense":
        config["pruning"] = {"method": method, "sparsity": sparsity, **({"params": params} if params else {})}
        config["calibration"] = calibration or TEXT
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    with write_session() as session:
        job = Job(config_hash=hashlib.sha256(text.encode()).hexdigest(), config_json=text, model=model,
                  paradigm=paradigm, method=method, sparsity=sparsity if method != "dense" else 0.0, state=state,
                  attempts=1, requeues=0, progress=1.0, cancel_requested=False, efficiency_json=efficiency,
                  **run_facts(config))
        session.add(job)
        session.flush()
        for task, values in samples.items():
            for doc_id, value in enumerate(values):
                metrics = value if isinstance(value, dict) else {}
                correct = bool(metrics.get("exact_match", 0)) if metrics else value
                session.add(Sample(job_id=job.id, task=task, doc_id=doc_id, prompt="q", output="a", gold="g",
                                   correct=correct, prompt_tokens=1, output_tokens=1, metrics_json=metrics))
            session.add(Score(job_id=job.id, task=task, metric="exact_match", value=0.0, stderr=None,
                              higher_is_better=True, is_primary=True, comparability_key="k", **task_facts(task)))
        return job.id


def kept(fraction: float) -> dict:
    """An efficiency probe of a run that kept `fraction` of the parameters."""
    return {"params": 1_000_000, "nonzero_params": round(fraction * 1_000_000), "params_before": 1_000_000}


def speed(tokens_per_s: float) -> dict:
    return {"decode_tokens_per_s": tokens_per_s, "device_name": "test-cpu"}


def verdicts(**filters) -> dict:
    with read_session() as session:
        return {v.key: v for v in findings(session, **filters)}


def ones(n: int) -> list[bool]:
    return [True] * n


def zeros(n: int) -> list[bool]:
    return [False] * n


def test_no_results_every_finding_is_listed_inconclusive_with_its_rule():
    result = verdicts()
    assert list(result) == [f.key for f in FINDINGS] and len(result) >= 9
    for v in result.values():
        assert v.verdict == "inconclusive"
        assert v.numbers["n"] == 0 and v.numbers["estimate"] is None and v.numbers["job_ids"] == []
        assert v.as_dict()["interval"] is None and v.as_dict()["n"] == 0 and v.as_dict()["id"] == v.key
        assert "bootstrap" in v.rule and f"fewer than {MIN_PAIRED} documents" in v.rule
        assert "resampling documents" in v.rule and "Decision:" in v.rule
        assert v.reason.startswith("no paired documents: needs ")


# --- depth vs width --------------------------------------------------------------------------------


def test_depth_beats_width_on_classification_supported_with_exact_numbers():
    depth = seed_run("shortgpt", {"piqa": ones(40)})
    width = seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "supported"
    assert v.numbers["estimate"] == 1.0 and v.numbers["ci_low"] == 1.0 and v.numbers["ci_high"] == 1.0
    assert v.numbers["n"] == v.numbers["n_paired"] == 40
    assert v.numbers["pairs"] == {"sparsity": 1} and "by nominal sparsity" in v.reason
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
    assert v.numbers["estimate"] == pytest.approx(0.5)
    assert v.numbers["n_paired"] == 40
    assert v.numbers["ci_low"] == pytest.approx(0.5 - 1.96 * 0.5 / math.sqrt(40), abs=0.04)
    assert v.numbers["ci_high"] == pytest.approx(0.5 + 1.96 * 0.5 / math.sqrt(40), abs=0.04)
    assert v.verdict == "supported"


def test_depth_vs_width_contradicted_when_width_wins_on_classification():
    seed_run("shortgpt", {"piqa": zeros(35)})
    seed_run("flap", {"piqa": ones(35)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "contradicted"
    assert (v.numbers["estimate"], v.numbers["ci_low"], v.numbers["ci_high"]) == (-1.0, -1.0, -1.0)


def test_interval_crossing_zero_is_inconclusive():
    # alternating +1 / -1 differences: diff 0, sd 1, CI about +-1.96 / sqrt(100) = +-0.196
    seed_run("shortgpt", {"winogrande": [i % 2 == 0 for i in range(100)]})
    seed_run("flap", {"winogrande": [i % 2 == 1 for i in range(100)]})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "inconclusive" and "contains 0" in v.reason
    assert v.numbers["estimate"] == 0.0 and v.numbers["n_paired"] == 100
    assert v.numbers["ci_low"] == pytest.approx(-0.196, abs=0.03)
    assert v.numbers["ci_high"] == pytest.approx(0.196, abs=0.03)


def test_fewer_than_30_paired_samples_is_inconclusive_even_with_a_clear_interval():
    seed_run("shortgpt", {"piqa": ones(MIN_PAIRED - 1)})
    seed_run("flap", {"piqa": zeros(MIN_PAIRED - 1)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.verdict == "inconclusive"
    assert v.numbers["n"] == MIN_PAIRED - 1 and v.numbers["ci_low"] == 1.0
    assert f"only {MIN_PAIRED - 1} documents" in v.reason


def test_width_beats_depth_on_reasoning_supported_and_classification_ignored():
    depth = seed_run("shortgpt", {"gsm8k": zeros(30) + ones(10), "piqa": ones(50)})
    width = seed_run("flap", {"gsm8k": ones(40), "piqa": zeros(50)})
    result = verdicts()
    v = result["width-beats-depth-reasoning"]
    assert v.verdict == "supported"
    assert v.numbers["estimate"] == pytest.approx(30 / 40) and v.numbers["n_paired"] == 40
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


def test_every_matched_pair_counts_and_its_documents_move_together():
    # two depth methods in the same setting, each paired with width: per doc (1 - 0) and (0 - 0), mean 0.5;
    # a resampled document brings both of its pairs, so every resample gives exactly 0.5
    shortgpt = seed_run("shortgpt", {"piqa": ones(40)})
    sleb = seed_run("sleb", {"piqa": zeros(40)})
    width = seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["n"] == 40 and v.numbers["n_paired"] == 80 and v.numbers["pairs"] == {"sparsity": 2}
    assert (v.numbers["estimate"], v.numbers["ci_low"], v.numbers["ci_high"]) == (0.5, 0.5, 0.5)
    assert v.numbers["runs"] == {"depth": sorted([shortgpt, sleb]), "width": [width]}


def test_latest_succeeded_job_of_a_config_is_used():
    seed_run("shortgpt", {"piqa": zeros(40)})
    later = seed_run("shortgpt", {"piqa": ones(40)})  # same config, newer run
    seed_run("flap", {"piqa": zeros(40)})
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["runs"]["depth"] == [later] and v.numbers["estimate"] == 1.0


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
    assert (v.numbers["estimate"], v.numbers["ci_low"], v.numbers["ci_high"]) == (1.0, 1.0, 1.0)
    assert v.numbers["n_reasoning"] == 40 and v.numbers["n_classification"] == 40 and v.numbers["n"] == 80
    assert v.numbers["retained_reasoning"] == 0.0 and v.numbers["retained_classification"] == 1.0
    assert v.numbers["runs"] == {"dense": [dense], "dynamic": [dynamic]}


def test_dynamic_hand_computed_difference_of_retained():
    # dense all right, so retained = dynamic's accuracy: reasoning 20 of 40 -> 0.5, classification 40 of 50
    # -> 0.8; diff 0.8 - 0.5 = 0.3; the two tasks resample independently:
    # se = sqrt(0.25/40 + 0.16/50) = 0.0972: CI about 0.3 +- 0.19
    seed_run("dense", {"gsm8k": ones(40), "piqa": ones(50)})
    seed_run("skipgpt-style", {"gsm8k": zeros(20) + ones(20), "piqa": zeros(10) + ones(40)})
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.numbers["retained_reasoning"] == pytest.approx(0.5)
    assert v.numbers["retained_classification"] == pytest.approx(0.8)
    assert v.numbers["estimate"] == pytest.approx(0.3)
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
    assert v.verdict == "inconclusive" and v.numbers["n_reasoning"] == 20 and v.numbers["estimate"] == 1.0
    assert "only 20 reasoning documents" in v.reason


def test_dynamic_runs_pair_with_the_dense_run_across_sparsity_and_calibration():
    seed_run("dense", {"gsm8k": ones(40), "piqa": ones(40)})
    seed_run("skipgpt-style", {"gsm8k": zeros(40), "piqa": ones(40)}, sparsity=0.2)
    seed_run("skipgpt-style", {"gsm8k": ones(40), "piqa": ones(40)}, sparsity=0.6, calibration=ALIGNED)
    v = verdicts()["dynamic-degrades-long-chains"]
    assert v.numbers["retained_reasoning"] == pytest.approx(0.5) and len(v.numbers["runs"]["dynamic"]) == 2


# --- calibration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [ALIGNED, SELF_GENERATED])
def test_aligned_calibration_helps_supported(aligned):
    generic = seed_run("wanda", {"gsm8k": zeros(20), "piqa": ones(20)}, calibration=TEXT)
    better = seed_run("wanda", {"gsm8k": ones(20), "piqa": ones(20)}, calibration=aligned)
    v = verdicts()["aligned-calibration-helps"]
    # 20 gsm8k units at +1, 20 piqa units at 0: diff 0.5 over 40
    assert v.numbers["n_paired"] == 40 and v.numbers["estimate"] == pytest.approx(0.5)
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
    assert v.verdict == "inconclusive" and v.numbers["estimate"] == 0.0 and v.numbers["ci_low"] == 0.0


# --- test-time scaling -----------------------------------------------------------------------------


def tts(n: int, vote: float, single: float) -> list[dict]:
    return [{"exact_match": 0.0, "pass@1": single, "pass@4": 1.0, "maj@4": vote}] * n


def test_unstructured_preserves_test_time_scaling_supported():
    # unstructured gain maj@4 - pass@1 = 1 - 0.25 = 0.75; depth gain 0 - 0.25 = -0.25; diff 1.0
    unstructured = seed_run("wanda", {"math500": tts(40, 1.0, 0.25)}, tasks=[TTS_TASK])
    depth = seed_run("shortgpt", {"math500": tts(40, 0.0, 0.25)}, tasks=[TTS_TASK])
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "supported" and v.numbers["estimate"] == pytest.approx(1.0) and v.numbers["n_paired"] == 40
    assert v.numbers["runs"] == {"unstructured": [unstructured], "depth": [depth]}


def test_unstructured_tts_contradicted_and_single_sample_tasks_ignored():
    seed_run("wanda", {"math500": tts(40, 0.25, 0.25)}, tasks=[TTS_TASK])
    seed_run("shortgpt", {"math500": tts(40, 0.75, 0.25)}, tasks=[TTS_TASK])
    seed_run("wanda", {"gsm8k": ones(40)}, sparsity=0.4)
    seed_run("shortgpt", {"gsm8k": zeros(40)}, sparsity=0.4)
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "contradicted" and v.numbers["estimate"] == pytest.approx(-0.5) and v.numbers["n_paired"] == 40


def test_unstructured_tts_inconclusive_with_few_samples():
    seed_run("wanda", {"math500": tts(10, 1.0, 0.25)}, tasks=[TTS_TASK])
    seed_run("shortgpt", {"math500": tts(10, 0.0, 0.25)}, tasks=[TTS_TASK])
    v = verdicts()["unstructured-preserves-tts"]
    assert v.verdict == "inconclusive" and v.numbers["n_paired"] == 10


# --- pairing at matched measured cost --------------------------------------------------------------


def test_families_pair_at_matched_parameters_not_at_nominal_sparsity():
    # shortgpt 0.25 keeps 80 %; flap 0.4 keeps 81 % (within 0.05: paired); flap 0.25 keeps 70 % (not paired)
    depth = seed_run("shortgpt", {"piqa": ones(40)}, sparsity=0.25, efficiency=kept(0.80))
    matched = seed_run("flap", {"piqa": zeros(40)}, sparsity=0.4, efficiency=kept(0.81))
    seed_run("flap", {"piqa": ones(40)}, sparsity=0.25, efficiency=kept(0.70))
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["runs"] == {"depth": [depth], "width": [matched]}
    assert v.numbers["pairs"] == {"params": 1} and v.verdict == "supported"
    assert "1 pair(s) at matched params, 0 by nominal sparsity" in v.reason
    assert "non-zero parameters kept" in v.rule and "within 0.05" in v.rule


def test_nominal_sparsity_only_where_a_measured_figure_is_missing():
    depth = seed_run("shortgpt", {"piqa": ones(40)}, sparsity=0.25, efficiency=kept(0.80))
    unmeasured = seed_run("flap", {"piqa": zeros(40)}, sparsity=0.25)  # no efficiency: nominal 0.25 = 0.25
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.5)  # no efficiency and another nominal sparsity
    v = verdicts()["depth-beats-width-classification"]
    assert v.numbers["runs"] == {"depth": [depth], "width": [unmeasured]}
    assert v.numbers["pairs"] == {"sparsity": 1}


def test_pairing_option_overrides_the_measure():
    seed_run("shortgpt", {"piqa": ones(40)}, sparsity=0.25, efficiency=kept(0.80))
    seed_run("flap", {"piqa": zeros(40)}, sparsity=0.25, efficiency=kept(0.60))
    assert verdicts()["depth-beats-width-classification"].numbers["n"] == 0  # 0.80 vs 0.60: no match
    v = verdicts(pairing="sparsity")["depth-beats-width-classification"]
    assert v.numbers["n"] == 40 and v.numbers["pairs"] == {"sparsity": 1} and "nominal sparsity" in v.rule
    with pytest.raises(ValueError, match="pairing must be one of"):
        verdicts(pairing="layers")


def test_same_documents_in_more_pairs_do_not_narrow_the_interval():
    # the same per-document outcome at three sparsities: 3 x 40 paired values but still 40 documents,
    # so the cluster bootstrap gives exactly the interval of one sparsity
    depth, width = ones(25) + zeros(15), ones(15) + zeros(25)
    seed_run("shortgpt", {"piqa": depth}, sparsity=0.2)
    seed_run("flap", {"piqa": width}, sparsity=0.2)
    single = verdicts()["depth-beats-width-classification"]
    for sparsity in (0.4, 0.6):
        seed_run("shortgpt", {"piqa": depth}, sparsity=sparsity)
        seed_run("flap", {"piqa": width}, sparsity=sparsity)
    tripled = verdicts()["depth-beats-width-classification"]
    assert (tripled.numbers["n"], tripled.numbers["n_paired"]) == (40, 120)
    assert (tripled.numbers["ci_low"], tripled.numbers["ci_high"]) == (single.numbers["ci_low"],
                                                                       single.numbers["ci_high"])


# --- static vs dynamic -----------------------------------------------------------------------------


def test_static_beats_dynamic_on_reasoning_supported_at_matched_latency():
    # dense decodes 100 tok/s; depth 125 (latency 0.80), dynamic 120 (0.83, matched), width 200 (0.50, not)
    seed_run("dense", {"gsm8k": ones(40)}, efficiency=speed(100.0))
    depth = seed_run("shortgpt", {"gsm8k": ones(40), "piqa": zeros(40)}, sparsity=0.25, efficiency=speed(125.0))
    seed_run("flap", {"gsm8k": zeros(40)}, sparsity=0.25, efficiency=speed(200.0))
    dynamic = seed_run("skipgpt-style", {"gsm8k": zeros(40), "piqa": ones(40)}, sparsity=0.5,
                       efficiency=speed(120.0))
    v = verdicts()["static-beats-dynamic-reasoning"]
    assert v.verdict == "supported" and v.numbers["estimate"] == 1.0 and v.numbers["n"] == 40
    assert v.numbers["runs"] == {"static": [depth], "dynamic": [dynamic]} and v.numbers["pairs"] == {"latency": 1}
    assert "decode latency" in v.rule


def test_static_beats_dynamic_contradicted():
    seed_run("wanda", {"math500": zeros(40)})
    seed_run("skipgpt-style", {"math500": ones(40)})
    v = verdicts()["static-beats-dynamic-reasoning"]
    assert v.verdict == "contradicted" and v.numbers["estimate"] == -1.0


def test_static_vs_dynamic_inconclusive_when_even():
    seed_run("shortgpt", {"gsm8k": [i % 2 == 0 for i in range(60)]})
    seed_run("skipgpt-style", {"gsm8k": [i % 2 == 1 for i in range(60)]})
    v = verdicts()["static-beats-dynamic-reasoning"]
    assert v.verdict == "inconclusive" and v.numbers["estimate"] == 0.0 and "contains 0" in v.reason


# --- dynamic holds up ------------------------------------------------------------------------------


def test_dynamic_holds_up_supported_by_retained_share_of_a_weak_dense():
    # dense right on 100 of 200 piqa docs, dynamic on 97 of those: retained 0.97 (absolute drop only 0.015)
    seed_run("dense", {"piqa": ones(100) + zeros(100)})
    seed_run("skipgpt-style", {"piqa": ones(97) + zeros(103)})
    v = verdicts()["dynamic-holds-up-instruct"]
    assert v.numbers["estimate"] == pytest.approx(0.97) and v.numbers["n"] == 200
    assert v.verdict == "supported" and v.numbers["ci_low"] > 0.9
    assert "90%" in v.rule and "instruct" in v.rule


def test_dynamic_holds_up_contradicted_and_reasoning_and_think_runs_ignored():
    seed_run("dense", {"ifeval": ones(100), "gsm8k": ones(100)})
    seed_run("skipgpt-style", {"ifeval": ones(50) + zeros(50), "gsm8k": ones(100)})
    seed_run("dense", {"ifeval": ones(100)}, paradigm="think")
    seed_run("skipgpt-style", {"ifeval": ones(100)}, paradigm="think")
    v = verdicts()["dynamic-holds-up-instruct"]
    assert v.numbers["estimate"] == pytest.approx(0.5) and v.numbers["n"] == 100
    assert v.verdict == "contradicted"


def test_dynamic_holds_up_inconclusive_at_the_threshold():
    seed_run("dense", {"piqa": ones(100)})
    seed_run("skipgpt-style", {"piqa": ones(90) + zeros(10)})
    v = verdicts()["dynamic-holds-up-instruct"]
    assert v.numbers["estimate"] == pytest.approx(0.9) and v.verdict == "inconclusive"
    assert v.numbers["ci_low"] < 0.9 < v.numbers["ci_high"]


# --- paradigm --------------------------------------------------------------------------------------


def paradigm_pair(instruct: list, think: list, dense: list | None = None) -> None:
    """Wanda in both paradigms (think with its own generation budget), each with its dense run."""
    dense = dense or ones(len(instruct))
    budget = {"instruct": 64, "think": 512}
    for paradigm, wanda in (("instruct", instruct), ("think", think)):
        tasks = [{"name": "gsm8k", "limit": 100, "generation": {"max_new_tokens": budget[paradigm]}}]
        seed_run("dense", {"gsm8k": dense}, paradigm=paradigm, tasks=tasks)
        seed_run("wanda", {"gsm8k": wanda}, paradigm=paradigm, tasks=tasks)


def test_paradigm_dependence_supported_when_think_retains_less():
    paradigm_pair(ones(40), ones(20) + zeros(20))
    v = verdicts()["pruning-effect-depends-on-paradigm"]
    assert v.numbers["retained_instruct"] == 1.0 and v.numbers["retained_think"] == 0.5
    assert v.numbers["estimate"] == pytest.approx(-0.5) and v.verdict == "supported" and "excludes 0" in v.reason
    assert v.numbers["n"] == 40 and set(v.numbers["runs"]) == {"instruct", "think", "dense"}


def test_paradigm_dependence_contradicted_when_retained_is_the_same():
    # identical outcomes per document: the difference is 0 in every resample, inside +-0.05
    pattern = [i % 4 != 0 for i in range(80)]
    paradigm_pair(pattern, pattern)
    v = verdicts()["pruning-effect-depends-on-paradigm"]
    assert (v.numbers["estimate"], v.numbers["ci_low"], v.numbers["ci_high"]) == (0.0, 0.0, 0.0)
    assert v.verdict == "contradicted" and "within +-0.05" in v.reason


def test_paradigm_dependence_inconclusive_with_a_wide_interval_and_needs_both_dense_runs():
    paradigm_pair([i % 2 == 0 for i in range(40)], [i % 2 == 1 for i in range(40)])
    v = verdicts()["pruning-effect-depends-on-paradigm"]
    assert v.numbers["estimate"] == 0.0 and v.verdict == "inconclusive" and v.numbers["ci_high"] > 0.05
    assert verdicts(paradigm="instruct")["pruning-effect-depends-on-paradigm"].numbers["n"] == 0


# --- low-sparsity Wanda ----------------------------------------------------------------------------


def test_low_sparsity_wanda_matches_dense_supported_and_other_runs_ignored():
    pattern = ones(20) + zeros(20)
    dense = seed_run("dense", {"gsm8k": pattern})
    wanda = seed_run("wanda", {"gsm8k": pattern}, sparsity=0.3)
    seed_run("wanda", {"gsm8k": zeros(40)}, sparsity=0.5)  # not low sparsity
    seed_run("magnitude", {"gsm8k": zeros(40)}, sparsity=0.2)  # not wanda
    v = verdicts()["low-sparsity-wanda-matches-dense"]
    assert (v.numbers["estimate"], v.numbers["ci_low"]) == (0.0, 0.0) and v.verdict == "supported"
    assert v.numbers["runs"] == {"wanda": [wanda], "dense": [dense]} and "-0.02" in v.reason
    assert "margin 0.02" in v.rule


def test_low_sparsity_wanda_contradicted():
    seed_run("dense", {"math500": ones(40)})
    seed_run("wanda", {"math500": ones(10) + zeros(30)}, sparsity=0.2)
    v = verdicts()["low-sparsity-wanda-matches-dense"]
    assert v.numbers["estimate"] == pytest.approx(-0.75) and v.verdict == "contradicted"


def test_low_sparsity_wanda_inconclusive_when_the_interval_reaches_below_the_margin():
    seed_run("dense", {"gsm8k": [i % 2 == 0 for i in range(60)]})
    seed_run("wanda", {"gsm8k": [i % 2 == 1 for i in range(60)]}, sparsity=0.2)
    v = verdicts()["low-sparsity-wanda-matches-dense"]
    assert v.verdict == "inconclusive" and v.numbers["ci_low"] < -0.02 < v.numbers["ci_high"]


# --- allocation and model strength -----------------------------------------------------------------


STRONG, WEAK = "org/strong-model", "org/weak-model"


def allocation_runs(model: str, dense: list, uniform: list, owl: list) -> None:
    seed_run("dense", {"piqa": dense}, model=model)
    seed_run("wanda", {"piqa": uniform}, model=model)
    seed_run("wanda", {"piqa": owl}, model=model, params=OWL)


def test_allocation_helps_the_weaker_model_more_supported():
    # strong: dense 1.0, uniform and OWL retain 100 %: gain 0. weak: dense right on 20 of 40,
    # uniform on 10 of those (retained 0.5), OWL on all 20 (1.0): gain 0.5. Weaker - stronger = 0.5
    allocation_runs(STRONG, ones(40), ones(40), ones(40))
    allocation_runs(WEAK, ones(20) + zeros(20), ones(10) + zeros(30), ones(20) + zeros(20))
    v = verdicts()["allocation-helps-weaker-model"]
    assert v.numbers["models"] == [{"weaker": WEAK, "stronger": STRONG}]
    assert v.numbers["gain_weaker"] == pytest.approx(0.5) and v.numbers["gain_stronger"] == 0.0
    assert v.numbers["estimate"] == pytest.approx(0.5) and v.verdict == "supported" and v.numbers["n"] == 40
    assert len(v.numbers["runs"]["weaker model: allocated"]) == 1 and "lower mean" in v.rule


def test_allocation_contradicted_when_the_stronger_model_gains_more():
    allocation_runs(STRONG, ones(40), ones(20) + zeros(20), ones(40))
    allocation_runs(WEAK, ones(20) + zeros(20), ones(20) + zeros(20), ones(20) + zeros(20))
    v = verdicts()["allocation-helps-weaker-model"]
    assert v.numbers["estimate"] == pytest.approx(-0.5) and v.verdict == "contradicted"


def test_allocation_inconclusive_with_few_documents_or_one_model():
    allocation_runs(STRONG, ones(20), ones(20), ones(20))
    allocation_runs(WEAK, ones(10) + zeros(10), ones(5) + zeros(15), ones(10) + zeros(10))
    v = verdicts()["allocation-helps-weaker-model"]
    assert v.verdict == "inconclusive" and "only 20 documents" in v.reason
    assert verdicts(model=STRONG)["allocation-helps-weaker-model"].numbers["n"] == 0


# --- the CLI ---------------------------------------------------------------------------------------


def run_findings_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", "findings", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_every_verdict_as_json_like_the_tab():
    seed_run("shortgpt", {"piqa": ones(40)})
    seed_run("flap", {"piqa": zeros(40)})
    done = run_findings_cli("--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(listed, list) and all("pairing" in f for f in listed)
    assert [f["id"] for f in listed] == [f.key for f in FINDINGS] and len(listed) >= 9
    expected = verdicts()
    for item in listed:
        assert {"id", "verdict", "n", "interval", "rule", "statement", "reason"} <= set(item)
        assert item["verdict"] == expected[item["id"]].verdict and item["rule"] == expected[item["id"]].rule
    first = listed[0]
    assert first["verdict"] == "supported" and first["n"] == 40 and first["interval"] == [1.0, 1.0]
    empty = next(f for f in listed if f["id"] == "allocation-helps-weaker-model")
    assert (empty["verdict"], empty["n"], empty["interval"]) == ("inconclusive", 0, None)


def test_cli_filters_text_output_and_bad_pairing():
    seed_run("shortgpt", {"piqa": ones(40)}, paradigm="think")
    seed_run("flap", {"piqa": zeros(40)}, paradigm="think")
    done = run_findings_cli("--paradigm", "instruct", "--pairing", "sparsity", "--json")
    first = json.loads(done.stdout.strip().splitlines()[-1])[0]
    assert first["n"] == 0 and "nominal sparsity" in first["rule"]
    text = run_findings_cli()
    assert text.returncode == 0 and "supported" in text.stdout and "depth-beats-width-classification" in text.stdout
    assert "rule:" in text.stdout
    bad = run_findings_cli("--pairing", "layers")
    assert bad.returncode == 2 and "pairing must be one of" in bad.stderr


# --- the tab ---------------------------------------------------------------------------------------


def test_tab_lists_every_finding_with_its_rule_n_and_interval():
    from ui import services

    seed_run("shortgpt", {"piqa": ones(40)})
    seed_run("flap", {"piqa": zeros(40)})
    page = services.findings_html(pairing="sparsity")
    for finding in FINDINGS:
        assert f'id="pb-finding-{finding.key}"' in page and finding.statement in page
    verdict = verdicts(pairing="sparsity")["depth-beats-width-classification"]
    assert f"<em>Rule:</em> {verdict.rule}" in page
    assert "estimate 1, 95% CI [1, 1]" in page and "n = 40 documents (40 paired values)" in page
    assert page.count("n = 0 documents") == len(FINDINGS) - 1  # only depth vs width has paired runs
    assert "pairing must be one of" in services.findings_html(pairing="layers")


def test_cli_findings_import_no_torch():
    seed_run("shortgpt", {"piqa": ones(40)})
    seed_run("skipgpt-style", {"gsm8k": zeros(40)})
    code = ("import sys\nfrom jobs.cli import main\nassert main(['findings', '--json']) == 0\n"
            "print('TORCH', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "TORCH False"
