"""Published reference results (backend/references.yaml): the table, matching runs to rows, and the
verdict shown in the leaderboard, the run detail and `python -m jobs references --json`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import validate_config
from backend.references import compare_run, references
from backend.result import RunResult, ScoreRecord
from jobs import queue
from ui import board

ROOT = Path(__file__).resolve().parent.parent
LLAMA2 = "meta-llama/Llama-2-7b-hf"


def test_the_table_has_cited_rows_including_the_issues_numbers():
    rows = references()
    assert len(rows) >= 10
    for ref in rows:
        assert ref.paper and ref.table and ref.tolerance and ref.value > 0
    values = {(r.model, r.method, r.sparsity, r.params.get("pattern"), r.params.get("allocation"), r.task): r.value
              for r in rows}
    assert values[(LLAMA2, "dense", 0.0, None, None, "wikitext2-ppl")] == 5.12
    assert values[(LLAMA2, "wanda", 0.5, "unstructured", None, "wikitext2-ppl")] == 6.42
    assert values[(LLAMA2, "sparsegpt", 0.5, "2:4", None, "wikitext2-ppl")] == 10.17
    assert values[("huggyllama/llama-7b", "wanda", 0.7, "unstructured", "owl", "wikitext2-ppl")] == 24.55
    r1 = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert values[(r1, "dense", 0.0, None, None, "aime24")] == pytest.approx(0.289)
    assert values[(r1, "dense", 0.0, None, None, "gpqa-diamond")] == pytest.approx(0.338)


def _config(method="wanda", sparsity=0.5, params=None, window=None):
    task = {"name": "wikitext2-ppl", **({"window": window} if window else {})}
    config = {"model": LLAMA2, "tasks": [task]}
    if method != "dense":
        config["pruning"] = {"method": method, "sparsity": sparsity, **({"params": params} if params else {})}
    return config


def test_a_run_is_matched_to_its_row_and_judged_by_the_tolerance():
    close = compare_run(_config(), {("wikitext2-ppl", "perplexity"): 6.5})
    assert [c.reference.value for c in close] == [6.42] and close[0].verdict == "reproduced"
    far = compare_run(_config(), {("wikitext2-ppl", "perplexity"): 7.5})
    assert far[0].verdict == "off by +16.8 %" and not far[0].reproduced
    assert far[0].differing_settings == {"window": (None, 4096)}  # the run used the task's default window
    exact = compare_run(_config(window=4096), {("wikitext2-ppl", "perplexity"): 6.42})
    assert exact[0].differing_settings == {}
    nm = compare_run(_config(params={"pattern": "2:4"}), {("wikitext2-ppl", "perplexity"): 11.0})
    assert [c.reference.value for c in nm] == [11.02]
    assert compare_run(_config(sparsity=0.6), {("wikitext2-ppl", "perplexity"): 6.5}) == []
    assert compare_run({**_config(), "model": "builtin:smollm2-135m-instruct"}, {("wikitext2-ppl", "perplexity"): 6.5}) == []


def test_think_rows_need_the_think_paradigm_and_accept_a_greedy_exact_match():
    model = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    config = {"model": model, "paradigm": "think", "tasks": [{"name": "math500"}]}
    got = compare_run(config, {("math500", "exact_match"): 0.80})
    assert got[0].verdict == "off by -4.6 %"
    assert compare_run({**config, "paradigm": "instruct"}, {("math500", "exact_match"): 0.80}) == []


def _seed(config: dict, value: float) -> int:
    job, _ = queue.submit(validate_config(config))
    claimed = queue.claim_next("test-worker")
    result = RunResult(scores=[ScoreRecord("wikitext2-ppl", "perplexity", value, None, False, True, "k")], samples=[],
                       efficiency={}, prune_report={}, manifest={})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


def test_leaderboard_and_run_detail_show_the_verdict():
    reproduced = _seed(_config(), 6.5)
    off = _seed(_config(method="magnitude"), 20.0)
    other = _seed(_config(method="wanda", sparsity=0.3), 6.0)
    frame = board.board_view().board.frame.set_index("job_id")
    assert frame.loc[reproduced, "reference"] == "wikitext2-ppl: reproduced"
    assert frame.loc[off, "reference"] == "wikitext2-ppl: off by +34.3 %"
    assert frame.loc[other, "reference"] == ""
    detail = board.run_detail(off).summary
    assert "Published reference (off by +34.3 %)" in detail.replace("\\", "") and "Wanda" in detail


def test_cli_lists_the_table_as_json():
    done = subprocess.run([sys.executable, "-m", "jobs", "references", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["references"]
    assert len(rows) == len(references()) >= 10
    assert {"paper", "table", "model", "method", "sparsity", "calibration", "task", "metric", "value",
            "tolerance", "source"} <= set(rows[0])
