"""Helpers of the code-generation tasks: pull the code out of a chat reply, run it in the sandbox.

Generated code is executed by `backend.sandbox.run_program` (a bubblewrap jail: own namespaces, no
network, a read-only view of the interpreter only, time, memory and process limits), never by
lm-eval's `code_eval` and never in the worker process. The tasks use
`code_filter` as an lm-eval `custom` filter (reply -> code) and score in `process_results`.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Sequence

logger = logging.getLogger("pruneboard.tasks.code")

CODE_SCORER_VERSION = "1"
"""Part of each code task's config hash (so of the comparability key): bump when extraction changes."""

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3", ""}


def extract_code(text: str | None, entry_point: str | None = None) -> str:
    """The program in a model reply.

    Fenced blocks (```python ... ```, an unclosed last fence included) win: the first Python (or
    untagged) block that defines `entry_point` when one is given, else the first Python block, else
    the first block of any language. Without fences the whole reply is taken as code.
    """
    if not text:
        return ""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if not blocks:
        return text.strip("\n")
    python = [body for lang, body in blocks if lang in _PY_LANGS]
    if entry_point:
        for body in python:
            if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", body, re.MULTILINE):
                return body.strip("\n")
    return (python or [body for _, body in blocks])[0].strip("\n")


def code_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str]]:
    """lm-eval `custom` filter: every reply -> its code (entry point from the doc when it has one)."""
    return [[extract_code(r, doc.get("entry_point")) for r in rs] for rs, doc in zip(resps, docs)]


def defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def complete_function(prompt: str, code: str, entry_point: str) -> str:
    """A program defining `entry_point` from a HumanEval-style prompt and the model's code.

    A reply that defines the function itself is appended after the prompt (whose docstring-only
    function is then redefined; helpers and imports of the prompt stay available); a reply that is
    only the body continues the prompt, indented when it is not.
    """
    if defines(code, entry_point):
        return f"{prompt}\n    pass\n\n{code}\n"
    lines = code.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first and not first[0].isspace():
        code = "\n".join(f"    {line}" if line.strip() else line for line in lines)
    return f"{prompt}{code}\n"


def log_outcome(task: str, doc_key: Any, result) -> None:
    logger.debug("%s %s: %s %s (%.2fs)", task, doc_key, result.status, result.reason, result.seconds)


def code_task_config(task: str, dataset: dict[str, Any], doc_to_text: Callable, doc_to_target: Callable,
                     process_results: Callable, max_new_tokens: int, version: float) -> dict[str, Any]:
    """The lm-eval config shared by the code tasks: greedy chat generation, the code filter, pass@1
    scored in `process_results` (executed in the sandbox)."""
    from backend.tasks._common import CHAT_STOP_SEQUENCES

    return {
        "task": task,
        **dataset,
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": doc_to_text,
        "doc_to_target": doc_to_target,
        "generation_kwargs": {"until": list(CHAT_STOP_SEQUENCES), "do_sample": False,
                              "max_gen_toks": max_new_tokens},
        "filter_list": [{"name": "extract-code",
                         "filter": [{"function": "custom", "filter_fn": code_filter},
                                    {"function": "take_first"}]}],
        "process_results": process_results,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": version, "scorer": CODE_SCORER_VERSION},
    }
