"""Generation control for "think" models: stop strings after the reasoning, budget forcing, "Wait".

Used by `backend.evaluation.harness`'s lm-eval model wrapper in the think paradigm (torch is imported lazily).

* `StopAfterThinking`: a batched stopping criterion. A row stops once one of the task's stop
  strings appears AFTER the end-of-thinking marker; stop strings inside the reasoning are ignored.
  (lm-eval itself then only cuts at EOS; `backend.evaluation.scoring.cut_at_stop` cuts the text at the first
  stop string after the marker.)
* `generate_controlled`: one sequence at a time, for `thinking_budget` (budget forcing: at N
  reasoning tokens the end marker is appended and the model answers with the budget left) and
  `extend_thinking` (when the model ends its reasoning, by the marker or EOS, the marker is
  replaced by "Wait" up to E times). Thinking tokens are counted in generated token ids.
* `ThinkPrompt` / `apply_think_prompt`: prompted thinking for a model whose chat template has no
  thinking mode (e.g. SmolLM2's ChatML): a system instruction asks for reasoning inside the markers
  and the assistant turn is prefilled with the start marker, so generation starts inside the block
  and the output holds only the end marker (`backend.evaluation.scoring.split_thinking` handles that). Small
  models rarely write the end marker themselves (SmolLM2-135M: never), so a reply that ends its turn
  (EOS) inside the prompted block has its reasoning closed there: `ThinkPrompt.close` (the end
  marker and a blank line) replaces the EOS and the model answers with the budget left
  (`close_and_answer`), as budget forcing does at its cap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

WAIT = "Wait"
"""Appended (after a newline) when `extend_thinking` makes the model keep reasoning."""
THINK_INSTRUCTION = "Think step by step inside {start} and {end}, then give the final answer."
"""System instruction of prompted thinking; `{start}` / `{end}` are the model's markers."""


@dataclass(frozen=True)
class ThinkPrompt:
    """Prompted thinking: `instruction` goes into the system message, `prefill` opens the assistant turn."""

    instruction: str
    prefill: str
    close: str
    """Appended when the reply ends its turn inside the block (the newlines lead the model to answer)."""

    @classmethod
    def for_markers(cls, markers: tuple[str, str]) -> ThinkPrompt:
        start, end = markers
        return cls(instruction=THINK_INSTRUCTION.format(start=start, end=end), prefill=start + "\n",
                   close=end + "\n\n")

    def record(self) -> dict[str, str]:
        """What the manifest and comparability key record."""
        return {"instruction": self.instruction, "prefill": self.prefill, "close_at_end_of_turn": self.close}


def template_has_thinking(tokenizer, start_marker: str) -> bool:
    """Whether the tokenizer's chat template mentions `start_marker` (a native thinking mode)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates
        template = "\n".join(str(t) for t in template.values())
    return bool(template) and start_marker in template


def apply_think_prompt(render, chat_history: list[dict[str, str]], add_generation_prompt: bool,
                       prompt: ThinkPrompt) -> str:
    """`render(messages, add_generation_prompt)` (lm-eval's chat-template call) with prompted thinking.

    The instruction leads the system message (one is added when there is none); the prefill follows
    the generation prompt, or leads the final assistant message that lm-eval continues (gen_prefix).
    """
    messages = [dict(m) for m in chat_history]
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{prompt.instruction}\n\n{messages[0]['content']}"
    else:
        messages.insert(0, {"role": "system", "content": prompt.instruction})
    if add_generation_prompt:
        return render(messages, add_generation_prompt=True) + prompt.prefill
    messages[-1]["content"] = prompt.prefill + messages[-1]["content"]
    return render(messages, add_generation_prompt=False)


@dataclass
class ThinkControl:
    """Per-task settings of think-paradigm generation."""

    markers: tuple[str, str]
    stops: tuple[str, ...]
    thinking_budget: int | None = None
    extend_thinking: int = 0
    prompt: ThinkPrompt | None = None
    """Prompted thinking (None: the model's chat template opens the reasoning itself)."""
    last_info: list[dict[str, Any]] = field(default_factory=list)
    """Per-row info of the latest controlled generations (thinking tokens, forced, extensions)."""

    @property
    def controlled(self) -> bool:
        return self.thinking_budget is not None or self.extend_thinking > 0


def _stopping_base():
    from transformers import StoppingCriteria

    return StoppingCriteria


def stop_after_thinking(tokenizer, end_marker: str, stops: Sequence[str], prompt_len: int, batch: int):
    """A `StoppingCriteria` (per-row bool tensor) for stop strings after `end_marker`."""
    import torch

    class StopAfterThinking(_stopping_base()):
        def __init__(self):
            self.done = [False] * batch

        def __call__(self, input_ids, scores, **kwargs):
            for row in range(input_ids.shape[0]):
                if not self.done[row]:
                    text = tokenizer.decode(input_ids[row, prompt_len:], skip_special_tokens=False)
                    if end_marker in text:
                        tail = text.split(end_marker, 1)[1]
                        self.done[row] = any(s and s in tail for s in stops)
            return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    return StopAfterThinking()


def _marker_criterion(tokenizer, marker: str, prompt_len: int, window: int):
    import torch

    class StopAtMarker(_stopping_base()):
        def __call__(self, input_ids, scores, **kwargs):
            text = tokenizer.decode(input_ids[0, max(prompt_len, input_ids.shape[1] - window):],
                                    skip_special_tokens=False)
            return torch.tensor([marker in text], dtype=torch.bool, device=input_ids.device)

    return StopAtMarker()


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _marker_start(tokenizer, tokens: list[int], marker: str) -> int:
    """Index of the last token from which the decoded tail still contains `marker` (its first token)."""
    for i in range(len(tokens) - 1, -1, -1):
        if marker in tokenizer.decode(tokens[i:], skip_special_tokens=False):
            return i
    return len(tokens)


def generate_controlled(model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int,
                        control: ThinkControl, gen_kwargs: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
    """New token ids for one prompt under budget forcing / extension, and what happened."""
    import torch

    start, end = control.markers
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
    wait_ids = tokenizer("\n" + WAIT, add_special_tokens=False)["input_ids"]
    eos_ids = _eos_ids(model, tokenizer)
    cap = control.thinking_budget if control.thinking_budget is not None else max_new_tokens
    new: list[int] = []
    thinking = 0
    extensions = 0
    forced = False
    closed = False
    answering = False
    finished = False

    def run(limit: int, criteria) -> list[int]:
        ids = torch.tensor([prompt_ids + new], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit,
                             stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id,
                             use_cache=True, **gen_kwargs)
        return out[0, ids.shape[1]:].tolist()

    from transformers import StoppingCriteriaList

    while not answering and not finished:
        remaining = max_new_tokens - len(new)
        limit = min(remaining, cap - thinking)
        if remaining <= 0:
            break
        if limit <= 0:  # budget used up: force the end of thinking
            new += end_ids[:remaining]
            forced = answering = True
            break
        window = len(end_ids) + 8
        seg = run(limit, StoppingCriteriaList([_marker_criterion(tokenizer, end, len(prompt_ids) + len(new), window)]))
        text = tokenizer.decode(seg, skip_special_tokens=False)
        if end in text:
            cut = _marker_start(tokenizer, seg, end)
            if extensions < control.extend_thinking:
                kept = seg[:cut] + wait_ids
                new += kept
                thinking += len(kept)
                extensions += 1
                continue
            new += seg
            thinking += cut
            answering = True
        elif seg and seg[-1] in eos_ids:
            body = seg[:-1]
            if extensions < control.extend_thinking:
                kept = body + wait_ids
                new += kept
                thinking += len(kept)
                extensions += 1
                continue
            thinking += len(body)
            if control.prompt is not None:  # end of turn inside the prompted block: close it, then answer
                close_ids = tokenizer(control.prompt.close, add_special_tokens=False)["input_ids"]
                new += body + close_ids[: max_new_tokens - len(new) - len(body)]
                closed = answering = True
            else:
                new += seg
                finished = True
        else:
            new += seg
            thinking += len(seg)
            if thinking >= cap and len(new) < max_new_tokens:
                new += end_ids[: max_new_tokens - len(new)]
                forced = answering = True
            elif len(seg) < limit:  # stopped for another reason (pad, criteria): treat as done
                finished = True
    if answering:
        new = _answer(model, tokenizer, prompt_ids, new, max_new_tokens, control, gen_kwargs)
    info = {"thinking_tokens": min(thinking, cap), "forced": forced, "closed_at_end_of_turn": closed,
            "extensions": extensions, "new_tokens": len(new)}
    return new[:max_new_tokens], info


def _answer(model, tokenizer, prompt_ids: list[int], new: list[int], max_new_tokens: int,
            control: ThinkControl, gen_kwargs: dict[str, Any]) -> list[int]:
    """`new` (ending with the end marker) plus the model's answer, up to a stop string after the marker."""
    import torch
    from transformers import StoppingCriteriaList

    remaining = max_new_tokens - len(new)
    if remaining <= 0:
        return new
    criteria = StoppingCriteriaList([stop_after_thinking(tokenizer, control.markers[1], control.stops,
                                                         len(prompt_ids), 1)])
    ids = torch.tensor([prompt_ids + new], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=remaining,
                         stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id,
                         use_cache=True, **gen_kwargs)
    return new + out[0, ids.shape[1]:].tolist()


def close_and_answer(model, tokenizer, prompt_ids: list[int], new: list[int], *, max_new_tokens: int,
                     control: ThinkControl, gen_kwargs: dict[str, Any]) -> list[int]:
    """Prompted thinking, batched path: a reply that ended its turn (EOS) without the end marker gets
    its reasoning closed (EOS and what follows replaced by `ThinkPrompt.close`) and an answer.
    Replies that closed the block, or ran out of budget, come back unchanged."""
    eos_ids = _eos_ids(model, tokenizer)
    stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
    if stop is None or control.markers[1] in tokenizer.decode(new[:stop], skip_special_tokens=False):
        return new
    close_ids = tokenizer(control.prompt.close, add_special_tokens=False)["input_ids"]
    closed = new[:stop] + close_ids[: max_new_tokens - stop]
    return _answer(model, tokenizer, prompt_ids, closed, max_new_tokens, control, gen_kwargs)[:max_new_tokens]
