"""Code tasks (humaneval, humaneval-plus, livecodebench): extraction, sandboxed scoring, evaluation."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from backend.config import EvaluationConfig, TaskConfig
from backend.tasks import get_task
from backend.tasks._code import complete_function, extract_code
from backend.tasks._common import read_jsonl, write_jsonl

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is the solution:\n\n```{lang}\n{code}\n```\n\nIt works because..."


def test_extract_code_prefers_the_python_block_defining_the_entry_point():
    assert extract_code(fenced("def f():\n    return 1")) == "def f():\n    return 1"
    reply = "```text\nexample\n```\n```python\nimport os\n```\n```python\ndef g(x):\n    return x\n```"
    assert extract_code(reply, "g") == "def g(x):\n    return x"
    assert extract_code(reply) == "import os"
    assert extract_code("```py\ndef f(): pass") == "def f(): pass"  # unclosed fence at the end
    assert extract_code("    return x + 1\n") == "    return x + 1"  # raw reply
    assert extract_code("```cpp\nint main(){}\n```") == "int main(){}"
    assert extract_code(None) == "" and extract_code("") == ""


def test_complete_function_handles_full_functions_and_bare_bodies():
    prompt = 'def add(a, b):\n    """Add."""\n'
    full = complete_function(prompt, "def add(a, b):\n    return a + b", "add")
    body = complete_function(prompt, "    return a + b", "add")
    flat = complete_function(prompt, "return a + b", "add")
    for program in (full, body, flat):
        scope: dict = {}
        exec(compile(program, "<test>", "exec"), scope)  # trusted test code only
        assert scope["add"](2, 3) == 5


@pytest.fixture(scope="module")
def humaneval_rows(shared_data):
    return read_jsonl(shared_data / "humaneval" / "HumanEval.jsonl")


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(humaneval_rows):
    from backend.tasks.humaneval import process_results

    assert len(humaneval_rows) == 164
    for doc in humaneval_rows[:40]:
        # as a model would answer: the full function in a fenced block
        full = doc["prompt"] + doc["canonical_solution"]
        assert process_results(doc, [extract_code(fenced(full), doc["entry_point"])]) == {"pass@1": 1.0}, doc["task_id"]
    for doc in humaneval_rows[40:60]:
        # a bare body, unfenced
        assert process_results(doc, [extract_code(doc["canonical_solution"])]) == {"pass@1": 1.0}, doc["task_id"]
    doc = humaneval_rows[0]
    wrong = f"def {doc['entry_point']}(*args, **kwargs):\n    return None"
    assert process_results(doc, [wrong]) == {"pass@1": 0.0}
    looping = f"def {doc['entry_point']}(*args, **kwargs):\n    while True:\n        pass"
    assert process_results(doc, [looping]) == {"pass@1": 0.0}
    assert process_results(doc, [""]) == {"pass@1": 0.0}


def _plus_row(doc: dict) -> dict:
    return {**doc, "base_input": [[[1.0, 2.0, 3.0], 0.5]], "plus_input": [[[1.0, 1.4, 3.0], 0.5], [[], 1.0]],
            "atol": 0}


def test_humaneval_plus_checks_the_extra_inputs(humaneval_rows, tmp_path):
    from backend.tasks.humaneval import build_plus, load_plus_rows, process_results_plus

    doc = humaneval_rows[0]  # has_close_elements(numbers, threshold)
    path = write_jsonl(tmp_path / "data" / "humanevalplus" / "HumanEvalPlus.jsonl", [_plus_row(doc)])
    row = load_plus_rows(path)[0]
    assert json.loads(row["inputs"]) == [[[1.0, 2.0, 3.0], 0.5], [[1.0, 1.4, 3.0], 0.5], [[], 1.0]]
    good = doc["prompt"] + doc["canonical_solution"]
    assert process_results_plus(row, [good]) == {"pass@1": 1.0}
    # passes HumanEval's own tests but is wrong on the extra input ([], 1.0) -> raises IndexError
    sloppy = (f"def {doc['entry_point']}(numbers, threshold):\n"
              "    s = sorted(numbers)\n    _ = s[0]\n"
              "    return any(abs(a - b) < threshold for i, a in enumerate(s) for b in s[i + 1:])\n")
    assert process_results_plus(row, [sloppy]) == {"pass@1": 0.0}
    from backend.tasks.humaneval import process_results

    assert process_results(doc, [sloppy]) == {"pass@1": 1.0}  # the extra inputs are what catches it
    config = build_plus(tmp_path / "data", tmp_path / "work")
    assert config["task"] == "humaneval-plus" and Path(config["dataset_kwargs"]["data_files"]["test"]).is_file()
    bad = write_jsonl(tmp_path / "bad" / "humanevalplus" / "HumanEvalPlus.jsonl", [{"task_id": "x"}])
    from backend.tasks.base import TaskDataMissing

    with pytest.raises(TaskDataMissing, match="lacks string field"):
        load_plus_rows(bad)


LCB_ROWS = [
    {
        "question_id": "stdin-1", "question_title": "Sum", "platform": "atcoder", "difficulty": "easy",
        "question_content": "Read two integers and print their sum.", "starter_code": "",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": json.dumps([{"input": "10 -4\n", "output": "6\n", "testtype": "stdin"}]),
        "metadata": "{}",
    },
    {
        "question_id": "func-1", "question_title": "Twice", "platform": "leetcode", "difficulty": "easy",
        "question_content": "Return the list with every element doubled.",
        "starter_code": "class Solution:\n    def double(self, nums: List[int]) -> List[int]:\n        ",
        "public_test_cases": [{"input": "[1, 2]", "output": "[2, 4]", "testtype": "functional"}],
        "private_test_cases": [{"input": "[]", "output": "[]", "testtype": "functional"}],
        "metadata": {"func_name": "double"},
    },
]


def test_livecodebench_stdin_and_functional_tests(tmp_path):
    from backend.tasks.livecodebench import build, doc_to_text, load_rows, process_results

    path = write_jsonl(tmp_path / "data" / "livecodebench" / "test.jsonl", LCB_ROWS)
    stdin_doc, func_doc = load_rows(path)
    assert "standard input" in doc_to_text(stdin_doc) and "class Solution" in doc_to_text(func_doc)
    right = "a, b = map(int, input().split())\nprint(a + b)"
    assert process_results(stdin_doc, [extract_code(fenced(right))]) == {"pass@1": 1.0}
    assert process_results(stdin_doc, ["a, b = map(int, input().split())\nprint(a - b)"]) == {"pass@1": 0.0}
    assert process_results(stdin_doc, ["print(3)"]) == {"pass@1": 0.0}  # public passes, private fails
    solution = "class Solution:\n    def double(self, nums):\n        return [2 * n for n in nums]"
    assert process_results(func_doc, [solution]) == {"pass@1": 1.0}
    assert process_results(func_doc, [solution.replace("2 * n", "n + 2")]) == {"pass@1": 0.0}
    config = build(tmp_path / "data", tmp_path / "work")
    assert config["task"] == "livecodebench" and config["metric_list"][0]["metric"] == "pass@1"

    from backend.tasks.base import TaskDataMissing

    pickled = dict(LCB_ROWS[0], private_test_cases="eJzLSM3JyQcABiwCFQ==")
    with pytest.raises(TaskDataMissing, match="pickle"):
        load_rows(write_jsonl(tmp_path / "p" / "test.jsonl", [pickled]))


def test_registry_rows():
    for name, category in (("humaneval", "generation"), ("humaneval-plus", "generation"),
                           ("livecodebench", "reasoning")):
        spec = get_task(name)
        assert spec.category == category and spec.primary_metric == "pass@1" and spec.output_type == "generate"


def test_code_tasks_evaluate_end_to_end_on_the_tiny_model(shared_data, tmp_path):
    """Generation through the chat template, the code filter and sandbox scoring inside lm-eval."""
    from backend.evaluation.harness import evaluate
    from backend.models.loading import load_model

    data = tmp_path / "data"
    (data / "humaneval").mkdir(parents=True)
    (data / "humaneval" / "HumanEval.jsonl").write_bytes((shared_data / "humaneval" / "HumanEval.jsonl").read_bytes())
    write_jsonl(data / "livecodebench" / "test.jsonl", LCB_ROWS)
    tiny = load_model("builtin:tiny-llama")
    tasks = [TaskConfig(name="humaneval", limit=2, generation={"max_new_tokens": 8}),
             TaskConfig(name="livecodebench", limit=2, generation={"max_new_tokens": 8})]
    out = evaluate(tiny.model, tiny.tokenizer, tasks, EvaluationConfig(batch_size=2), paradigm="instruct",
                   dtype=tiny.dtype, data_dir=data, workdir=tmp_path / "work", progress=lambda f, t: None,
                   on_sample=lambda s: None)
    assert {(s.task, s.metric, s.primary) for s in out.scores} == {
        ("humaneval", "pass@1", True), ("livecodebench", "pass@1", True)}
    assert all(s.value == 0.0 for s in out.scores)  # random weights write no working code
    samples = [s for s in out.samples if s.task == "humaneval"]
    assert len(samples) == 2 and all(s.prompt.startswith("<|im_start|>") for s in samples)
    assert "```python" in samples[0].prompt and "check(" in samples[0].gold
    assert all(s.extracted is not None and s.metrics == {"pass@1": 0.0} for s in samples)
