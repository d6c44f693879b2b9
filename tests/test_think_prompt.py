"""Prompted thinking: think paradigm on models whose chat template has no thinking mode (SmolLM2's ChatML)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from backend.config import EvaluationConfig, TaskConfig, validate_config
from backend.evaluation.harness import evaluate
from backend.evaluation.scoring import split_thinking, strip_reasoning
from backend.evaluation.thinking import ThinkPrompt, apply_think_prompt, template_has_thinking

PROMPT = ThinkPrompt.for_markers(("<think>", "</think>"))


@pytest.fixture(scope="module")
def tiny():
    from backend.models.loading import load_model

    return load_model("builtin:tiny-llama")


def run(loaded, tasks, tmp_path, *, paradigm="think", think_prompt=None, batch_size=2):
    return evaluate(loaded.model, loaded.tokenizer, tasks, EvaluationConfig(batch_size=batch_size),
                    paradigm=paradigm, dtype=loaded.dtype, data_dir=tmp_path / "data", workdir=tmp_path / "work",
                    progress=lambda f, t: None, on_sample=lambda s: None, think_prompt=think_prompt)


def arith(limit=2, **generation):
    return TaskConfig(name="synthetic-arith", limit=limit, generation={"max_new_tokens": 6, **generation})


def test_instruction_and_prefill_follow_the_markers():
    assert PROMPT.instruction == "Think step by step inside <think> and </think>, then give the final answer."
    assert PROMPT.prefill == "<think>\n" and PROMPT.close == "</think>\n\n"
    assert ThinkPrompt.for_markers(("[THINK]", "[/THINK]")).prefill == "[THINK]\n"


def test_auto_detection_reads_the_chat_template(tiny):
    assert not template_has_thinking(tiny.tokenizer, "<think>")  # the tiny models use SmolLM2's ChatML
    assert template_has_thinking(SimpleNamespace(chat_template="{{ '<think>\\n' }}"), "<think>")
    assert template_has_thinking(SimpleNamespace(chat_template={"default": "x", "tool_use": "<think>"}), "<think>")
    assert not template_has_thinking(SimpleNamespace(chat_template=None), "<think>")


def test_apply_think_prompt_merges_the_system_message_and_prefills():
    def render(messages, add_generation_prompt):
        text = "".join(f"[{m['role']}]{m['content']}" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")

    history = [{"role": "user", "content": "2+2?"}]
    assert apply_think_prompt(render, history, True, PROMPT) == f"[system]{PROMPT.instruction}[user]2+2?[assistant]<think>\n"
    assert history == [{"role": "user", "content": "2+2?"}]  # the caller's messages are not changed
    with_system = [{"role": "system", "content": "Be brief."}, *history]
    assert apply_think_prompt(render, with_system, True, PROMPT).startswith(f"[system]{PROMPT.instruction}\n\nBe brief.[user]")
    # lm-eval continues a prefilled assistant message (gen_prefix): the reasoning opens before it
    continued = [*history, {"role": "assistant", "content": "Answer:"}]
    assert apply_think_prompt(render, continued, False, PROMPT).endswith("[assistant]<think>\nAnswer:")


def test_think_paradigm_prompts_reason_inside_the_markers(tiny, tmp_path):
    out = run(tiny, [arith(), TaskConfig(name="synthetic-mc", limit=2)], tmp_path)
    gen_samples = [s for s in out.samples if s.task == "synthetic-arith"]
    assert len(gen_samples) == 2
    for s in gen_samples:
        assert PROMPT.instruction in s.prompt
        assert s.prompt.endswith("<|im_start|>assistant\n<think>\n")
        assert not s.output.startswith("<think>")  # the prefill is prompt, not output
    manifest = out.task_manifest["synthetic-arith"]
    assert manifest["generation"]["think_prompt"] == PROMPT.record()
    assert manifest["key_fields"]["generation"]["think_prompt"] == PROMPT.record()
    # log-likelihood tasks: no chat template, no instruction, no prefill
    for s in (s for s in out.samples if s.task == "synthetic-mc"):
        assert PROMPT.instruction not in s.prompt and "<think>" not in s.prompt
    assert "think_prompt" not in str(out.task_manifest["synthetic-mc"]["key_fields"])


def test_no_prompted_thinking_in_instruct_or_when_switched_off(tiny, tmp_path):
    tasks = [arith(), TaskConfig(name="synthetic-mc", limit=2)]
    auto = run(tiny, tasks, tmp_path / "auto")
    instruct = run(tiny, tasks, tmp_path / "instruct", paradigm="instruct", think_prompt=True)
    off = run(tiny, tasks, tmp_path / "off", think_prompt=False)
    for out in (instruct, off):
        for s in out.samples:
            assert PROMPT.instruction not in s.prompt and not s.prompt.endswith("<think>\n")
        assert "think_prompt" not in out.task_manifest["synthetic-arith"]["key_fields"]["generation"]
    key = {name: {t: m["comparability_key"] for t, m in out.task_manifest.items()}
           for name, out in (("auto", auto), ("instruct", instruct), ("off", off))}
    assert key["auto"]["synthetic-arith"] != key["off"]["synthetic-arith"] != key["instruct"]["synthetic-arith"]
    assert key["auto"]["synthetic-mc"] == key["off"]["synthetic-mc"] == key["instruct"]["synthetic-mc"]


def test_forcing_on_overrides_a_native_thinking_template(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny.tokenizer, "chat_template", tiny.tokenizer.chat_template + "{# <think> #}")
    native = run(tiny, [arith(limit=1)], tmp_path / "native")
    forced = run(tiny, [arith(limit=1)], tmp_path / "forced", think_prompt=True)
    assert "think_prompt" not in native.task_manifest["synthetic-arith"]["generation"]
    assert not native.samples[0].prompt.endswith("<think>\n")
    assert forced.samples[0].prompt.endswith("<think>\n")


def test_budget_forcing_with_prompted_thinking(tiny, tmp_path):
    out = run(tiny, [arith(limit=2, max_new_tokens=12, thinking_budget=4)], tmp_path, batch_size=1)
    for s in out.samples:
        assert s.prompt.endswith("<think>\n")
        assert "</think>" in s.output and not s.truncated  # forced end of thinking after 4 tokens
        assert s.reasoning == s.output.split("</think>")[0].strip("\n")
    assert out.task_manifest["synthetic-arith"]["key_fields"]["generation"]["thinking_budget"] == 4


def test_end_of_turn_inside_the_prompted_block_closes_it_and_asks_for_the_answer():
    from test_reasoning_tasks import ByteTokenizer, ScriptedModel

    from backend.evaluation.thinking import ThinkControl, close_and_answer, generate_controlled

    tok = ByteTokenizer()
    control = ThinkControl(markers=("<think>", "</think>"), stops=("Q:",), prompt=PROMPT)
    # batched path: EOS (and the padding after it) replaced by the close, then the answer
    new = close_and_answer(ScriptedModel([list(b"It is 6.") + [0]]), tok, list(b"Q?"), list(b"3 + 3 is 6") + [0, 0],
                           max_new_tokens=100, control=control, gen_kwargs={})
    assert tok.decode(new) == "3 + 3 is 6</think>\n\nIt is 6."
    assert split_thinking(tok.decode(new)) == ("3 + 3 is 6", "It is 6.", False)
    closed_already = list(b"6</think>6") + [0]
    out_of_budget = list(b"still thinking")
    for reply in (closed_already, out_of_budget):  # the model is never called
        assert close_and_answer(ScriptedModel([]), tok, list(b"Q?"), reply, max_new_tokens=100, control=control,
                                gen_kwargs={}) == reply
    # one-row path (budget forcing): the same close when the turn ends before the budget
    budgeted = ThinkControl(markers=("<think>", "</think>"), stops=("Q:",), thinking_budget=50, prompt=PROMPT)
    new, info = generate_controlled(ScriptedModel([list(b"short") + [0], list(b"It is 6.") + [0]]), tok, list(b"Q?"),
                                    max_new_tokens=100, control=budgeted, gen_kwargs={})
    assert tok.decode(new) == "short</think>\n\nIt is 6."
    assert info["closed_at_end_of_turn"] and not info["forced"] and info["thinking_tokens"] == 5
    unprompted = ThinkControl(markers=("<think>", "</think>"), stops=("Q:",), thinking_budget=50)
    new, info = generate_controlled(ScriptedModel([list(b"short") + [0]]), tok, list(b"Q?"), max_new_tokens=100,
                                    control=unprompted, gen_kwargs={})
    assert tok.decode(new) == "short" and not info["closed_at_end_of_turn"]


def test_split_of_an_output_that_starts_inside_the_block():
    assert split_thinking("7 + 5 is 12\n</think>\nThe answer is 12") == ("7 + 5 is 12", "The answer is 12", False)
    assert split_thinking("7 + 5 is 12 and so on") == ("7 + 5 is 12 and so on", "", True)
    assert strip_reasoning("7 + 5 is 12</think> 12") == " 12"


def test_model_args_think_prompt_reaches_the_pipeline(tmp_path):
    from backend.pipeline import run as pipeline_run

    assert validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-arith"}],
                            "model_args": {"think_prompt": True}}).hf_args().think_prompt is True
    config = validate_config({"model": "builtin:tiny-llama", "paradigm": "think",
                              "model_args": {"think_prompt": False},
                              "tasks": [{"name": "synthetic-arith", "limit": 1, "generation": {"max_new_tokens": 4}}]})
    result = pipeline_run(config, lambda event: None)
    assert "think_prompt" not in result.manifest["tasks"]["synthetic-arith"]["generation"]


@pytest.mark.slow
def test_smollm2_prompted_thinking_on_synthetic_arith(smollm2, tmp_path):
    """SmolLM2-135M-Instruct in the think paradigm (auto): every prompt prefilled; closed blocks have
    reasoning. SmolLM2 never writes `</think>` itself: blocks are closed where it ends its turn."""
    out = run(smollm2, [TaskConfig(name="synthetic-arith", limit=5)], tmp_path, batch_size=5)
    assert out.task_manifest["synthetic-arith"]["generation"]["think_prompt"] == PROMPT.record()
    assert len(out.samples) == 5
    for s in out.samples:
        assert s.prompt.endswith("<|im_start|>assistant\n<think>\n") and PROMPT.instruction in s.prompt
        assert s.truncated == ("</think>" not in s.output)
        if not s.truncated:
            assert s.reasoning and s.answer == s.output.split("</think>", 1)[1].strip()
    assert sum(not s.truncated for s in out.samples) >= 3  # greedy: all 5 end their turn within the 128-token budget
