"""Reasoning tasks (AIME, AMC, MATH-500, GPQA, JEEBench), answer checking, think paradigm, test-time scaling."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from backend.evaluation import scoring
from backend.config import ConfigError, EvaluationConfig, TaskConfig, config_hash, validate_config
from backend.tasks import get_task
from backend.tasks.base import TaskDataMissing

MATH_TASKS = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500}
REASONING_TASKS = [*MATH_TASKS, "gpqa-diamond", "jeebench"]
GPQA_ROWS = [
    {"question": "What is 2 + 2?", "correct_answer": "4", "incorrect_answers": ["3", "5", "22"]},
    {"Question": "Colour of a clear daytime sky?", "Correct Answer": "blue", "Incorrect Answer 1": "red",
     "Incorrect Answer 2": "green", "Incorrect Answer 3": "black", "Record ID": "rec2"},
    {"question": "Lightest element?", "correct_answer": "hydrogen",
     "incorrect_answers": ["helium", "lithium", "carbon"]},
]


def _lm_eval_task(config: dict):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load([config])["tasks"][config["task"]]


@pytest.fixture
def gpqa_dir(tmp_path) -> Path:
    """A bring-your-own GPQA file (three made-up rows in both accepted schemas)."""
    data = tmp_path / "byod"
    (data / "gpqa").mkdir(parents=True)
    (data / "gpqa" / "gpqa_diamond.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GPQA_ROWS))
    return data


# --- answer checking --------------------------------------------------------------------------------


def test_boxed_fraction_equals_decimal_gold():
    text = r"So the probability is $\boxed{\frac{1}{2}}$."
    assert scoring.extract_boxed(text) == r"\frac{1}{2}"
    assert scoring.math_equal(scoring.extract_math_answer(text), "0.5")
    assert scoring.extract_boxed(r"\boxed{\frac{a}{\sqrt{2}}} then \boxed{7}") == "7"  # the last one
    assert scoring.extract_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}") == r"\left( 3, \frac{\pi}{2} \right)"
    assert scoring.math_equal(r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)")
    assert scoring.math_equal("1,234", "1234")
    assert not scoring.math_equal("0.49", "0.5")
    assert not scoring.math_equal(None, "0.5")
    assert scoring.extract_math_answer("The answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert scoring.extract_math_answer("so we get 12 and then 15") == "15"
    assert scoring.extract_math_answer("no digits at all") is None


def test_math_verify_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(scoring.math_equal(r"\frac{1}{2}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]


@pytest.mark.parametrize("text,letter", [
    ("The answer is (C)", "C"),
    ("**B**", "B"),
    ("Answer: A", "A"),
    (r"Therefore \boxed{D}.", "D"),
    ("I first thought (B), but the answer is A because of X.", "A"),
    ("Options B and then finally D", "D"),
    ("the answer is: option c", "C"),
    ("no letter here at all", None),
])
def test_letter_extraction(text, letter):
    assert scoring.extract_choice_letter(text) == letter


@pytest.mark.parametrize("text,letters", [
    (r"\boxed{BD}", "BD"),
    (r"\boxed{A, C}", "AC"),
    ("The answer is (A) and (C)", "AC"),
    ("Answer: D, B", "BD"),
    (r"so \boxed{(B)(D)}", "BD"),
])
def test_multiple_answer_letters(text, letters):
    assert scoring.extract_choice_letters(text) == letters


def test_jeebench_scoring_per_type():
    assert scoring.jee_score("ABD", "ABD", "MCQ(multiple)") == {"exact_match": 1.0, "partial_credit": 1.0}
    partial = scoring.jee_score("AB", "ABD", "MCQ(multiple)")
    assert partial["exact_match"] == 0.0 and partial["partial_credit"] == pytest.approx(2 / 3)
    assert scoring.jee_score("AE", "ABD", "MCQ(multiple)") == {"exact_match": 0.0, "partial_credit": 0.0}
    assert scoring.jee_score("ABCD", "ABD", "MCQ(multiple)")["partial_credit"] == 0.0  # a wrong option
    assert scoring.jee_score("B", "B", "MCQ")["exact_match"] == 1.0
    assert scoring.jee_score("9", "9", "Integer")["exact_match"] == 1.0
    assert scoring.jee_score("9.5", "9", "Integer")["exact_match"] == 0.0
    assert scoring.jee_score("0.748", "0.75", "Numeric")["exact_match"] == 1.0
    assert scoring.jee_score("0.77", "0.75", "Numeric")["exact_match"] == 0.0
    assert scoring.jee_score(None, "B", "MCQ") == {"exact_match": 0.0, "partial_credit": 0.0}
    assert scoring.extract_jee_answer(r"hence \boxed{AC}", "MCQ(multiple)") == "AC"
    assert scoring.extract_jee_answer(r"hence \boxed{\frac{3}{4}}", "Numeric") == "0.75"
    assert scoring.extract_jee_answer(r"hence \boxed{6}", "Integer") == "6"


def test_majority_vote_and_unbiased_pass_at_k():
    assert scoring.majority_vote(["3", "3", "4"]) == "3"
    assert scoring.majority_vote([None, "4", None]) == "4"
    assert scoring.majority_vote([None, None]) is None
    assert scoring.majority_vote(["4", "3"]) == "4"  # ties: the first seen
    assert scoring.majority_vote(["0.5", r"\frac{1}{2}", "2"], same=scoring.math_equal) == "0.5"
    # hand-computed: 1 - C(n-c, k) / C(n, k)
    assert scoring.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert scoring.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    assert scoring.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert scoring.pass_at_k(4, 0, 4) == 0.0
    assert scoring.pass_at_k(3, 2, 2) == 1.0  # every pair holds a correct sample
    with pytest.raises(ValueError):
        scoring.pass_at_k(2, 1, 3)


def test_thinking_split_truncation_stops_and_repetition():
    assert scoring.split_thinking("<think>3 + 4 is 7</think>The answer is 7") == ("3 + 4 is 7", "The answer is 7", False)
    assert scoring.split_thinking("<think>still going") == ("still going", "", True)
    assert scoring.split_thinking("prompt opened it</think> 5") == ("prompt opened it", "5", False)
    assert scoring.split_thinking("[THINK]x[/THINK]y", scoring.think_markers("mistral")) == ("x", "y", False)
    assert scoring.think_markers("llama") == ("<think>", "</think>")
    # stop strings inside the reasoning do not count
    text = "<think>Question: why?<|im_end|></think>It is 4.<|im_end|>Question: more"
    assert scoring.cut_at_stop(text, ["Question:", "<|im_end|>"], "</think>") == "<think>Question: why?<|im_end|></think>It is 4."
    assert scoring.cut_at_stop("<think>Question: x", ["Question:"], "</think>") == "<think>Question: x"
    assert scoring.cut_at_stop("a Question: b", ["Question:"]) == "a "
    assert scoring.repetition_rate("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)
    assert scoring.repetition_rate("one two three") == 0.0
    assert scoring.repetition_rate("the cat sat on the mat today") == 0.0


def test_process_results_store_unparseable_output_as_incorrect_with_reason(shared_data, tmp_path):
    config = get_task("aime24").build(shared_data, tmp_path)
    doc = {"problem": "p", "expected_answer": "73"}
    assert config["process_results"](doc, [[None]]) == {"exact_match": 0.0, "no_answer": 1.0}
    assert config["process_results"](doc, [["73"]]) == {"exact_match": 1.0, "no_answer": 0.0}
    k3 = config["process_results"](doc, [["73", "72", "73"]])
    assert k3 == {"exact_match": 1.0, "no_answer": 0.0, "pass@1": pytest.approx(2 / 3), "pass@3": 1.0, "maj@3": 1.0}
    k4 = config["process_results"](doc, [[None, "72", "72", "73"]])
    assert k4["exact_match"] == 0.0 and k4["no_answer"] == 1.0
    assert k4["pass@4"] == 1.0 and k4["maj@4"] == 0.0 and k4["pass@1"] == 0.25


# --- task definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,rows", sorted({**MATH_TASKS, "jeebench": 450}.items()))
def test_reasoning_task_builds_with_our_filter(name, rows, shared_data, tmp_path):
    spec = get_task(name)
    assert spec.category == "reasoning" and spec.output_type == "generate" and spec.uses_chat_template
    assert spec.primary_metric == "exact_match" and spec.test_time_scaling
    assert spec.default_max_new_tokens >= 512 and spec.gpu_think_max_new_tokens == 32768
    config = spec.build(shared_data, tmp_path / "work")
    # our extractor, explicitly, and no take_first: all k responses reach process_results
    [answer_filter] = config["filter_list"]
    assert [f["function"] for f in answer_filter["filter"]] == ["custom"]
    assert answer_filter["filter"][0]["filter_fn"].__module__ in ("backend.evaluation.scoring", "backend.tasks.jeebench")
    task = _lm_eval_task(config)
    assert len(task.eval_docs) == rows
    doc = task.eval_docs[0]
    assert "\\boxed{}" in task.doc_to_text(doc)
    if name == "math500":
        assert task.doc_to_target(doc) == r"\left( 3, \frac{\pi}{2} \right)"
        filtered = config["filter_list"][0]["filter"][0]["filter_fn"]([[r"so $\boxed{(3, \pi/2)}$"]], [doc])
        assert config["process_results"](doc, filtered)["exact_match"] == 1.0


def test_jeebench_prompts_and_scores_by_type(shared_data, tmp_path):
    from backend.tasks import jeebench

    config = get_task("jeebench").build(shared_data, tmp_path)
    task = _lm_eval_task(config)
    by_type = {}
    for doc in task.eval_docs:
        by_type.setdefault(doc["type"], doc)
    assert set(by_type) == set(jeebench.TYPES)
    multi = by_type["MCQ(multiple)"]
    assert "One or more options" in task.doc_to_text(multi)
    gold = multi["gold"]
    filtered = jeebench.jee_filter([[f"\\boxed{{{gold}}}"], [f"\\boxed{{{gold[0]}}}"]], [multi, multi])
    assert config["process_results"](multi, filtered[0])["exact_match"] == 1.0
    partial = config["process_results"](multi, filtered[1])
    assert partial["exact_match"] == 0.0 and partial["partial_credit"] == pytest.approx(1 / len(gold))
    numeric = by_type["Numeric"]
    assert config["process_results"](numeric, [[numeric["gold"]]])["exact_match"] == 1.0


def test_gpqa_is_bring_your_own_data_with_deterministic_shuffle(gpqa_dir, tmp_path):
    from backend.tasks import gpqa

    spec = get_task("gpqa-diamond")
    with pytest.raises(TaskDataMissing, match="gpqa/gpqa_diamond.jsonl"):
        spec.build(tmp_path / "empty", tmp_path / "w0")
    a = spec.build(gpqa_dir, tmp_path / "a")
    b = spec.build(gpqa_dir, tmp_path / "b")
    file_a = Path(a["dataset_kwargs"]["data_files"]["test"])
    assert file_a.read_bytes() == Path(b["dataset_kwargs"]["data_files"]["test"]).read_bytes()
    task = _lm_eval_task(a)
    docs = task.eval_docs
    assert len(docs) == 3 and docs[1]["id"] == "rec2"
    for doc, row in zip(docs, GPQA_ROWS):
        correct = row.get("correct_answer", row.get("Correct Answer"))
        assert doc["choices"][gpqa.LETTERS.index(doc["answer"])] == correct
        assert sorted(doc["choices"]) == sorted(gpqa.normalize_row(row)["incorrect_answers"] + [correct])
    assert len({d["answer"] for d in (gpqa.shuffle_choices(gpqa.normalize_row(GPQA_ROWS[0]), i)
                                     for i in range(12))}) > 1  # the gold letter moves between rows
    text = task.doc_to_text(docs[0])
    assert "(A) " in text and "(D) " in text and "The answer is (X)" in text
    right = f"Thinking... The answer is ({docs[0]['answer']})"
    assert a["process_results"](docs[0], a["filter_list"][0]["filter"][0]["filter_fn"]([[right]], [docs[0]])[0]) == {
        "exact_match": 1.0, "no_answer": 0.0}


def test_default_budgets_by_paradigm_and_device():
    from backend.evaluation.harness import THINK_BUDGET_FACTOR, default_budget

    spec = get_task("aime24")
    assert default_budget(spec, "instruct", "cpu") == 1024
    assert default_budget(spec, "think", "cpu") == 4096
    assert default_budget(spec, "instruct", "cuda") == 4096
    assert default_budget(spec, "think", "cuda") == 32768
    gsm = get_task("gsm8k")  # no GPU defaults: the CPU ones everywhere
    assert default_budget(gsm, "think", "cuda") == gsm.default_max_new_tokens * THINK_BUDGET_FACTOR


def test_test_time_scaling_config_validation_and_hashes():
    base = {"model": "builtin:tiny-llama", "tasks": [{"name": "aime24", "limit": 2}]}
    plain = validate_config(base)
    same = validate_config({**base, "tasks": [{"name": "aime24", "limit": 2,
                                               "generation": {"num_samples": 1, "extend_thinking": 0}}]})
    assert config_hash(plain) == config_hash(same)  # defaults leave hashes unchanged
    with pytest.raises(ConfigError, match="temperature > 0"):
        validate_config({**base, "tasks": [{"name": "aime24", "generation": {"num_samples": 4}}]})
    with pytest.raises(ConfigError, match="not supported by task 'gsm8k'"):
        validate_config({**base, "tasks": [{"name": "gsm8k", "generation": {"num_samples": 4, "temperature": 0.7}}]})
    with pytest.raises(ConfigError, match="paradigm 'think'"):
        validate_config({**base, "tasks": [{"name": "aime24", "generation": {"thinking_budget": 64}}]})
    ok = validate_config({**base, "paradigm": "think", "model_args": {"think_markers": ["<r>", "</r>"]},
                          "tasks": [{"name": "aime24", "generation": {"num_samples": 4, "temperature": 0.6,
                                                                      "thinking_budget": 64, "extend_thinking": 1}}]})
    assert ok.hf_args().think_markers == ("<r>", "</r>")


# --- generation control -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen3():
    from backend.models.loading import load_model

    return load_model("builtin:tiny-qwen3")


def test_budget_forcing_cuts_thinking_at_n_tokens(tiny_qwen3):
    from backend.evaluation.thinking import ThinkControl, generate_controlled

    tok = tiny_qwen3.tokenizer
    prompt = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end_ids = tok("</think>", add_special_tokens=False)["input_ids"]
    control = ThinkControl(markers=("<think>", "</think>"), stops=("<|im_end|>",), thinking_budget=10)
    new, info = generate_controlled(tiny_qwen3.model, tok, prompt, max_new_tokens=30, control=control,
                                    gen_kwargs={"do_sample": False})
    assert info["thinking_tokens"] == 10 and info["forced"]
    assert new[10:10 + len(end_ids)] == end_ids  # the marker right after N reasoning tokens
    assert len(new) <= 30


class ScriptedModel:
    """Stands in for a causal LM: `generate` appends scripted tokens (one script per call)."""

    def __init__(self, scripts):
        import torch

        self.scripts = list(scripts)
        self.device = torch.device("cpu")
        self.generation_config = type("G", (), {"eos_token_id": 0})()

    def generate(self, input_ids, max_new_tokens, stopping_criteria=None, **kwargs):
        import torch

        new = self.scripts.pop(0)[:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype)], dim=1)


class ByteTokenizer:
    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode())}

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i for i in ids if i).decode(errors="replace")


def test_extend_thinking_replaces_the_end_marker_by_wait():
    from backend.evaluation.thinking import WAIT, ThinkControl, generate_controlled

    tok = ByteTokenizer()
    early = list(b"hmm 5</think>")
    model = ScriptedModel([early, list(b"no, 6</think>"), list(b"It is 6.") + [0]])
    control = ThinkControl(markers=("<think>", "</think>"), stops=("\n\n",), extend_thinking=1)
    new, info = generate_controlled(model, tok, list(b"Q?"), max_new_tokens=100, control=control,
                                    gen_kwargs={})
    text = tok.decode(new)
    assert text == f"hmm 5\n{WAIT}no, 6</think>It is 6."
    assert info["extensions"] == 1 and not info["forced"]
    reasoning, answer, truncated = scoring.split_thinking(text)
    assert reasoning == f"hmm 5\n{WAIT}no, 6" and answer == "It is 6." and not truncated


# --- end to end -----------------------------------------------------------------------------------------


def _pipeline_run(config: dict):
    from backend.pipeline import run

    events = []
    return run(validate_config(config), events.append), events


def test_every_reasoning_task_end_to_end_through_the_pipeline(shared_data, gpqa_dir, monkeypatch):
    # one data directory holding the shared data and the bring-your-own GPQA file
    data = gpqa_dir
    for sub in ("aime", "math500", "jeebench"):
        (data / sub).symlink_to(shared_data / sub)
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    tasks = [{"name": n, "limit": 2, "generation": {"max_new_tokens": 8}} for n in REASONING_TASKS]
    result, _ = _pipeline_run({"model": "builtin:tiny-llama", "tasks": tasks, "evaluation": {"batch_size": 2}})

    assert {(s.task, s.metric) for s in result.scores} == {
        *((n, "exact_match") for n in REASONING_TASKS), ("jeebench", "partial_credit")}
    assert all(s.primary == (s.metric == "exact_match") for s in result.scores)
    assert len(result.samples) == 2 * len(REASONING_TASKS)
    for s in result.samples:
        assert s.prompt.startswith("<|im_start|>") and s.prompt.endswith("<|im_start|>assistant\n")
        assert s.answer == s.output and s.reasoning is None and not s.truncated
        assert s.finish_reason in ("stop", "length") and s.repetition is not None
        assert "no_answer" in s.metrics
        if s.extracted is None:  # random bytes: nothing to extract -> incorrect, with the reason
            assert s.metrics["no_answer"] == 1.0 and s.correct is False
    assert sorted(result.trace_stats) == sorted(REASONING_TASKS)
    stats = result.trace_stats["aime24"]
    assert stats["samples"] == 2 and stats["truncation_rate"] == 0.0
    assert [b["bucket"] for b in stats["accuracy_by_length"]][0] == "0-63"
    assert result.manifest["tasks"]["aime24"]["generation"]["max_gen_toks"] == 8
    assert result.to_dict()["trace_stats"] == result.trace_stats


def test_think_paradigm_sampling_and_budget_forcing_end_to_end(shared_data, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(shared_data))
    gen = {"max_new_tokens": 20, "num_samples": 3, "temperature": 0.8, "thinking_budget": 5}
    config = {"model": "builtin:tiny-qwen3", "paradigm": "think", "seed": 3,
              "tasks": [{"name": "amc23", "limit": 2, "generation": gen},
                        {"name": "math500", "limit": 2, "generation": {"max_new_tokens": 12}}]}
    result, _ = _pipeline_run(config)
    metrics = {(s.task, s.metric): s for s in result.scores}
    assert set(metrics) == {("amc23", "exact_match"), ("amc23", "pass@1"), ("amc23", "pass@3"),
                            ("amc23", "maj@3"), ("math500", "exact_match")}
    assert metrics[("amc23", "exact_match")].primary and not metrics[("amc23", "pass@3")].primary
    key_fields = result.manifest["tasks"]["amc23"]["key_fields"]
    assert key_fields["generation"]["thinking_budget"] == 5 and key_fields["generation"]["num_samples"] == 3
    assert key_fields["generation"]["until"] == []  # stops are applied after the reasoning only
    assert "thinking_budget" not in result.manifest["tasks"]["math500"]["key_fields"]["generation"]
    for s in result.samples:
        assert s.thinking_tokens is not None and s.reasoning is not None
        if s.task == "amc23":  # forced end of thinking: never truncated
            assert not s.truncated and "</think>" in s.output
        else:  # a random model never closes its reasoning: truncated, no answer
            assert s.truncated and s.answer == "" and s.extracted is None
            assert s.finish_reason == "length"
    assert result.trace_stats["math500"]["truncation_rate"] == 1.0
    assert result.trace_stats["amc23"]["truncation_rate"] == 0.0
    assert result.trace_stats["math500"]["mean_thinking_tokens"] > 0


def test_evaluate_think_markers_override(tmp_path, shared_data, tiny_qwen3):
    from backend.evaluation.harness import evaluate

    out = evaluate(tiny_qwen3.model, tiny_qwen3.tokenizer,
                   [TaskConfig(name="aime25", limit=1, generation={"max_new_tokens": 6})],
                   EvaluationConfig(batch_size=1), paradigm="think", dtype=tiny_qwen3.dtype, data_dir=shared_data,
                   workdir=tmp_path, progress=lambda f, t: None, on_sample=lambda s: None,
                   think_markers=("<r>", "</r>"))
    assert out.task_manifest["aime25"]["generation"]["think_markers"] == ["<r>", "</r>"]
    assert out.samples[0].truncated


@pytest.mark.slow
def test_smollm2_math500_records_answers_and_traces(smollm2, shared_data, tmp_path):
    """SmolLM2-135M-Instruct on 3 MATH-500 problems (128 new tokens: CPU-sized); every field filled."""
    import time

    from backend.evaluation.harness import evaluate
    from common.trace_stats import trace_stats

    tasks = [TaskConfig(name="math500", limit=3, generation={"max_new_tokens": 128})]
    started = time.perf_counter()
    out = evaluate(smollm2.model, smollm2.tokenizer, tasks, EvaluationConfig(batch_size=3), paradigm="instruct",
                   dtype=smollm2.dtype, data_dir=shared_data, workdir=tmp_path, progress=lambda f, t: None,
                   on_sample=lambda s: None)
    seconds = time.perf_counter() - started
    stats = trace_stats(out.samples)["math500"]
    extracted = sum(s.extracted is not None for s in out.samples)
    print(f"SmolLM2 math500@3 exact_match={out.scores[0].value:.2f} extracted {extracted}/3 "
          f"mean output tokens {stats['mean_output_tokens']:.0f} length stops {stats['length_stop_rate']:.2f} "
          f"in {seconds:.0f}s")
    assert len(out.samples) == 3
    assert extracted >= 1  # a chat model writes numbers even when it runs out of budget
    for s in out.samples:
        assert s.answer == s.output and s.finish_reason in ("stop", "length") and s.repetition is not None
        assert s.correct == bool(s.metrics["exact_match"])
        assert (s.extracted is None) == bool(s.metrics["no_answer"])
