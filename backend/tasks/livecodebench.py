"""LiveCodeBench (code generation, release v5): competitive-programming problems, scored in the sandbox.

Data: `livecodebench/test.jsonl` under PRUNEBOARD_DATA_DIR, one problem a line with
the fields of LiveCodeBench's `code_generation_lite` release:
* `question_id` (str), `question_title` (str, optional), `question_content` (str): the statement;
* `starter_code` (str, may be ""): for functional (LeetCode-style) problems, `class Solution` with
  the method to write;
* `public_test_cases` and `private_test_cases`: a list (or a JSON string of a list) of
  `{"input": str, "output": str, "testtype": "stdin" | "functional"}`. The HF release stores the
  private tests as zlib+base64-compressed pickles; this loader refuses them (no unpickling while
  evaluating). `python -m jobs data fetch livecodebench` downloads release v5 and writes them as
  plain JSON, unpickling plain values only (`backend.taskdata.convert`);
* `metadata` (dict or JSON string): `{"func_name": "..."}` for functional problems;
* `platform`, `contest_date`, `difficulty` (optional, kept for reference).

Tests, all of which must pass (pass@1, greedy):
* stdin: the program runs once per test case with the input on stdin; its stdout must equal the
  expected output line by line, ignoring trailing whitespace and blank trailing lines;
* functional: `input` holds one JSON value a line (the arguments), `output` the JSON result; all
  cases run in one program calling `Solution().<func_name>(*args)` and comparing with `==`.
Each sandbox run gets 6 s and 512 MiB. Category `reasoning`; prompts go through the chat template.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.sandbox import DEFAULT_MEMORY_MB
from backend.tasks._code import code_task_config, log_outcome
from backend.tasks._common import (
    json_dataset,
    read_jsonl,
    require_files,
    write_jsonl,
)
from backend.tasks.base import TaskDataMissing, TaskSpec, register_task

DATA_FILES = ("livecodebench/test.jsonl",)
MAX_NEW_TOKENS = 1024
TIMEOUT_S = 6.0
MEMORY_MB = DEFAULT_MEMORY_MB  # the same limit as `python -m jobs sandbox-run`

SYSTEM = ("You are given a programming problem. Write a correct and efficient Python 3 program that "
          "solves it and passes all tests.\n\n")
WITH_STARTER = ("Complete the following starter code and put your whole solution in one ```python code "
                "block.\n```python\n{starter}\n```")
WITHOUT_STARTER = ("Your program must read the input from standard input and write the answer to standard "
                   "output. Put the whole program in one ```python code block.")


def doc_to_text(doc: dict[str, Any]) -> str:
    tail = WITH_STARTER.format(starter=doc["starter_code"].strip("\n")) if doc["starter_code"].strip() \
        else WITHOUT_STARTER
    return f"{SYSTEM}Problem:\n{doc['question_content'].strip()}\n\n{tail}"


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["question_id"]


def _tests(value: Any, field: str, qid: str) -> list[dict[str, str]]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskDataMissing(
                f"livecodebench: {field} of {qid} is not a JSON list (the compressed pickled form of the "
                'HF release is not read here: "python -m jobs data fetch livecodebench" writes the plain list)'
            ) from None
    if not isinstance(value, list) or not all(isinstance(t, dict) and {"input", "output"} <= t.keys()
                                              for t in value):
        raise TaskDataMissing(f"livecodebench: {field} of {qid} must be a list of {{input, output, testtype}}")
    return [{"input": str(t["input"]), "output": str(t["output"]), "testtype": t.get("testtype", "stdin")}
            for t in value]


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, row in enumerate(read_jsonl(path)):
        if not isinstance(row.get("question_content"), str):
            raise TaskDataMissing(f"livecodebench: row {i} of {path} has no question_content")
        qid = str(row.get("question_id", i))
        tests = _tests(row.get("public_test_cases"), "public_test_cases", qid) + \
            _tests(row.get("private_test_cases"), "private_test_cases", qid)
        if not tests:
            raise TaskDataMissing(f"livecodebench: problem {qid} has no test cases")
        metadata = row.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata or "{}")
        if any(t["testtype"] == "functional" for t in tests) and not metadata.get("func_name"):
            raise TaskDataMissing(f"livecodebench: functional problem {qid} needs metadata.func_name")
        rows.append({
            "question_id": qid,
            "question_title": str(row.get("question_title") or ""),
            "question_content": row["question_content"],
            "starter_code": str(row.get("starter_code") or ""),
            "tests": json.dumps(tests),
            "func_name": str(metadata.get("func_name") or ""),
            "platform": str(row.get("platform") or ""),
            "difficulty": str(row.get("difficulty") or ""),
            "contest_date": str(row.get("contest_date") or ""),
        })
    return rows


def _same_output(got: str, want: str) -> bool:
    clean = lambda text: [line.rstrip() for line in text.rstrip().splitlines()]  # noqa: E731
    return clean(got) == clean(want)


def functional_program(code: str, func_name: str, tests: list[dict[str, str]]) -> str:
    cases = [([json.loads(line) for line in t["input"].split("\n") if line.strip()], json.loads(t["output"]))
             for t in tests]
    return (
        "from typing import *\nimport collections, heapq, itertools, math, bisect, functools, string, re\n"
        f"{code}\n\n"
        "import json as _pb_json, copy as _pb_copy\n"
        f"_pb_cases = _pb_json.loads({json.dumps(json.dumps(cases))})\n"
        "for _pb_i, (_pb_args, _pb_want) in enumerate(_pb_cases):\n"
        f"    _pb_got = Solution().{func_name}(*_pb_copy.deepcopy(_pb_args))\n"
        "    assert _pb_got == _pb_want, f'wrong answer on test {_pb_i}'\n"
    )


def run_tests(code: str, doc: dict[str, Any]) -> tuple[bool, str]:
    """(all passed, reason of the first failure)."""
    from backend.sandbox import run_program

    tests = json.loads(doc["tests"])
    functional = [t for t in tests if t["testtype"] == "functional"]
    if functional:
        result = run_program(functional_program(code, doc["func_name"], functional), timeout_s=TIMEOUT_S,
                             memory_mb=MEMORY_MB)
        log_outcome("livecodebench", doc["question_id"], result)
        if not result.passed:
            return False, f"{result.status}: {result.reason}"
    for i, test in enumerate(t for t in tests if t["testtype"] != "functional"):
        result = run_program(code, stdin=test["input"], timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
        log_outcome("livecodebench", doc["question_id"], result)
        if not result.passed:
            return False, f"test {i}: {result.status}: {result.reason}"
        if not _same_output(result.stdout, test["output"]):
            return False, f"test {i}: wrong answer"
    return True, ""


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    passed, _ = run_tests(results[0], doc)
    return {"pass@1": float(passed)}


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("livecodebench", data_dir, DATA_FILES)
    path = write_jsonl(workdir / "livecodebench" / "test.jsonl", load_rows(data_dir / DATA_FILES[0]))
    return code_task_config("livecodebench", json_dataset({"test": path}), doc_to_text, doc_to_target, process_results, MAX_NEW_TOKENS, 5.0)


register_task(TaskSpec(
    name="livecodebench",
    category="reasoning",
    output_type="generate",
    primary_metric="pass@1",
    higher_is_better=True,
    description="LiveCodeBench v5 code generation: stdin/stdout and functional tests "
                "run in the sandbox; pass@1 (greedy).",
    build=build,
    data_files=DATA_FILES,
    metrics=("pass@1",),
    default_max_new_tokens=MAX_NEW_TOKENS,
    runs_code=True,
))
