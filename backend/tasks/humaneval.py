"""HumanEval and HumanEval+ : write a Python function, scored by running its tests in the sandbox.

Generation goes through the model's chat template: the prompt asks for the complete function in a
```python block and shows the HumanEval prompt (signature + docstring). The reply's code is taken by
`backend.tasks._code.extract_code` (fenced block, else the raw reply), completed against the prompt
(`complete_function`: a full function redefines the stub, a bare body continues it), and executed
with the task's tests and `check(entry_point)` by `backend.sandbox.run_program` (in its jail: no
network, no view of the host, 512 MiB, 10 s; 30 s for HumanEval+). `pass@1` (greedy, one sample) is 1 when the
program exits cleanly. lm-eval's `code_eval` metric is not used (no HF_ALLOW_CODE_EVAL, no
`unsafe_code`): scoring is our own `process_results`.

Data under PRUNEBOARD_DATA_DIR:
* `humaneval/HumanEval.jsonl` (164 rows; task_id, prompt, entry_point, canonical_solution, test),
  read in place.
* `humanevalplus/HumanEvalPlus.jsonl` (`python -m jobs data fetch humaneval-plus`: EvalPlus's
  `evalplus/humanevalplus`, whose `test` holds the extra inputs; or the EvalPlus release, decompressed).
  One JSON object a line:
  - `task_id` (str), `prompt` (str), `entry_point` (str), `test` (str: defines `check(candidate)`),
    all required;
  - `canonical_solution` (str, the body completing `prompt`) with `base_input` and/or `plus_input`
    (lists of argument lists): optional; when present, every input is run through the reference
    and the candidate and the results must agree (floats within `atol`, default 1e-6 relative /
    `atol` absolute), before `check(candidate)` runs;
  - `atol` (number, optional, default 0).
  Rows are normalised (inputs stored as JSON text) into the work directory before lm-eval reads them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.sandbox import DEFAULT_MEMORY_MB
from backend.tasks._code import code_task_config, complete_function, log_outcome
from backend.tasks._common import (
    json_dataset,
    read_jsonl,
    require_files,
    write_jsonl,
)
from backend.tasks.base import TaskDataMissing, TaskSpec, register_task

HUMANEVAL_FILES = ("humaneval/HumanEval.jsonl",)
HUMANEVAL_PLUS_FILES = ("humanevalplus/HumanEvalPlus.jsonl",)
MAX_NEW_TOKENS = 512
TIMEOUT_S = 10.0
PLUS_TIMEOUT_S = 30.0
MEMORY_MB = DEFAULT_MEMORY_MB  # the same limit as `python -m jobs sandbox-run`

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (signature, body and "
    "any imports it needs) in one ```python code block.\n\n```python\n{prompt}\n```"
)

_EQUAL_HELPER = '''
import copy as _copy, json as _json, math as _math

def _pb_close(got, want, atol):
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(got, bool) or isinstance(want, bool) or not isinstance(got, (int, float)):
            return False
        if _math.isnan(want) and _math.isnan(got):
            return True
        return _math.isclose(got, want, rel_tol=1e-6, abs_tol=atol)
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(
            _pb_close(g, w, atol) for g, w in zip(got, want))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_pb_close(got[k], want[k], atol) for k in want)
    return got == want
'''


def doc_to_text(doc: dict[str, Any]) -> str:
    return INSTRUCTION.format(prompt=doc["prompt"].strip("\n"))


def doc_to_target(doc: dict[str, Any]) -> str:
    return f"{doc['test']}\ncheck({doc['entry_point']})"


def humaneval_program(doc: dict[str, Any], code: str) -> str:
    """The candidate completed against the prompt, then the tests and `check(entry_point)`."""
    entry = doc["entry_point"]
    return f"{complete_function(doc['prompt'], code, entry)}\n\n{doc['test']}\n\ncheck({entry})\n"


def humaneval_plus_program(doc: dict[str, Any], code: str) -> str:
    """Differential tests against the reference on every extra input, then `check(entry_point)`."""
    entry = doc["entry_point"]
    inputs = json.loads(doc.get("inputs") or "[]")
    parts = []
    if inputs and doc.get("canonical_solution"):
        parts += [_EQUAL_HELPER, f"{doc['prompt']}{doc['canonical_solution']}\n", f"_pb_reference = {entry}\n"]
    parts += [complete_function(doc["prompt"], code, entry), f"_pb_candidate = {entry}\n"]
    if inputs and doc.get("canonical_solution"):
        parts.append(
            f"_pb_inputs = _json.loads({json.dumps(json.dumps(inputs))})\n"
            "for _pb_i, _pb_args in enumerate(_pb_inputs):\n"
            "    _pb_want = _pb_reference(*_copy.deepcopy(_pb_args))\n"
            "    _pb_got = _pb_candidate(*_copy.deepcopy(_pb_args))\n"
            f"    assert _pb_close(_pb_got, _pb_want, {float(doc.get('atol') or 0.0)!r}), "
            "f'wrong result on extra input {_pb_i}'\n"
        )
    parts.append(f"\n{doc['test']}\n\ncheck(_pb_candidate)\n")
    return "\n".join(parts)


def _score(task: str, program: str, timeout_s: float) -> dict[str, float]:
    from backend.sandbox import run_program

    result = run_program(program, timeout_s=timeout_s, memory_mb=MEMORY_MB)
    log_outcome(task, None, result)
    return {"pass@1": float(result.passed)}


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    return _score("humaneval", humaneval_program(doc, results[0]), TIMEOUT_S)


def process_results_plus(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    return _score("humaneval-plus", humaneval_plus_program(doc, results[0]), PLUS_TIMEOUT_S)


def _config(task: str, splits: dict[str, Path], process) -> dict[str, Any]:
    return code_task_config(task, json_dataset(splits), doc_to_text, doc_to_target, process, MAX_NEW_TOKENS, 1.0)


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("humaneval", data_dir, HUMANEVAL_FILES)
    return _config("humaneval", {"test": data_dir / HUMANEVAL_FILES[0]}, process_results)


def load_plus_rows(path: Path) -> list[dict[str, Any]]:
    """HumanEval+ rows checked and normalised (see the module docstring for the schema)."""
    rows = []
    for i, row in enumerate(read_jsonl(path)):
        missing = [k for k in ("task_id", "prompt", "entry_point", "test") if not isinstance(row.get(k), str)]
        if missing:
            raise TaskDataMissing(f"humaneval-plus: row {i} of {path} lacks string field(s) {', '.join(missing)}")
        inputs = list(row.get("base_input") or []) + list(row.get("plus_input") or [])
        rows.append({
            "task_id": row["task_id"], "prompt": row["prompt"], "entry_point": row["entry_point"],
            "test": row["test"], "canonical_solution": row.get("canonical_solution") or "",
            "inputs": json.dumps(inputs), "atol": float(row.get("atol") or 0.0),
        })
    return rows


def build_plus(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("humaneval-plus", data_dir, HUMANEVAL_PLUS_FILES)
    path = write_jsonl(workdir / "humaneval-plus" / "test.jsonl", load_plus_rows(data_dir / HUMANEVAL_PLUS_FILES[0]))
    return _config("humaneval-plus", {"test": path}, process_results_plus)


register_task(TaskSpec(
    name="humaneval",
    category="generation",
    output_type="generate",
    primary_metric="pass@1",
    higher_is_better=True,
    description="HumanEval (164 Python functions) through the chat template; pass@1 (greedy) by running "
                "the tests in the sandbox.",
    build=build,
    data_files=HUMANEVAL_FILES,
    metrics=("pass@1",),
    default_max_new_tokens=MAX_NEW_TOKENS,
    runs_code=True,
))

register_task(TaskSpec(
    name="humaneval-plus",
    category="generation",
    output_type="generate",
    primary_metric="pass@1",
    higher_is_better=True,
    description="HumanEval+: HumanEval with EvalPlus's extra inputs checked against "
                "the reference; pass@1 in the sandbox.",
    build=build_plus,
    data_files=HUMANEVAL_PLUS_FILES,
    metrics=("pass@1",),
    default_max_new_tokens=MAX_NEW_TOKENS,
    runs_code=True,
))
