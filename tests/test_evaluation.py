"""`backend.evaluation.harness.evaluate` end to end on the tiny random Llama (and, marked slow, on SmolLM2)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from backend.config import EvaluationConfig, TaskConfig
from backend.evaluation.harness import THINK_BUDGET_FACTOR, EvalOutput, evaluate
from backend.events import Cancelled
from backend.result import SampleRecord
from backend.tasks import get_task

SYNTHETIC = ["synthetic-arith", "synthetic-mc"]


@pytest.fixture(scope="module")
def tiny():
    from backend.models.loading import load_model

    return load_model("builtin:tiny-llama")


class Recorder:
    """Collects progress calls and samples; can raise Cancelled at the n-th progress call."""

    def __init__(self, cancel_at: int | None = None):
        self.progress_calls: list[tuple[float, str]] = []
        self.samples: list[SampleRecord] = []
        self.cancel_at = cancel_at

    def progress(self, fraction: float, text: str) -> None:
        self.progress_calls.append((fraction, text))
        if self.cancel_at is not None and len(self.progress_calls) >= self.cancel_at:
            raise Cancelled("stop")

    def on_sample(self, sample: SampleRecord) -> None:
        self.samples.append(sample)


class ForwardCounter:
    """Counts model forward calls and the batch rows they process."""

    def __init__(self, model):
        self.calls = 0
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        self.calls += 1
        self.rows += int(ids.shape[0])

    def close(self) -> None:
        self.handle.remove()


def run(loaded, tasks, data_dir: Path, workdir: Path, recorder: Recorder | None = None, *,
        batch_size: int = 2, completed=(), paradigm: str = "instruct", seed: int | None = None) -> EvalOutput:
    recorder = recorder or Recorder()
    return evaluate(
        loaded.model, loaded.tokenizer, tasks, EvaluationConfig(batch_size=batch_size),
        paradigm=paradigm, dtype=loaded.dtype, data_dir=data_dir, workdir=workdir,
        progress=recorder.progress, on_sample=recorder.on_sample, completed=completed, seed=seed,
    )


def task_configs(names, limit=4, max_new_tokens=6, num_fewshot=0):
    return [TaskConfig(name=n, limit=limit, num_fewshot=num_fewshot,
                       generation={"max_new_tokens": max_new_tokens}) for n in names]


def scores_by_key(output: EvalOutput) -> dict[tuple[str, str], tuple]:
    return {(s.task, s.metric): (s.value, s.stderr, s.primary, s.comparability_key) for s in output.scores}


def test_synthetic_tasks_end_to_end(tiny, tmp_path):
    recorder = Recorder()
    counter = ForwardCounter(tiny.model)
    try:
        output = run(tiny, task_configs(SYNTHETIC, limit=5), tmp_path / "data", tmp_path / "work", recorder)
    finally:
        counter.close()

    # one sample per document, streamed once each, returned in task order then doc order
    assert [(s.task, s.doc_id) for s in output.samples] == [(t, i) for t in SYNTHETIC for i in range(5)]
    assert sorted(s.key for s in recorder.samples) == sorted(s.key for s in output.samples)

    # every metric of every task, exactly one primary per task
    keys = {(s.task, s.metric) for s in output.scores}
    assert keys == {("synthetic-arith", "exact_match"), ("synthetic-mc", "acc")}
    assert all(s.primary and s.higher_is_better for s in output.scores)
    for score in output.scores:
        values = [s.metrics[score.metric] for s in output.samples if s.task == score.task]
        assert score.value == pytest.approx(sum(values) / len(values))
        assert len(score.comparability_key) == 16

    mc = [s for s in output.samples if s.task == "synthetic-mc"]
    assert all(s.prompt and s.output.count("\n") == 1 and "*" in s.output for s in mc)
    assert all(s.extracted in ("0", "1") and s.gold in ("0", "1") for s in mc)
    assert all(s.correct == (s.extracted == s.gold) == bool(s.metrics["acc"]) for s in mc)
    assert all(s.prompt_tokens > 0 and s.output_tokens > 0 for s in mc)
    arith = [s for s in output.samples if s.task == "synthetic-arith"]
    assert all(s.prompt.startswith("<|im_start|>") and "Answer with the number only." in s.prompt for s in arith)
    assert all(s.prompt.endswith("<|im_start|>assistant\n") for s in arith)
    assert all(s.gold.isdigit() for s in arith)
    # token counts re-tokenize the text (random bytes decode to 3-byte replacement characters)
    count = lambda text: len(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert all(s.output_tokens == count(s.output) and s.prompt_tokens == count(s.prompt) for s in arith)

    # progress: once before every model batch (generation: every decoding step), fractions rising
    fractions = [f for f, _ in recorder.progress_calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    batch_calls = [text for _, text in recorder.progress_calls if "requests" in text]
    ll_batches = 5  # 10 requests (2 choices x 5 docs) in batches of 2
    gen_batches = 3  # 5 prompts in batches of 2
    assert len(batch_calls) >= ll_batches + gen_batches
    assert counter.calls >= len(batch_calls)
    assert any(t.startswith("synthetic-mc: ") and t.endswith("/10 requests") for t in batch_calls)
    assert any(t.startswith("synthetic-arith: ") and t.endswith("/5 requests") for t in batch_calls)

    manifest = output.task_manifest["synthetic-mc"]
    assert manifest["docs"] == 5 and manifest["evaluated"] == 5 and manifest["resumed"] == 0
    assert manifest["lm_eval_task_version"] == 1.0 and manifest["chat_template"] is False
    assert set(manifest["dataset_files"]) == {"test"} and len(manifest["task_config_sha256"]) == 64
    assert output.task_manifest["synthetic-arith"]["generation"] == {
        "until": get_task("synthetic-arith").build(tmp_path, tmp_path / "x")["generation_kwargs"]["until"],
        "max_gen_toks": 6, "do_sample": False,
    }
    assert output.lm_eval_version.startswith("0.4")


def test_resume_skips_completed_samples_and_gives_identical_scores(tiny, tmp_path):
    tasks = task_configs(SYNTHETIC, limit=5)
    full_counter = ForwardCounter(tiny.model)
    try:
        full = run(tiny, tasks, tmp_path / "data", tmp_path / "a")
    finally:
        full_counter.close()

    done = [s for s in full.samples if s.doc_id < 3]  # docs 0-2 of both tasks survived a crash
    recorder = Recorder()
    resumed_counter = ForwardCounter(tiny.model)
    try:
        resumed = run(tiny, tasks, tmp_path / "data", tmp_path / "b", recorder, completed=done)
    finally:
        resumed_counter.close()

    assert sorted(s.key for s in recorder.samples) == [(t, i) for t in SYNTHETIC for i in (3, 4)]
    assert resumed_counter.rows < full_counter.rows
    assert [s.key for s in resumed.samples] == [s.key for s in full.samples]
    assert [s.metrics for s in resumed.samples] == [s.metrics for s in full.samples]
    assert scores_by_key(resumed) == scores_by_key(full)
    assert resumed.task_manifest["synthetic-mc"]["resumed"] == 3
    assert resumed.task_manifest["synthetic-mc"]["evaluated"] == 2

    # everything completed: no model call at all, same scores
    idle_counter = ForwardCounter(tiny.model)
    try:
        again = run(tiny, tasks, tmp_path / "data", tmp_path / "c", completed=full.samples)
    finally:
        idle_counter.close()
    assert idle_counter.calls == 0
    assert scores_by_key(again) == scores_by_key(full)


def test_cancelled_from_progress_propagates(tiny, tmp_path):
    recorder = Recorder(cancel_at=3)  # the 'building' call, then the first two batches
    with pytest.raises(Cancelled):
        run(tiny, task_configs(["synthetic-mc"], limit=5), tmp_path / "data", tmp_path / "work", recorder)
    assert len(recorder.progress_calls) == 3
    assert recorder.samples == []


def test_comparability_key_tracks_evaluation_settings(tiny, tmp_path):
    def key(tasks, **kwargs):
        out = run(tiny, tasks, tmp_path / "data", tmp_path / f"w{time.monotonic_ns()}", **kwargs)
        return {s.task: s.comparability_key for s in out.scores}

    base = key(task_configs(SYNTHETIC, limit=2))
    assert key(task_configs(SYNTHETIC, limit=2), batch_size=1) == base
    assert key(task_configs(SYNTHETIC, limit=3)) != base
    changed_budget = key(task_configs(SYNTHETIC, limit=2, max_new_tokens=5))
    assert changed_budget["synthetic-mc"] == base["synthetic-mc"]  # generation does not touch log-likelihood
    assert changed_budget["synthetic-arith"] != base["synthetic-arith"]
    think = key(task_configs(SYNTHETIC, limit=2), paradigm="think")
    assert think["synthetic-mc"] == base["synthetic-mc"] and think["synthetic-arith"] != base["synthetic-arith"]


def test_think_paradigm_widens_the_default_budget_and_strips_reasoning(tiny, tmp_path):
    from backend.evaluation.harness import _with_reasoning_strip
    from backend.evaluation.scoring import reasoning_filter

    tasks = [TaskConfig(name="synthetic-arith", limit=1)]
    output = run(tiny, tasks, tmp_path / "data", tmp_path / "work", paradigm="think")
    generation = output.task_manifest["synthetic-arith"]["generation"]
    assert generation["max_gen_toks"] == get_task("synthetic-arith").default_max_new_tokens * THINK_BUDGET_FACTOR
    assert set(output.samples[0].metrics) == {"exact_match"}

    filters = [{"name": "strict-match", "filter": [{"function": "take_first"}]}]
    stripped = _with_reasoning_strip(filters)
    assert stripped[0]["name"] == "strict-match"
    assert stripped[0]["filter"][0] == {"function": "custom", "filter_fn": reasoning_filter}
    assert stripped[0]["filter"][1:] == filters[0]["filter"]


def test_fewshot_and_seed_are_applied(tiny, tmp_path):
    tasks = task_configs(["synthetic-mc"], limit=2, num_fewshot=2)
    a = run(tiny, tasks, tmp_path / "data", tmp_path / "a", seed=7)
    b = run(tiny, tasks, tmp_path / "data", tmp_path / "b", seed=7)
    assert [s.prompt for s in a.samples] == [s.prompt for s in b.samples]
    assert all(s.prompt.count("\n\n") == 2 for s in a.samples)  # two solved examples before the question
    from backend.tasks.synthetic import generate_mc_rows

    rows = generate_mc_rows()
    assert all(s.prompt.count(rows[s.doc_id]["question"]) == 1 for s in a.samples)  # never its own example
    assert a.task_manifest["synthetic-mc"]["seeds"] == {"random": 7, "numpy": 7, "torch": 7, "fewshot": 7}
    assert a.task_manifest["synthetic-mc"]["key_fields"]["seeds"] is not None


def test_real_data_tasks_end_to_end(tiny, shared_data, tmp_path):
    names = ["gsm8k", "piqa", "winogrande"]
    recorder = Recorder()
    output = run(tiny, task_configs(names, limit=3, max_new_tokens=4), shared_data, tmp_path, recorder)
    assert {(s.task, s.metric, s.primary) for s in output.scores} == {
        ("gsm8k", "exact_match,strict-match", False), ("gsm8k", "exact_match,flexible-extract", True),
        ("piqa", "acc", True), ("piqa", "acc_norm", False), ("winogrande", "acc", True),
    }
    assert len(recorder.samples) == len(output.samples) == 9
    by_task = {t: [s for s in output.samples if s.task == t] for t in names}
    assert by_task["piqa"][0].prompt.startswith("Question: ") and by_task["piqa"][0].prompt.endswith("\nAnswer:")
    wino = by_task["winogrande"][0]
    assert wino.prompt.count("\n") == 1  # one context per option
    gsm = by_task["gsm8k"][0]
    assert gsm.gold == "18" and set(gsm.metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    manifest = output.task_manifest["piqa"]
    assert set(manifest["data_files"]) == {"piqa/dev.jsonl", "piqa/dev-labels.lst"}
    assert manifest["docs_available"] == 1838


def test_scores_equal_a_plain_lm_eval_run(tiny, shared_data, tmp_path):
    """Same batching and order as lm-eval's own `simple_evaluate`: identical per-sample results."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ours = run(tiny, [TaskConfig(name="piqa", limit=5)], shared_data, tmp_path / "ours", batch_size=4)
    config = get_task("piqa").build(shared_data, tmp_path / "plain")
    lm = HFLM(pretrained=tiny.model, tokenizer=tiny.tokenizer, batch_size=4)
    plain = lm_eval.simple_evaluate(model=lm, tasks=[config], task_manager=TaskManager(include_defaults=False),
                                    limit=5, log_samples=True, bootstrap_iters=0)
    results = plain["results"]["piqa"]
    expected = {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"]}
    assert {s.metric: s.value for s in ours.scores} == expected
    plain_lls = {s["doc_id"]: [f"{r[0]:.4f}" for r in s["filtered_resps"]] for s in plain["samples"]["piqa"]}
    for sample in ours.samples:
        lls = [re.search(r"\] (-?\d+\.\d{4}) ", line).group(1) for line in sample.output.splitlines()]
        assert lls == plain_lls[sample.doc_id]


def test_missing_data_fails_before_any_model_call(tiny, tmp_path):
    from backend.tasks.base import TaskDataMissing

    counter = ForwardCounter(tiny.model)
    try:
        with pytest.raises(TaskDataMissing, match="piqa needs piqa/dev.jsonl"):
            run(tiny, task_configs(["synthetic-mc", "piqa"]), tmp_path / "empty", tmp_path / "work")
    finally:
        counter.close()
    assert counter.calls == 0


@pytest.mark.slow
def test_smollm2_beats_chance_on_synthetic_mc_and_piqa(smollm2, shared_data, tmp_path):
    tasks = [TaskConfig(name="synthetic-mc"), TaskConfig(name="piqa", limit=200)]
    started = time.perf_counter()
    output = run(smollm2, tasks, shared_data, tmp_path, batch_size=8)
    seconds = time.perf_counter() - started
    scores = {(s.task, s.metric): s.value for s in output.scores}
    print(f"SmolLM2 synthetic-mc acc={scores[('synthetic-mc', 'acc')]:.4f} "
          f"piqa acc@200={scores[('piqa', 'acc')]:.4f} acc_norm={scores[('piqa', 'acc_norm')]:.4f} "
          f"in {seconds:.0f}s")
    assert scores[("synthetic-mc", "acc")] >= 0.75  # chance is 0.5
    assert scores[("piqa", "acc")] >= 0.60
