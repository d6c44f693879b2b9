"""Task-aligned and self-generated calibration, the self-generated cache, and leakage flags."""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from backend.calibration.build import (
    build_calibration,
    generate_answer,
    leak_check,
    pack_windows,
    render_task_aligned,
    self_generated_key,
)
from backend.config import CalibrationConfig, ConfigError, validate_config
from backend.models.loading import load_model

ROWS = [
    {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
     "answer": f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
    for i in range(30)
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("builtin:tiny-llama")


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    for split in ("train", "test"):
        (tmp_path / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return tmp_path


@pytest.fixture
def calib_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNEBOARD_CACHE_DIR", str(cache))
    return cache / "calibration"


def _aligned(**kw):
    return CalibrationConfig(source="task-aligned", task="gsm8k", **{"num_samples": 3, "seq_len": 64, **kw})


def _selfgen(**kw):
    return CalibrationConfig(source="self-generated", task="gsm8k",
                             **{"num_samples": 2, "seq_len": 64, "max_new_tokens": 6, **kw})


class _CountingGenerate:
    def __init__(self, model):
        self.calls = 0
        self._generate = model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._generate(*args, **kwargs)


# --- task-aligned --------------------------------------------------------------------------------


def test_task_aligned_renders_the_chat_template(tiny):
    text = render_task_aligned(tiny.tokenizer, ROWS[3], "gsm8k")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n")
    assert "<|im_start|>user\nQuestion: Tom has 3 apples" in text
    assert "<|im_start|>assistant\nTom has 3 + 5 = 8 apples.\nThe answer is 8.<|im_end|>" in text
    assert "<<" not in text and "####" not in text
    think = render_task_aligned(tiny.tokenizer, ROWS[3], "gsm8k", "think")
    assert "<|im_start|>assistant\n<think>\nTom has 3 + 5 = 8 apples.\n</think>\n\nThe answer is 8." in think


def test_task_aligned_is_deterministic_per_seed(tiny, data_dir):
    first = build_calibration(_aligned(seed=1), tiny.tokenizer, data_dir)
    again = build_calibration(_aligned(seed=1), tiny.tokenizer, data_dir)
    other = build_calibration(_aligned(seed=2), tiny.tokenizer, data_dir)
    assert first.tensor.shape == (3, 64) and first.sha256 == again.sha256 and first.sha256 != other.sha256
    assert first.details["rows"] == again.details["rows"] != other.details["rows"]
    texts = [render_task_aligned(tiny.tokenizer, ROWS[r], "gsm8k") for r in first.details["rows"]]
    assert torch.equal(first.tensor, pack_windows(tiny.tokenizer, texts, 3, 64))
    assert first.source.startswith("task-aligned:gsm8k/train")


def test_task_aligned_with_real_gsm8k_train(tiny, shared_data):
    calib = build_calibration(_aligned(num_samples=2, seq_len=128), tiny.tokenizer, shared_data)
    assert calib.tensor.shape == (2, 128) and calib.details["text_sha256"]


@pytest.mark.parametrize("patch, message", [
    ({"source": "task-aligned"}, "needs a task, one of: gsm8k"),
    ({"source": "self-generated", "task": "nope"}, "needs a task, one of: gsm8k"),
    ({"source": "synthetic", "task": "gsm8k"}, "takes no task"),
    ({"source": "text", "path": "x.txt", "max_new_tokens": 8}, "apply to source 'self-generated' only"),
])
def test_bad_source_settings(patch, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"], "calibration": patch})
    assert str(info.value).startswith("calibration")


def test_hub_dataset_names_are_rejected_with_a_hint(tiny, tmp_path):
    cfg = CalibrationConfig(source="text", path="allenai/c4")
    with pytest.raises(ValueError, match="hub datasets are not fetched"):
        build_calibration(cfg, tiny.tokenizer, tmp_path)


# --- self-generated --------------------------------------------------------------------------------


def test_self_generated_is_cached_and_reused(tiny, data_dir, calib_cache):
    model = copy.deepcopy(tiny.model)
    counter = _CountingGenerate(model)
    progress = []
    first = build_calibration(_selfgen(), tiny.tokenizer, data_dir, model=model, fingerprint=tiny.fingerprint,
                              progress=lambda f, t: progress.append(t))
    assert counter.calls == len(first.details["rows"]) > 0
    assert any("generating calibration answer 1" in t for t in progress)
    assert first.details["reused"] is False and first.tensor.shape == (2, 64)
    stored = json.loads((calib_cache / f"{first.details['cache_key']}.json").read_text())
    assert stored["rows"] == first.details["rows"] and stored["text_sha256"] == first.details["text_sha256"]

    counter.calls = 0
    second = build_calibration(_selfgen(), tiny.tokenizer, data_dir, model=model, fingerprint=tiny.fingerprint)
    assert counter.calls == 0
    assert second.details["reused"] is True and second.sha256 == first.sha256
    assert second.details["cache_key"] == first.details["cache_key"]
    assert second.details["text_sha256"] == first.details["text_sha256"]

    # one prompt regenerated alone reproduces the stored text
    row = stored["rows"][-1]
    prompt = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question: " + ROWS[row]["question"] + "\nSolve the problem step by step, "
          'then finish with "The answer is" followed by the final number.'}],
        tokenize=False, add_generation_prompt=True)
    assert generate_answer(model, tiny.tokenizer, prompt, _selfgen(), row) == stored["answers"][-1]


def test_sampled_self_generation_is_reproducible_per_prompt(tiny, data_dir, calib_cache):
    cfg = _selfgen(temperature=0.9, top_p=0.95, seed=5)
    first = build_calibration(cfg, tiny.tokenizer, data_dir, model=tiny.model, fingerprint=tiny.fingerprint)
    stored = json.loads((calib_cache / f"{first.details['cache_key']}.json").read_text())
    torch.manual_seed(999)  # the global stream must not matter
    from backend.calibration.build import _prompt_text

    row = stored["rows"][0]
    again = generate_answer(tiny.model, tiny.tokenizer, _prompt_text(tiny.tokenizer, "gsm8k", ROWS[row]), cfg, row)
    assert again == stored["answers"][0]


def test_cache_key_changes_with_every_keyed_setting():
    base = _selfgen()
    key = self_generated_key(base, "fp", "data", "instruct", "tmpl")[0]
    variants = [
        self_generated_key(base, "fp2", "data", "instruct", "tmpl"),
        self_generated_key(base, "fp", "data2", "instruct", "tmpl"),
        self_generated_key(base, "fp", "data", "think", "tmpl"),
        self_generated_key(base, "fp", "data", "instruct", "tmpl2"),
        *[self_generated_key(_selfgen(**change), "fp", "data", "instruct", "tmpl") for change in (
            {"num_samples": 3}, {"seq_len": 65}, {"seed": 1}, {"max_new_tokens": 7},
            {"temperature": 0.5}, {"temperature": 0.5, "top_p": 0.9}, {"split": "test"},
        )],
    ]
    keys = [k for k, _ in variants]
    assert key not in keys and len(set(keys)) == len(keys)
    assert self_generated_key(_selfgen(), "fp", "data", "instruct", "tmpl")[0] == key


def test_self_generated_needs_the_model(tiny, data_dir):
    with pytest.raises(ValueError, match="needs the dense model"):
        build_calibration(_selfgen(), tiny.tokenizer, data_dir)


# --- leakage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, tasks, leak", [
    (CalibrationConfig(source="text", path="wikitext2/test.txt"), ["wikitext2-ppl"], True),
    (CalibrationConfig(source="text", path="wikitext2/valid.txt"), ["wikitext2-ppl"], False),
    (CalibrationConfig(source="text", path="gsm8k/test.jsonl"), ["gsm8k"], True),
    (CalibrationConfig(source="task-aligned", task="gsm8k", split="test"), ["gsm8k", "synthetic-mc"], True),
    (CalibrationConfig(source="self-generated", task="gsm8k", split="test"), ["gsm8k"], True),
    (CalibrationConfig(source="task-aligned", task="gsm8k"), ["gsm8k"], False),
    (CalibrationConfig(source="task-aligned", task="gsm8k", split="test"), ["synthetic-mc"], False),
    (CalibrationConfig(), ["wikitext2-ppl", "gsm8k"], False),
])
def test_leak_check(tmp_path, cfg, tasks, leak):
    flagged, reason = leak_check(cfg, tasks, tmp_path)
    assert flagged is leak
    assert (reason is not None) is leak
    if leak:
        assert "evaluation data of task" in reason


def test_pipeline_flags_a_leaking_run(shared_data):
    from backend import pipeline
    from backend.events import ignore_events

    config = validate_config({
        "model": "builtin:tiny-llama", "pruning": {"method": "shortgpt", "sparsity": 0.25},
        "calibration": {"source": "text", "path": "wikitext2/test.txt", "num_samples": 2, "seq_len": 32},
        "tasks": [{"name": "wikitext2-ppl", "limit": 2, "window": 32}],
    })
    result = pipeline.run(config, ignore_events)
    assert result.manifest["calibration_leak"] is True
    assert "wikitext2-ppl" in result.manifest["calibration_leak_reason"]
    ppl = next(s for s in result.scores if s.primary)
    assert ppl.task == "wikitext2-ppl" and ppl.higher_is_better is False and ppl.value > 1
    assert result.manifest["tasks"]["wikitext2-ppl"]["protocol"]


# --- SmolLM2 ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_self_generated_calibration_is_stored_and_reused(smollm2, shared_data, calib_cache):
    cfg = CalibrationConfig(source="self-generated", task="gsm8k", num_samples=2, seq_len=128, max_new_tokens=48)
    model = smollm2.model
    counter = _CountingGenerate(model)
    try:
        started = time.perf_counter()
        first = build_calibration(cfg, smollm2.tokenizer, shared_data, model=model, fingerprint=smollm2.fingerprint)
        seconds = time.perf_counter() - started
        generated = counter.calls
        counter.calls = 0
        second = build_calibration(cfg, smollm2.tokenizer, shared_data, model=model, fingerprint=smollm2.fingerprint)
    finally:
        del model.generate  # back to the class's method
    print(f"self-generated: {generated} answers in {seconds:.1f}s")
    assert generated > 0 and counter.calls == 0
    assert second.sha256 == first.sha256 and second.details["reused"]
    stored = json.loads((calib_cache / f"{first.details['cache_key']}.json").read_text())
    assert all(answer.strip() for answer in stored["answers"])
    assert first.tensor.shape == (2, 128)


def test_pipeline_reuses_self_generated_calibration(data_dir, calib_cache, monkeypatch):
    import backend.calibration.build
    from backend import pipeline
    from backend.events import Progress

    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data_dir))
    calls = []
    real = backend.calibration.build.generate_answer
    monkeypatch.setattr(backend.calibration.build, "generate_answer", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = validate_config({
        "model": "builtin:tiny-llama", "pruning": {"method": "shortgpt", "sparsity": 0.25},
        "calibration": {"source": "self-generated", "task": "gsm8k", "num_samples": 2, "seq_len": 64,
                        "max_new_tokens": 4},
        "tasks": [{"name": "synthetic-mc", "limit": 2}],
    })
    events = []
    first = pipeline.run(config, events.append)
    generated = len(calls)
    assert generated > 0
    assert any(isinstance(e, Progress) and e.stage == "calibrate" and "generating" in e.text for e in events)
    second = pipeline.run(config, lambda e: None)
    assert len(calls) == generated  # nothing generated the second time
    one, two = first.manifest["calibration"], second.manifest["calibration"]
    assert one["cache_key"] == two["cache_key"] and one["text_sha256"] == two["text_sha256"]
    assert one["sha256"] == two["sha256"] and one["reused"] is False and two["reused"] is True
    assert first.manifest["calibration_leak"] is False
    assert first.prune_report["removed_layers"] == second.prune_report["removed_layers"]
