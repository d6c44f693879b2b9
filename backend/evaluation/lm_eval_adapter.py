"""The lm-eval side of evaluation: building a task from its config dict, the tracked HF model that
reports progress before every batch (and drives think-paradigm generation, with prompted thinking
for models without a thinking mode), and one lm-eval pass.

Split from `backend.evaluation.harness`, which prepares tasks, streams samples and aggregates scores.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from backend.config import EvaluationConfig
from backend.evaluation.backends import resolve_batch_size
from backend.evaluation.prepared import PreparedTask
from backend.evaluation.scoring import cut_at_stop


def build_lm_eval_task(lm_config: dict[str, Any]):
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_defaults=False).load([lm_config])
    return loaded["tasks"][lm_config["task"]]


class ProgressTracker:
    """Turns finished-request counts into overall progress; weights tasks by estimated cost."""

    def __init__(self, progress: Callable[[float, str], None], total_weight: float):
        self.progress = progress
        self.total_weight = total_weight or 1.0
        self.weight_done = 0.0
        self.task = ""
        self.task_weight = 0.0
        self.requests = 0
        self.finished = 0

    def start_task(self, name: str, weight: float) -> None:
        self.task, self.task_weight, self.requests, self.finished = name, weight, 0, 0

    def begin_requests(self, count: int) -> None:
        self.requests, self.finished = count, 0

    def request_finished(self) -> None:
        self.finished += 1

    def before_batch(self) -> None:
        share = min(self.finished / self.requests, 1.0) if self.requests else 0.0
        fraction = (self.weight_done + share * self.task_weight) / self.total_weight
        self.progress(min(fraction, 1.0), f"{self.task}: {self.finished}/{self.requests} requests")

    def end_task(self) -> None:
        self.weight_done += self.task_weight


class _CountingHook:
    """lm-eval's cache hook sees every finished request once; we count them (and cache nothing)."""

    def __init__(self, tracker: ProgressTracker):
        self.tracker = tracker

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.tracker.request_finished()


def make_evaluation_lm(model, tokenizer, evaluation: EvaluationConfig, tracker: ProgressTracker, *, device: str,
                        workdir: Path, dtype: str):
    """The lm-eval model of `evaluation.backend` (see `backend.evaluation.backends`)."""
    batch_size = resolve_batch_size(evaluation.batch_size, device)
    if evaluation.backend == "vllm":
        from backend.evaluation.backends import make_vllm_lm

        return make_vllm_lm(model, tokenizer, batch_size, tracker, workdir, dtype)
    return _make_hf_lm(model, tokenizer, batch_size, tracker)


def _make_hf_lm(model, tokenizer, batch_size: int | str, tracker: ProgressTracker):
    from lm_eval.models.huggingface import HFLM

    from backend.evaluation.thinking import apply_think_prompt

    class TrackedHFLM(HFLM):
        """HFLM that reports progress before every model batch; batching and order are untouched.
        In the think paradigm it renders prompted thinking (`think_control.prompt`) into chat prompts."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            tracker.begin_requests(len(requests))
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            tracker.begin_requests(len(requests))
            results = super().generate_until(requests, disable_tqdm=True)
            control = self.think_control
            if control is not None:  # stop strings count only after the end of thinking
                results = [cut_at_stop(r, control.stops, control.markers[1]) for r in results]
            return results

        def _model_call(self, inps, attn_mask=None, labels=None):
            tracker.before_batch()
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

        think_control = None
        """Set per task by `evaluate`: a `backend.evaluation.thinking.ThinkControl` (think paradigm) or None."""

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            tracker.before_batch()
            if self.think_control is None:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            return _think_generate(self, self.think_control, context, max_length, generation_kwargs)

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            prompt = self.think_control.prompt if self.think_control is not None else None
            if prompt is None:
                return super().apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)
            return apply_think_prompt(super().apply_chat_template, chat_history, add_generation_prompt, prompt)

        def get_model_info(self) -> dict:
            return {}  # the stock one asks the hub for a revision sha

    lm = TrackedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.set_cache_hook(_CountingHook(tracker))
    return lm


def _think_generate(lm, control, context, max_length: int, generation_kwargs: dict[str, Any]):
    """Think-paradigm generation for a left-padded batch; returns prompt + new ids as HF generate does.

    Without budget forcing or extension: one batched `generate` whose only stop strings are those
    after the end marker (`backend.evaluation.thinking.stop_after_thinking`); with prompted thinking, rows that
    ended their turn without the end marker are then closed and answered one at a time
    (`backend.evaluation.thinking.close_and_answer`). With them: one row at a time
    (`backend.evaluation.thinking.generate_controlled`).
    """
    import torch
    from transformers import StoppingCriteriaList

    from backend.evaluation.thinking import (
        close_and_answer,
        generate_controlled,
        stop_after_thinking,
    )

    kwargs = dict(generation_kwargs)
    attention = kwargs.pop("attention_mask", None)
    if not kwargs.get("do_sample"):
        kwargs.pop("temperature", None)
        kwargs.pop("top_p", None)
        kwargs["do_sample"] = False
    prompt_len = context.shape[1]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eot_token_id
    if not control.controlled:
        criteria = StoppingCriteriaList([stop_after_thinking(
            lm.tokenizer, control.markers[1], control.stops, prompt_len, context.shape[0])])
        out = lm.model.generate(input_ids=context, attention_mask=attention, max_length=max_length,
                                stopping_criteria=criteria, pad_token_id=pad, use_cache=True, **kwargs)
        if control.prompt is None:
            return out
        # prompted thinking: replies that ended their turn inside the block are closed and answered
        rows = [context[i].tolist() + close_and_answer(
                    lm.model, lm.tokenizer, _unpadded(context, attention, i), out[i, prompt_len:].tolist(),
                    max_new_tokens=max_length - prompt_len, control=control, gen_kwargs=kwargs)
                for i in range(context.shape[0])]
    else:
        rows = []
        control.last_info = []
        for i in range(context.shape[0]):
            new, info = generate_controlled(lm.model, lm.tokenizer, _unpadded(context, attention, i),
                                            max_new_tokens=max_length - prompt_len, control=control,
                                            gen_kwargs=kwargs)
            control.last_info.append(info)
            rows.append(context[i].tolist() + new)
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=context.device)


def _unpadded(context, attention, row: int) -> list[int]:
    ids = context[row].tolist()
    if attention is None:
        return ids
    return [t for t, m in zip(ids, attention[row].tolist()) if m]


def run_task(lm, p: PreparedTask, seeds: dict[str, int]) -> list[dict[str, Any]]:
    """One lm-eval pass over the task's remaining documents; returns lm-eval's logged samples."""
    import numpy as np
    from lm_eval import evaluator
    from lm_eval.utils import set_torch_seed

    random.seed(seeds["random"])
    np.random.seed(seeds["numpy"])
    set_torch_seed(seeds["torch"])
    task = p.task
    task.set_fewshot_seed(seed=seeds["fewshot"])
    name = p.spec.name
    results = evaluator.evaluate(
        lm=lm,
        task_dict={"tasks": {name: task}, "groups": {}, "group_map": {}},
        samples={name: p.todo},
        bootstrap_iters=0,
        log_samples=True,
        apply_chat_template=p.spec.uses_chat_template,
        fewshot_as_multiturn=True,
    )
    return results["samples"][name]
