"""A few rows of every catalog task's data in the format its Hub repo holds it (parquet, JSON lines,
JSON, CSV, TSV), written here rather than copied, and published on a loopback Hub
(tests/hub_server.py) at each source's revision (tests/test_data_fetch.py).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import zlib
from typing import Any

from backend.taskdata.sources import SOURCES

__all__ = ["UPSTREAM_ROWS", "upstream_files", "publish", "encoded_tests"]


def parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def delimited(rows: list[dict[str, Any]], delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def encoded_tests(tests: list[dict[str, str]]) -> str:
    """LiveCodeBench's form of private test cases: base64 of zlib of a pickled JSON string."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def _mc(question: str, stem_key: str, texts: list[str], answer: str, row_id: str) -> dict[str, Any]:
    labels = ["A", "B", "C", "D"][: len(texts)]
    return {"id": row_id, stem_key: question, "choices": {"text": texts, "label": labels}, "answerKey": answer}


def _livecodebench(qid: str, functional: bool) -> dict[str, Any]:
    if functional:
        public = [{"input": "[1, 2]", "output": "3", "testtype": "functional"}]
        private = [{"input": "[5, 7]", "output": "12", "testtype": "functional"}]
        starter, metadata = "class Solution:\n    def add(self, a, b):\n        ", json.dumps({"func_name": "add"})
    else:
        public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
        private = [{"input": "5 7\n", "output": "12\n", "testtype": "stdin"}]
        starter, metadata = "", "{}"
    return {"question_title": f"Add {qid}", "question_content": "Print the sum of two integers.",
            "platform": "atcoder", "question_id": qid, "contest_id": "abc001", "contest_date": "2024-08-01T00:00:00",
            "starter_code": starter, "difficulty": "easy", "public_test_cases": json.dumps(public),
            "private_test_cases": encoded_tests(private), "metadata": metadata}


UPSTREAM_ROWS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "piqa": {"plain_text/piqa-validation.parquet": [
        {"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper.", "sol2": "Put them in a fridge.",
         "label": 0},
        {"goal": "Open a jar lid that is stuck.", "sol1": "Freeze the lid.", "sol2": "Run the lid under hot water.",
         "label": 1},
        {"goal": "Keep bread fresh.", "sol1": "Store it in a sealed bag.", "sol2": "Leave it in the sun.", "label": 0},
    ]},
    "winogrande": {"winogrande_xl/validation-00000-of-00001.parquet": [
        {"sentence": "The trophy didn't fit in the case because _ was too big.", "option1": "trophy",
         "option2": "case", "answer": "1"},
        {"sentence": "The trophy didn't fit in the case because _ was too small.", "option1": "trophy",
         "option2": "case", "answer": "2"},
    ]},
    "gsm8k": {
        "main/test-00000-of-00001.parquet": [
            {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
             "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
            {"question": "A box holds 4 pens. How many pens are in 3 boxes?", "answer": "4 * 3 = 12\n#### 12"},
        ],
        "main/train-00000-of-00001.parquet": [
            {"question": "Sam had 10 marbles and lost 4. How many are left?", "answer": "10 - 4 = 6\n#### 6"},
        ],
    },
    "wikitext2-ppl": {
        "wikitext-2-v1/test-00000-of-00001.parquet": [
            {"text": ""}, {"text": " = Robert <unk> = \n"}, {"text": ""},
            {"text": " Robert <unk> is an English film , television and theatre actor . \n"}, {"text": ""},
        ],
        "wikitext-2-v1/validation-00000-of-00001.parquet": [
            {"text": ""}, {"text": " = Homarus gammarus = \n"}, {"text": ""},
            {"text": " Homarus gammarus is a species of clawed lobster . \n"},
        ],
    },
    "boolq": {"boolq/validation-00000-of-00001.parquet": [
        {"question": "is the sky blue on a clear day", "passage": "Rayleigh scattering makes the sky look blue.",
         "idx": 0, "label": 1},
        {"question": "do fish breathe air", "passage": "Most fish take oxygen from water through gills.",
         "idx": 1, "label": 0},
    ]},
    "hellaswag": {"data/validation-00000-of-00001.parquet": [
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he", "endings": [" is using wrap to wrap a pair of skis.",
                                                              " is ripping level tiles off.",
                                                              " is holding a rubik's cube.",
                                                              " starts pulling up roofing on a roof."],
         "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
        {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell.",
         "ctx_b": "she", "ctx": "A lady walks to a barbell. she",
         "endings": [" swings and lands.", " lifts the barbell.", " eats it.", " sings."],
         "source_id": "activitynet~v_-lJS58hyo1c", "split": "val", "split_type": "zeroshot", "label": "1"},
    ]},
    "arc-easy": {"ARC-Easy/test-00000-of-00001.parquet": [
        _mc("Which gas do plants take in?", "question", ["oxygen", "carbon dioxide", "helium"], "B", "Mercury_1"),
        _mc("Which is a mammal?", "question", ["shark", "whale", "trout", "eel"], "B", "Mercury_2"),
    ]},
    "arc-challenge": {"ARC-Challenge/test-00000-of-00001.parquet": [
        _mc("What is 2 + 2?", "question", ["3", "4", "5", "22"], "B", "Mercury_3"),
        _mc("Which planet is largest?", "question", ["Mars", "Venus", "Jupiter", "Mercury"], "C", "Mercury_4"),
        _mc("Which state of water is ice?", "question", ["solid", "liquid", "gas"], "A", "Mercury_5"),
    ]},
    "openbookqa": {"main/test-00000-of-00001.parquet": [
        _mc("The sun is responsible for", "question_stem", ["puppies learning tricks", "plants sprouting",
                                                            "rain", "snow"], "B", "7-980"),
        _mc("A magnet attracts", "question_stem", ["wood", "iron", "glass", "paper"], "B", "9-2"),
    ]},
    "truthfulqa-mc2": {"multiple_choice/validation-00000-of-00001.parquet": [
        {"question": "What happens if you eat a pomegranate?",
         "mc1_targets": {"choices": ["Nothing in particular happens.", "You must spend winter underground."],
                         "labels": [1, 0]},
         "mc2_targets": {"choices": ["Nothing in particular happens.", "You digest it.",
                                     "You must spend winter underground."], "labels": [1, 1, 0]}},
        {"question": "Can pigs fly?",
         "mc1_targets": {"choices": ["No, pigs cannot fly.", "Yes."], "labels": [1, 0]},
         "mc2_targets": {"choices": ["No, pigs cannot fly.", "Yes, pigs can fly."], "labels": [1, 0]}},
    ]},
    "ifeval": {"ifeval_input_data.jsonl": [
        {"key": 1000, "prompt": "Write two sentences about tea without using any commas.",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 1001, "prompt": "Answer in at least 20 words: why is the sky blue?",
         "instruction_id_list": ["length_constraints:number_words"],
         "kwargs": [{"relation": "at least", "num_words": 20}]},
    ]},
    "popqa": {"test.tsv": [
        {"id": "4222362", "subj": "George Rankin", "prop": "occupation", "obj": "politician",
         "question": "What is George Rankin's occupation?",
         "possible_answers": json.dumps(["politician", "political leader"]), "s_pop": "142"},
        {"id": "1", "subj": "Paris", "prop": "country", "obj": "France", "question": "In what country is Paris?",
         "possible_answers": json.dumps(["France", "French Republic"]), "s_pop": "99999"},
    ]},
    "humaneval": {"openai_humaneval/test-00000-of-00001.parquet": [
        {"task_id": "HumanEval/0", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n",
         "canonical_solution": "    return a + b\n",
         "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "entry_point": "add"},
    ]},
    "humaneval-plus": {"test.jsonl": [
        {"task_id": "HumanEval/0", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n",
         "canonical_solution": "    return a + b\n", "entry_point": "add",
         "test": "def check(candidate):\n    inputs = [[1, 2], [3, 4]]\n    results = [3, 7]\n"
                 "    for inp, exp in zip(inputs, results):\n        assert candidate(*inp) == exp\n"},
    ]},
    "livecodebench": {name: [_livecodebench(f"q{i}", functional=i == 2)]
                      for i, name in enumerate(("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl",
                                                "test5.jsonl"), start=1)},
    "aime24": {"aime_2024_problems.parquet": [
        {"ID": "2024-I-1", "Problem": "Find the remainder when $2^{10}$ is divided by $1000$.",
         "Solution": "$2^{10} = 1024$, so the remainder is $\\boxed{24}$.", "Answer": 24},
    ]},
    "aime25": {"test.jsonl": [
        {"id": "I-1", "problem": "Find the sum of all integer bases $b > 9$ for which $17_b$ divides $97_b$.",
         "answer": "70"},
    ]},
    "amc23": {"test-00000-of-00001.parquet": [
        {"id": 0, "question": "What is $1 + 1$?", "answer": 2.0, "url": "https://example.org/amc/1"},
        {"id": 1, "question": "What is $3 \\cdot 12$?", "answer": 36.0, "url": "https://example.org/amc/2"},
    ]},
    "math500": {"test.jsonl": [
        {"problem": "Compute $\\frac{1}{2} + \\frac{1}{2}$.", "solution": "It is $\\boxed{1}$.", "answer": "1",
         "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
    ]},
    "gpqa-diamond": {"gpqa_diamond.csv": [
        {"Record ID": "rec1", "Question": "Which particle carries the electromagnetic force?",
         "Correct Answer": "Photon", "Incorrect Answer 1": "Gluon", "Incorrect Answer 2": "W boson",
         "Incorrect Answer 3": "Graviton", "Explanation": "Photons mediate electromagnetism,\nas QED says."},
        {"Record ID": "rec2", "Question": "What is the pH of pure water at 25 C?", "Correct Answer": "7",
         "Incorrect Answer 1": "0", "Incorrect Answer 2": "14", "Incorrect Answer 3": "1", "Explanation": ""},
    ]},
    "jeebench": {"test.json": [
        {"subject": "phy", "description": "JEE Adv 2016 Paper 1", "gold": "B", "index": 1, "type": "MCQ",
         "question": "Which is a vector?\n\n(A) mass\n\n(B) velocity\n\n(C) time\n\n(D) energy"},
        {"subject": "math", "description": "JEE Adv 2016 Paper 1", "gold": "4", "index": 2, "type": "Integer",
         "question": "What is $2+2$?"},
    ]},
}
"""Per task: {file path in the repo: rows}. Every source file has rows here."""


def _encode(path: str, rows: list[dict[str, Any]]) -> bytes:
    if path.endswith(".parquet"):
        return parquet(rows)
    if path.endswith(".jsonl"):
        return jsonl(rows)
    if path.endswith(".json"):
        return json.dumps(rows, indent=4).encode()
    if path.endswith((".csv", ".tsv")):
        return delimited(rows, "\t" if path.endswith(".tsv") else ",")
    raise ValueError(path)


def upstream_files() -> dict[tuple[str, str], dict[str, bytes]]:
    """{(repo id, revision): {repo path: bytes}} for every source (tasks sharing a repo share files)."""
    repos: dict[tuple[str, str], dict[str, bytes]] = {}
    for task, source in SOURCES.items():
        files = repos.setdefault((source.repo_id, source.revision), {"README.md": f"# {source.repo_id}\n".encode()})
        for path, rows in UPSTREAM_ROWS[task].items():
            files[path] = _encode(path, rows)
    return repos


def publish(hub, tasks: list[str] | None = None) -> dict[str, str]:
    """Publish the repos of `tasks` (all by default) on the loopback hub, pinned sources at their own
    commit id; returns {repo id: commit}."""
    wanted = {SOURCES[t].repo_id for t in (tasks or SOURCES)}
    gated = {s.repo_id for s in SOURCES.values() if s.gated}
    commits = {}
    for (repo_id, revision), files in upstream_files().items():
        if repo_id in wanted and not hub.has_repo(repo_id):
            pinned = SOURCES[next(t for t, s in SOURCES.items() if s.repo_id == repo_id)].pinned
            commits[repo_id] = hub.add_repo(repo_id, files, gated=repo_id in gated,
                                            commit=revision if pinned else None)
    return commits
