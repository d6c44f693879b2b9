"""Generation control for "think" models: stop strings after the reasoning, budget forcing, "Wait".

Used by `backend.evaluation`'s lm-eval model wrapper in the think paradigm (torch is imported lazily).

* `StopAfterThinking`: a batched stopping criterion. A row stops once one of the task's stop
  strings appears AFTER the end-of-thinking marker; stop strings inside the reasoning are ignored.
  (lm-eval itself then only cuts at EOS; `backend.scoring.cut_at_stop` cuts the text at the first
  stop string after the marker.)
* `generate_controlled`: one sequence at a time, for `thinking_budget` (budget forcing: at N
  reasoning tokens the end marker is appended and the model answers with the budget left) and
  `extend_thinking` (when the model ends its reasoning, by the marker or EOS, the marker is
  replaced by "Wait" up to E times). Thinking tokens are counted in generated token ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

WAIT = "Wait"
"""Appended (after a newline) when `extend_thinking` makes the model keep reasoning."""


@dataclass
class ThinkControl:
    """Per-task settings of think-paradigm generation."""

    markers: tuple[str, str]
    stops: tuple[str, ...]
    thinking_budget: int | None = None
    extend_thinking: int = 0
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
            new += seg
            thinking += len(body)
            finished = True
        else:
            new += seg
            thinking += len(seg)
            if thinking >= cap and len(new) < max_new_tokens:
                new += end_ids[: max_new_tokens - len(new)]
                forced = answering = True
            elif len(seg) < limit:  # stopped for another reason (pad, criteria): treat as done
                finished = True
    remaining = max_new_tokens - len(new)
    if answering and remaining > 0:
        criteria = StoppingCriteriaList([stop_after_thinking(tokenizer, end, control.stops, len(prompt_ids), 1)])
        ids = torch.tensor([prompt_ids + new], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=remaining,
                             stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id,
                             use_cache=True, **gen_kwargs)
        new += out[0, ids.shape[1]:].tolist()
    info = {"thinking_tokens": min(thinking, cap), "forced": forced, "extensions": extensions,
            "new_tokens": len(new)}
    return new[:max_new_tokens], info
