"""Where each catalog task's data comes from on the Hugging Face Hub: one declarative table.

Per task: the dataset repo, the revision (a commit where a public source pins one, else a branch;
the commit the Hub resolves is recorded in the manifest either way), the conversions from the
repo's files to the local layout, whether the repo is gated and what to accept there, and
`verified`.

`verified: True` means the repo's file names and row fields were seen in public code or docs that
read those very files (`evidence` says where); nothing here was downloaded from the real Hub by
PruneBoard's tests, which serve fixture files in these formats from a loopback Hub. A source not
seen that way is `verified: False`, and `python -m jobs tasks --json` shows it.

To add a task's source: add a `HubSource` below (conversions from `backend.taskdata.convert`) and
a fixture in its upstream format to `tests/test_data_fetch.py`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from backend.taskdata.convert import (
    Conversion,
    json_list,
    livecodebench_tests,
    piqa_split,
    rows,
    text_lines,
    truthfulqa_targets,
    verbatim,
)
from backend.tasks.base import fetch_command

__all__ = ["HubSource", "SOURCES", "get_source"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubSource:
    """A task's data in a Hub dataset repo and how it becomes the task's local files."""

    task: str
    repo_id: str
    revision: str
    conversions: tuple[Conversion, ...]
    verified: bool
    evidence: str
    gated: str | None = None
    """None: public. Otherwise what the user must accept on the Hub (the fetch needs HF_TOKEN)."""
    repo_type: str = "dataset"

    @property
    def files(self) -> tuple[str, ...]:
        """The repo files downloaded, in order, each once."""
        return tuple(dict.fromkeys(f for c in self.conversions for f in c.sources))

    @property
    def outputs(self) -> tuple[str, ...]:
        """The data-dir files written (relative to PRUNEBOARD_DATA_DIR)."""
        return tuple(t for c in self.conversions for t in c.targets)

    @property
    def pinned(self) -> bool:
        """Whether `revision` is a commit (else a branch the Hub resolves at fetch time)."""
        return bool(_COMMIT.match(self.revision))

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}"

    def describe(self) -> dict[str, Any]:
        """The source as `python -m jobs tasks --json` shows it."""
        return {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "revision": self.revision,
            "pinned": self.pinned,
            "files": list(self.files),
            "writes": list(self.outputs),
            "gated": self.gated is not None,
            "accept": self.gated,
            "verified": self.verified,
            "evidence": self.evidence,
            "fetch_command": fetch_command(self.task),
        }


_ARC = "allenai/ai2_arc", "210d026faf9955653af8916fad021475a3f00453"
_ARC_EVIDENCE = ("allenai/ai2_arc@210d026 ARC-*/test-00000-of-00001.parquet with their sha256, pinned in public "
                 "benchmark builders; fields id, question, choices {text, label}, answerKey (dataset features)")
_LIVECODEBENCH_V5 = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl")

SOURCES: dict[str, HubSource] = {s.task: s for s in (
    HubSource(
        "piqa", "ybisk/piqa", "078a131412f46a38025a762322c174a8bae2610c",
        (piqa_split("plain_text/piqa-validation.parquet", "piqa/dev.jsonl", "piqa/dev-labels.lst"),),
        verified=True,
        evidence="plain_text/piqa-validation.parquet at this commit read by a public eval script (1838 rows; "
                 "goal, sol1, sol2, label); lm-eval 0.4.13 reads the mirror baber/piqa instead"),
    HubSource(
        "winogrande", "allenai/winogrande", "01e74176c63542e6b0bcb004dcdea22d94fb67b5",
        (rows("winogrande_xl/validation-00000-of-00001.parquet", "winogrande/dev.jsonl"),),
        verified=True,
        evidence="winogrande_xl/validation-00000-of-00001.parquet at this commit in public benchmark builders "
                 "(sentence, option1, option2, answer); lm-eval's winogrande reads allenai/winogrande, "
                 "winogrande_xl, whose validation split is the 1267-row dev set"),
    HubSource(
        "gsm8k", "openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866",
        (rows("main/test-00000-of-00001.parquet", "gsm8k/test.jsonl"),
         rows("main/train-00000-of-00001.parquet", "gsm8k/train.jsonl")),
        verified=True,
        evidence="main/{test,train}-00000-of-00001.parquet (question, answer) in many public loaders; this "
                 "commit pinned by public benchmark builders and a dataset card's source table"),
    HubSource(
        "wikitext2-ppl", "Salesforce/wikitext", "b08601e04326c79dfdd32d625aee71d232d685c3",
        (text_lines("wikitext-2-v1/test-00000-of-00001.parquet", "wikitext2/test.txt"),
         text_lines("wikitext-2-v1/validation-00000-of-00001.parquet", "wikitext2/valid.txt")),
        verified=True,
        evidence="wikitext-2-v1/{test,validation}-00000-of-00001.parquet at this commit in a datasets download "
                 "record and public scripts (one `text` column, 4358 test rows); wikitext-2-v1 is the "
                 "tokenised (<unk>) set of ../shared/data/wikitext2"),
    HubSource(
        "boolq", "aps/super_glue", "5234c61e804e85e5994b14b002fa9ec34487bcfb",
        (rows("boolq/validation-00000-of-00001.parquet", "boolq/dev.jsonl"),),
        verified=True,
        evidence="{config}/validation-00000-of-00001.parquet at this commit in a public SuperGLUE pack builder "
                 "(passage, question, label); lm-eval's boolq reads aps/super_glue, boolq"),
    HubSource(
        "hellaswag", "Rowan/hellaswag", "218ec52e09a7e7462a5400043bb9a69a41d06b76",
        (rows("data/validation-00000-of-00001.parquet", "hellaswag/hellaswag_val.jsonl"),),
        verified=True,
        evidence="data/validation-00000-of-00001.parquet at this commit, with its sha256, in public eval code "
                 "(10042 rows; activity_label, ctx_a, ctx_b, ctx, endings, label); lm-eval's hellaswag "
                 "reads Rowan/hellaswag"),
    HubSource(
        "arc-easy", *_ARC,
        (rows("ARC-Easy/test-00000-of-00001.parquet", "arc/ARC-Easy-Test.jsonl"),),
        verified=True, evidence=_ARC_EVIDENCE),
    HubSource(
        "arc-challenge", *_ARC,
        (rows("ARC-Challenge/test-00000-of-00001.parquet", "arc/ARC-Challenge-Test.jsonl"),),
        verified=True, evidence=_ARC_EVIDENCE),
    HubSource(
        "openbookqa", "allenai/openbookqa", "388097ea7776314e93a529163e0fea805b8a6454",
        (rows("main/test-00000-of-00001.parquet", "openbookqa/test.jsonl"),),
        verified=True,
        evidence="main/test-00000-of-00001.parquet at this commit, with its sha256, in a public benchmark "
                 "builder (id, question_stem, choices, answerKey)"),
    HubSource(
        "truthfulqa-mc2", "truthfulqa/truthful_qa", "741b8276f2d1982aa3d5b832d3ee81ed3b896490",
        (truthfulqa_targets("multiple_choice/validation-00000-of-00001.parquet", "truthfulqa/v1/mc_task.json"),),
        verified=True,
        evidence="multiple_choice/validation-00000-of-00001.parquet at this commit (817 rows, 271033 bytes, "
                 "sha256 23f08e23...) in public code; mc1_targets/mc2_targets as {choices, labels}"),
    HubSource(
        "ifeval", "google/IFEval", "966cd89545d6b6acfd7638bc708b98261ca58e84",
        (verbatim("ifeval_input_data.jsonl", "ifeval/input_data.jsonl"),),
        verified=True,
        evidence="ifeval_input_data.jsonl at this commit (541 rows, sha256 6a85310c...) in public eval code; "
                 "the original release's key, prompt, instruction_id_list, kwargs"),
    HubSource(
        "popqa", "akariasai/PopQA", "main",
        (rows("test.tsv", "popqa/test.jsonl"),),
        verified=True,
        evidence="the repo's one file test.tsv (14267 rows; question, possible_answers as JSON text, subj, "
                 "prop, obj, ...) read with a tab-separated csv reader in several public loaders"),
    HubSource(
        "humaneval", "openai/openai_humaneval", "main",
        (rows("openai_humaneval/test-00000-of-00001.parquet", "humaneval/HumanEval.jsonl"),),
        verified=True,
        evidence="openai_humaneval/test-00000-of-00001.parquet in many public loaders; fields task_id, prompt, "
                 "canonical_solution, test, entry_point (lm-eval's humaneval reads them)"),
    HubSource(
        "humaneval-plus", "evalplus/humanevalplus", "main",
        (verbatim("test.jsonl", "humanevalplus/HumanEvalPlus.jsonl"),),
        verified=True,
        evidence="test.jsonl (164 rows, 11452868 bytes, LFS sha256 908377f1...) in public eval notes; HumanEval's "
                 "fields with EvalPlus's inputs inside `test` (lm-eval's humaneval_plus reads this repo)"),
    HubSource(
        "livecodebench", "livecodebench/code_generation_lite", "0fe84c3912ea0c4d4a78037083943e8f0c4dd505",
        (livecodebench_tests(_LIVECODEBENCH_V5, "livecodebench/test.jsonl"),),
        verified=True,
        evidence="test.jsonl ... test6.jsonl at this commit in public benchmark builders (release v5 = test "
                 "to test5); private_test_cases as base64 zlib pickled JSON, decoded as public loaders do"),
    HubSource(
        "aime24", "Maxwell-Jia/AIME_2024", "main",
        (rows("aime_2024_problems.parquet", "aime/aime24.jsonl",
              {"id": "ID", "problem": "Problem", "expected_answer": "Answer"}),),
        verified=False,
        evidence="aime_2024_problems.parquet (ID, Problem, Answer) in three public download scripts, and "
                 "lm-eval's aime24 reads this repo's Problem and Answer; but other public scripts name "
                 "train.jsonl or aime_2024.jsonl at main, so the file list is not settled (and not pinned)"),
    HubSource(
        "aime25", "math-ai/aime25", "563bb8404243c5f09de6ec262f2db674fe5bce9b",
        (verbatim("test.jsonl", "aime/aime25.jsonl"),),
        verified=True,
        evidence="test.jsonl at this commit (30 rows; id, problem, answer; sha256 b4e273c0...) pinned in "
                 "public builders; lm-eval's aime25 reads this repo"),
    HubSource(
        "amc23", "math-ai/amc23", "80815d37005feb82cd7f8fbc6901d5d3eff43057",
        (rows("test-00000-of-00001.parquet", "aime/amc23.jsonl"),),
        verified=True,
        evidence="test-00000-of-00001.parquet at this commit (40 rows; id, question, answer, url) pinned in "
                 "a public workload builder"),
    HubSource(
        "math500", "HuggingFaceH4/MATH-500", "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
        (verbatim("test.jsonl", "math500/test.jsonl"),),
        verified=True,
        evidence="test.jsonl at this commit (sha256 35dc4108...) pinned in public scripts; problem, solution, "
                 "answer, subject, level, unique_id"),
    HubSource(
        "gpqa-diamond", "Idavidrein/gpqa", "main",
        (rows("gpqa_diamond.csv", "gpqa/gpqa_diamond.jsonl",
              {name: name for name in ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                       "Incorrect Answer 3")}),),
        verified=True,
        evidence="gpqa_diamond.csv read as hf://datasets/Idavidrein/gpqa/gpqa_diamond.csv in public code and "
                 "answering 200 only to an authenticated request; its columns Question, Correct Answer, "
                 "Incorrect Answer 1-3 are what lm-eval's gpqa utils read",
        gated="the dataset's access conditions on https://huggingface.co/datasets/Idavidrein/gpqa (you agree "
              "not to reveal its examples in plain text or images online)"),
    HubSource(
        "jeebench", "daman1209arora/jeebench", "d070d1113ce365df05903763a2017ec2d0d56118",
        (json_list("test.json", "jeebench/dataset.json",
                   ("description", "index", "subject", "type", "question", "gold")),),
        verified=True,
        evidence="test.json at this commit (the final 515-question release, 2016-2023; subject, description, "
                 "gold, index, type, question) read in full by a public dataset card; ../shared/data has the "
                 "450-question first release"),
)}


def get_source(task: str) -> HubSource | None:
    """The task's Hub source, None for tasks that need no data (synthetic) or have none."""
    return SOURCES.get(task)
