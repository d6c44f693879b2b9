"""WikiText-2 perplexity: the protocol equals a hand computation; batching, progress, resume, config."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from backend.config import ConfigError, TaskConfig, validate_config
from backend.models.loading import load_model
from backend.tasks import get_task
from backend.tasks.wikitext2_ppl import DATA_FILE, run

LINES = [f" = Section {i} = " if i % 7 == 0 else f" The item {i} is described , with @-@ marks {i * 3} ." for i in range(60)]


@pytest.fixture(scope="module")
def tiny():
    return load_model("builtin:tiny-llama")


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / DATA_FILE).write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return tmp_path


def _run(tiny, data_dir, *, window=32, limit=3, batch_size=2, completed=(), progress=None, on_sample=None):
    tc = TaskConfig(name="wikitext2-ppl", window=window, limit=limit)
    return run(tiny.model, tiny.tokenizer, tc, data_dir=data_dir, dtype=tiny.dtype, batch_size=batch_size,
               progress=progress or (lambda f, t: None), on_sample=on_sample or (lambda s: None),
               completed=completed)


def test_perplexity_equals_hand_computed_exp_mean_nll(tiny, data_dir):
    texts = []
    scores, samples, manifest = _run(tiny, data_dir, on_sample=texts.append)

    ids = tiny.tokenizer("\n\n".join(LINES), add_special_tokens=False).input_ids
    total, count = 0.0, 0
    for i in range(3):
        window = torch.tensor([ids[i * 32:(i + 1) * 32]])
        with torch.no_grad():
            logits = tiny.model(window).logits[0]
        total += torch.nn.functional.cross_entropy(logits[:-1], window[0, 1:], reduction="sum").item()
        count += 31
    expected = math.exp(total / count)

    primary = next(s for s in scores if s.primary)
    assert primary.metric == "perplexity" and primary.higher_is_better is False
    assert primary.value == pytest.approx(expected, rel=1e-5)
    assert [s.doc_id for s in samples] == [0, 1, 2] and len(texts) == 3
    assert all(s.prompt_tokens == 32 and s.metrics["tokens"] == 31 for s in samples)
    assert manifest["predicted_tokens"] == 93 and manifest["window"] == 32 and manifest["docs"] == 3
    assert "non-overlapping windows of 32 tokens" in manifest["protocol"]


def test_batching_does_not_change_the_result_and_reports_each_batch(tiny, data_dir):
    seen = []
    one = _run(tiny, data_dir, limit=5, batch_size=1)[0][0].value
    two = _run(tiny, data_dir, limit=5, batch_size=2, progress=lambda f, t: seen.append(t))[0][0].value
    assert two == pytest.approx(one, rel=1e-6)
    assert sum("windows" in t and "/5" in t for t in seen) == 3  # batches of 2, 2, 1


def test_resume_reuses_completed_windows(tiny, data_dir):
    scores, samples, _ = _run(tiny, data_dir, limit=4)
    model = copy.deepcopy(tiny)
    calls = []
    model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    again, _, manifest = _run(model, data_dir, limit=4, completed=samples[:3])
    assert len(calls) == 1 and manifest["resumed"] == 3 and manifest["evaluated"] == 1
    assert again[0].value == pytest.approx(scores[0].value, rel=1e-9)
    assert again[0].comparability_key == scores[0].comparability_key


def test_spec_is_kept_apart_from_accuracy():
    spec = get_task("wikitext2-ppl")
    assert spec.category == "perplexity" and spec.higher_is_better is False and spec.runner is not None
    assert spec.data_files == ("wikitext2/test.txt",)


def test_window_is_for_perplexity_tasks_only():
    with pytest.raises(ConfigError, match="window applies to perplexity tasks only"):
        validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc", "window": 64}]})
    config = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "wikitext2-ppl", "window": 64}]})
    assert config.tasks[0].window == 64


def test_evaluate_runs_perplexity_beside_lm_eval_tasks(tiny, data_dir, tmp_path):
    from backend.config import EvaluationConfig
    from backend.evaluation.harness import evaluate

    fractions = []
    out = evaluate(tiny.model, tiny.tokenizer,
                   [TaskConfig(name="synthetic-mc", limit=4), TaskConfig(name="wikitext2-ppl", window=32, limit=2)],
                   EvaluationConfig(batch_size=4), paradigm="instruct", dtype=tiny.dtype, data_dir=data_dir,
                   workdir=tmp_path / "work", progress=lambda f, t: fractions.append(f), on_sample=lambda s: None)
    assert {s.task for s in out.scores} == {"synthetic-mc", "wikitext2-ppl"}
    assert set(out.task_manifest) == {"synthetic-mc", "wikitext2-ppl"}
    assert len([s for s in out.samples if s.task == "wikitext2-ppl"]) == 2
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.slow
def test_smollm2_wikitext2_perplexity(smollm2, shared_data):
    scores, samples, manifest = run(
        smollm2.model, smollm2.tokenizer, TaskConfig(name="wikitext2-ppl", limit=16), data_dir=shared_data,
        dtype=smollm2.dtype, batch_size=4, progress=lambda f, t: None, on_sample=lambda s: None)
    ppl = scores[0].value
    assert len(samples) == 16 and manifest["window"] == 512
    assert 15 < ppl < 40, ppl
