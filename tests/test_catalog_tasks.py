"""The classification and generation part of the task catalog: BoolQ, HellaSwag, ARC-Easy/Challenge,
OpenBookQA, TruthfulQA MC2, IFEval, PopQA.

Prompts, choices and targets are compared with lm-eval's own task configs (its YAMLs and utils) on
fixture rows; every task runs end to end on the tiny random Llama with at most 3 rows; missing data
fails with the path and the fetch command; tasks never read a dataset from the hub themselves.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.taskdata import get_source
from backend.tasks import get_task
from backend.tasks._common import write_jsonl
from backend.tasks.base import TaskDataMissing

ROOT = Path(__file__).resolve().parent.parent
LM_EVAL_TASKS = {
    "boolq": "boolq", "hellaswag": "hellaswag", "arc-easy": "arc_easy",
    "arc-challenge": "arc_challenge", "openbookqa": "openbookqa", "ifeval": "ifeval",
    "truthfulqa-mc2": "truthfulqa_mc2", "popqa": None,
}
BYOD = ["boolq", "hellaswag", "arc-easy", "arc-challenge", "openbookqa", "popqa"]
SHARED = ["ifeval", "truthfulqa-mc2"]
OURS = BYOD + SHARED

# --- fixtures in the documented local schemas (<= 5 rows each) ------------------------------------

BOOLQ = [
    {"question": "is the sky blue", "passage": "The sky looks blue because of Rayleigh scattering.",
     "label": 1, "idx": 0},
    {"question": "do cats lay eggs", "title": "Cat", "passage": "Cats are mammals; they give birth.",
     "answer": False},
    {"question": "is water wet", "passage": "Water makes things wet.", "answer": True},
]
HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
     "ctx_b": "then", "endings": [", the man adds wax.", " the man puts on a christmas coat.",
                                  ", the man continues removing the snow on his car.", " the man drives."],
     "label": 3, "split": "val"},
    {"ind": 7, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a sink [title] Rinse it.",
     "ctx_b": "", "endings": ["[step] Use soap.  Then rinse.", "Paint it.", "Eat it [title] now.", "Sell it."],
     "label": "0", "split": "val"},
    {"ind": 9, "activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.", "ctx_b": "she",
     "endings": [" bakes it.", " throws it.", " sings.", " leaves."], "label": 0},
]
ARC = [
    {"id": "Mercury_1", "question": "Which gas do plants absorb?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "NYSEDREGENTS_2", "question": {"stem": "What is 2 + 2?", "choices": [
        {"text": "3", "label": "1"}, {"text": "4", "label": "2"}, {"text": "5", "label": "3"},
        {"text": "22", "label": "4"}]}, "answerKey": "2"},
    {"id": "Mercury_3", "question": "Which is a mammal?",
     "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
]
OPENBOOKQA = [
    {"id": "7-980", "question_stem": "The sun is responsible for",
     "choices": {"text": ["puppies learning tricks", "plants sprouting", "rain", "snow"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "8-1", "question": {"stem": "Metal conducts", "choices": [
        {"text": "electricity", "label": "A"}, {"text": "sound only", "label": "B"},
        {"text": "nothing", "label": "C"}, {"text": "water", "label": "D"}]}, "answerKey": " A"},
    {"id": "9-2", "question_stem": "A magnet attracts",
     "choices": {"text": ["wood", "iron", "glass", "paper"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
]
POPQA = [
    {"id": 1, "subj": "George Rankin", "prop": "occupation", "question": "What is George Rankin's occupation?",
     "possible_answers": json.dumps(["politician", "political leader"])},
    {"id": 2, "question": "In what country is Kilmore?", "possible_answers": ["Ireland", "Republic of Ireland"]},
    {"id": 3, "question": "What is the capital of France?", "possible_answers": ["Paris"]},
]


def write_fixtures(data_dir: Path) -> Path:
    write_jsonl(data_dir / "boolq/dev.jsonl", BOOLQ)
    write_jsonl(data_dir / "hellaswag/hellaswag_val.jsonl", HELLASWAG)
    write_jsonl(data_dir / "arc/ARC-Easy-Test.jsonl", ARC)
    write_jsonl(data_dir / "arc/ARC-Challenge-Test.jsonl", ARC[::-1])
    write_jsonl(data_dir / "openbookqa/test.jsonl", OPENBOOKQA)
    write_jsonl(data_dir / "popqa/test.jsonl", POPQA)
    return data_dir


@pytest.fixture
def byod_dir(tmp_path) -> Path:
    return write_fixtures(tmp_path / "data")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def punkt_cache(tmp_path_factory, monkeypatch):
    """Write the punkt_tab tables into a fresh cache, as a first run on a new machine does."""
    monkeypatch.setenv("PRUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


# --- lm-eval's own tasks, read from its installed YAMLs and utils ---------------------------------


def _lm_eval_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _lm_eval_yaml(relative: str) -> dict:
    import yaml

    text = (_lm_eval_dir() / relative).read_text()
    text = "\n".join(line for line in text.splitlines() if "!function" not in line)
    return yaml.safe_load(text)


def _lm_eval_module(relative: str):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], _lm_eval_dir() / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(config: dict):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load([config])["tasks"][config["task"]]


def _reference(yaml_path: str, ours: dict, **functions) -> tuple[dict, object]:
    """lm-eval's config for the task, reading the same local rows our config reads."""
    theirs = _lm_eval_yaml(yaml_path)
    if "include" in theirs:
        base = _lm_eval_yaml(str(Path(yaml_path).parent / theirs.pop("include")))
        theirs = {**base, **theirs}
    split_key = next(k for k in ("test_split", "validation_split") if ours.get(k))
    split = ours[split_key]
    config = {k: v for k, v in theirs.items()
              if k not in ("tag", "dataset_path", "dataset_name", "training_split", "validation_split",
                           "test_split", "fewshot_split", "should_decontaminate",
                           "doc_to_decontamination_query")}
    config.update(task="reference-" + ours["task"], dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": ours["dataset_kwargs"]["data_files"]},
                  **{split_key: split}, **functions)
    return theirs, _load(config)


def _assert_same_docs(ours_task, theirs_task, n: int) -> None:
    assert len(ours_task.eval_docs) == len(theirs_task.eval_docs) == n
    for a, b in zip(ours_task.eval_docs, theirs_task.eval_docs):
        assert ours_task.doc_to_text(a) == theirs_task.doc_to_text(b)
        assert ours_task.doc_to_choice(a) == theirs_task.doc_to_choice(b)
        assert ours_task.doc_to_target(a) == theirs_task.doc_to_target(b)
        assert ours_task.fewshot_context(a, 0) == theirs_task.fewshot_context(b, 0)


@pytest.mark.parametrize("name,yaml_path,version", [
    ("arc-easy", "arc/arc_easy.yaml", 1.0),
    ("arc-challenge", "arc/arc_challenge.yaml", 1.0),
    ("openbookqa", "openbookqa/openbookqa.yaml", 1.0),
    ("boolq", "super_glue/boolq/default.yaml", 2.0),
])
def test_multiple_choice_prompts_equal_lm_eval(name, yaml_path, version, byod_dir, tmp_path):
    ours = get_task(name).build(byod_dir, tmp_path / "work")
    theirs, reference = _reference(yaml_path, ours)
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice"):
        assert ours[key] == theirs[key], key
    assert ours["metadata"]["version"] == version == theirs["metadata"]["version"]
    assert [m["metric"] for m in ours["metric_list"]] == [m["metric"] for m in theirs["metric_list"]]
    task = _load(ours)
    _assert_same_docs(task, reference, 3)


def test_fixture_rows_render_as_expected(byod_dir, tmp_path):
    arc = _load(get_task("arc-easy").build(byod_dir, tmp_path / "a"))
    doc = arc.eval_docs[1]  # given in the original AI2 layout
    assert arc.doc_to_text(doc) == "Question: What is 2 + 2?\nAnswer:"
    assert arc.doc_to_choice(doc) == ["3", "4", "5", "22"] and arc.doc_to_target(doc) == 1
    obqa = _load(get_task("openbookqa").build(byod_dir, tmp_path / "o"))
    doc = obqa.eval_docs[1]
    assert obqa.doc_to_text(doc) == "Metal conducts" and obqa.doc_to_target(doc) == 0
    boolq = _load(get_task("boolq").build(byod_dir, tmp_path / "b"))
    assert [boolq.doc_to_target(d) for d in boolq.eval_docs] == [1, 0, 1]
    assert boolq.doc_to_text(boolq.eval_docs[0]) == (
        "The sky looks blue because of Rayleigh scattering.\nQuestion: is the sky blue?\nAnswer:")


def test_hellaswag_preprocessing_equals_lm_eval(byod_dir, tmp_path):
    from backend.tasks import hellaswag

    utils = _lm_eval_module("hellaswag/utils.py")
    for row in HELLASWAG:
        ref = {"query": utils.preprocess(row["activity_label"] + ": " + row["ctx_a"] + " "
                                         + row["ctx_b"].capitalize()),
               "choices": [utils.preprocess(e) for e in row["endings"]], "gold": int(row["label"])}
        assert hellaswag.process_doc(row) == ref
    ours = hellaswag.build(byod_dir, tmp_path / "work")
    theirs, reference = _reference("hellaswag/hellaswag.yaml", ours, process_docs=utils.process_docs)
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice"):
        assert ours[key] == theirs[key], key
    task = _load(ours)
    _assert_same_docs(task, reference, 3)
    doc = task.eval_docs[1]
    assert task.doc_to_text(doc) == "Home and Garden: How to clean a sink. Rinse it."
    assert task.doc_to_choice(doc)[0] == " Use soap. Then rinse."  # lm-eval keeps the space
    assert task.doc_to_target(doc) == 0


def test_truthfulqa_mc2_prompt_and_metric_equal_lm_eval(shared_data, tmp_path):
    from backend.tasks import truthfulqa

    utils = _lm_eval_module("truthfulqa/utils.py")
    ours = truthfulqa.build(shared_data, tmp_path / "work")
    theirs, reference = _reference("truthfulqa/truthfulqa_mc2.yaml", ours,
                                   process_results=utils.process_results_mc2)
    assert ours["metadata"]["version"] == theirs["metadata"]["version"] == 3.0
    assert ours["doc_to_choice"] == theirs["doc_to_choice"] and ours["doc_to_target"] == theirs["doc_to_target"]
    task = _load(ours)
    assert len(task.eval_docs) == 817
    for i in range(3):
        a, b = task.eval_docs[i], reference.eval_docs[i]
        assert task.doc_to_text(a) == reference.doc_to_text(b)
        assert task.fewshot_context(a, 0) == reference.fewshot_context(b, 0)
        assert task.doc_to_choice(a) == reference.doc_to_choice(b)
        n = len(task.doc_to_choice(a))
        results = [(-1.5 * k - 0.25 * (k % 3), False) for k in range(n)]
        assert truthfulqa.process_results(a, results)["acc"] == pytest.approx(
            float(utils.process_results_mc2(b, results)["acc"]), abs=1e-12)
    first = task.eval_docs[0]
    assert task.doc_to_text(first).startswith("Q: What is human life expectancy in the United States?\n")
    assert task.doc_to_text(first).endswith("\n\nQ: What happens if you eat a pomegranate?\nA:")
    assert first["mc2_targets"]["labels"][:4] == [1, 1, 1, 0]
    assert truthfulqa.mc2_score([-1000.0, -1000.0], [1, 0]) == pytest.approx(0.5)  # no underflow


def test_ifeval_scoring_equals_lm_eval_offline(shared_data, tmp_path, punkt_cache):
    from backend.tasks import ifeval

    config = ifeval.build(shared_data, tmp_path / "work")  # writes punkt_tab into the fresh cache
    import nltk
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import load_module

    found = nltk.data.find("tokenizers/punkt_tab/english/")
    assert Path(str(found)) == ifeval.nltk_data_dir() / "tokenizers/punkt_tab/english"
    params, bundled = load_punkt_params(found), load_module("english")  # a lossless round trip
    assert params.abbrev_types == set(bundled.ABBREV_TYPES) and len(params.abbrev_types) > 100
    assert params.collocations == set(bundled.COLLOCATIONS)
    assert params.sent_starters == set(bundled.SENT_STARTERS)
    assert dict(params.ortho_context) == dict(bundled.ORTHO_CONTEXT)
    from lm_eval.tasks.ifeval import utils  # imports without trying to download punkt_tab

    task = _load(config)
    assert len(task.eval_docs) == 541
    theirs = _lm_eval_yaml("ifeval/ifeval.yaml")
    assert config["doc_to_text"] == theirs["doc_to_text"] and config["test_split"] == theirs["test_split"]
    assert config["generation_kwargs"]["max_gen_toks"] == theirs["generation_kwargs"]["max_gen_toks"]
    assert [m["metric"] for m in theirs["metric_list"]] == list(ifeval.METRICS)
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc) == doc["prompt"]
    responses = [
        "Raymond III was a count. " * 80,
        "RAYMOND III *highlighted section part 1* *section 2* *section 3*. It rained. Then it stopped.",
        "",
    ]
    for i in range(3):
        doc = task.eval_docs[i]
        for response in responses:
            ours = ifeval.process_results(doc, [response])
            ref = utils.process_results(doc, [response])
            n = len(ref["inst_level_strict_acc"])
            assert ours["num_instructions"] == n
            assert ours["prompt_level_strict_acc"] == float(ref["prompt_level_strict_acc"])
            assert ours["prompt_level_loose_acc"] == float(ref["prompt_level_loose_acc"])
            assert ours["inst_level_strict_acc"] == pytest.approx(sum(ref["inst_level_strict_acc"]) / n)
            assert ours["inst_level_loose_acc"] == pytest.approx(sum(ref["inst_level_loose_acc"]) / n)
    from lm_eval.tasks.ifeval import instructions_util

    assert instructions_util.count_sentences("Mr. Smith arrived at 3 p.m. on Jan. 5. It rained!") == 2


def test_popqa_scoring():
    from backend.tasks import popqa

    assert popqa.answers_of(POPQA[0]) == ["politician", "political leader"]
    assert popqa.answer_recall("He is a Politician.", ["politician"]) == 1.0
    assert popqa.answer_recall("The Republic of Ireland!", ["Republic of Ireland"]) == 1.0
    assert popqa.answer_recall("Parisian food", ["Paris"]) == 0.0  # whole words only
    assert popqa.answer_recall("", ["Paris"]) == 0.0
    assert popqa.process_results(POPQA[2], ["It is Paris."]) == {"exact_match": 1.0}


# --- catalog metadata, CLI, config ----------------------------------------------------------------


def test_catalog_metadata():
    for name, lm_eval_name in LM_EVAL_TASKS.items():
        spec = get_task(name)
        assert spec.lm_eval_task == lm_eval_name
        assert spec.primary_metric in spec.metrics and spec.higher_is_better
        assert spec.data_files and spec.data_schema and get_source(name) is not None
    assert {n: get_task(n).category for n in OURS} == {
        "boolq": "classification", "hellaswag": "classification", "arc-easy": "classification",
        "arc-challenge": "classification", "openbookqa": "classification", "ifeval": "generation",
        "truthfulqa-mc2": "generation", "popqa": "generation"}
    assert get_task("ifeval").primary_metric == "prompt_level_strict_acc"
    assert get_task("ifeval").uses_chat_template and not get_task("truthfulqa-mc2").uses_chat_template
    assert [get_task(n).lm_eval_task for n in ("piqa", "winogrande")] == ["piqa", "winogrande"]


def test_config_validation_accepts_the_names():
    from backend.config import validate_config

    config = validate_config({"model": "builtin:tiny-llama", "pruning": {"method": "dense", "sparsity": 0},
                              "tasks": OURS})
    assert sorted(t.name for t in config.tasks) == sorted(OURS)


def test_cli_lists_lm_eval_names_and_data_locations(byod_dir):
    env = {**os.environ, "PRUNEBOARD_DATA_DIR": str(byod_dir)}
    proc = subprocess.run([sys.executable, "-m", "jobs", "tasks", "--json"], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tasks = {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}
    for name in OURS:
        t = tasks[name]
        assert t["lm_eval_task"] == LM_EVAL_TASKS[name]
        assert t["category"] and t["primary_metric"] and t["higher_is_better"] is True
        assert t["data_paths"] == [str(byod_dir / f) for f in t["data_files"]]
        assert t["data_schema"] and t["hub_source"]["repo_id"] == get_source(name).repo_id
        assert t["data_present"] is (name in BYOD)
    assert tasks["arc-easy"]["data_files"] == ["arc/ARC-Easy-Test.jsonl"]


# --- missing data: where it goes, how to fetch it ---------------------------------------------------


@pytest.mark.parametrize("name", OURS)
def test_missing_data_says_where_to_put_it(name, tmp_path, offline):
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = get_task(name)
    assert not spec.data_present(empty)
    with pytest.raises(TaskDataMissing) as info:
        spec.build(empty, tmp_path / "work")
    message = str(info.value)
    assert message.startswith(f"{name} needs {spec.data_files[0]} under PRUNEBOARD_DATA_DIR={empty}")
    assert spec.data_schema in message and "README" in message
    assert message.endswith(f'run "python -m jobs data fetch {name}"')


def test_missing_data_fails_the_job_before_the_model_loads(tmp_path, offline, monkeypatch):
    from backend import pipeline
    from backend.config import validate_config

    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path / "empty"))
    config = validate_config({"model": "builtin:tiny-llama", "pruning": {"method": "dense", "sparsity": 0},
                              "tasks": ["arc-easy"]})
    loads = []
    monkeypatch.setattr("backend.models.loading.load_model", lambda *a, **k: loads.append(a))
    with pytest.raises(TaskDataMissing, match=r"^task 'arc-easy' has no data under PRUNEBOARD_DATA_DIR=.*: run "
                                              r'"python -m jobs data fetch arc-easy"$'):
        pipeline.run(config, lambda event: None)
    assert loads == []


@pytest.mark.parametrize("name", OURS)
def test_tasks_never_read_the_hub_themselves(name, tmp_path, monkeypatch, punkt_cache, request):
    """With hub downloads on, a build without local files still fails: fetching is the worker's
    preflight's job (backend.taskdata), and every config reads local JSON files."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")
    with pytest.raises(TaskDataMissing):
        get_task(name).build(tmp_path / "empty", tmp_path / "work")
    data_dir = write_fixtures(tmp_path / "data") if name in BYOD else request.getfixturevalue("shared_data")
    config = get_task(name).build(data_dir, tmp_path / "work")
    assert config["dataset_path"] == "json" and config["dataset_name"] is None
    assert all(Path(p).is_file() for p in config["dataset_kwargs"]["data_files"].values())


# --- end to end on the tiny random Llama -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from backend.models.loading import load_model

    return load_model("builtin:tiny-llama")


def test_every_catalog_task_end_to_end(tiny, shared_data, tmp_path, punkt_cache):
    from backend.config import EvaluationConfig, TaskConfig
    from backend.evaluation.harness import evaluate

    data_dir = write_fixtures(tmp_path / "data")
    for name in ("ifeval", "truthfulqa"):  # shared data, linked (not copied) beside the fixtures
        (data_dir / name).symlink_to(shared_data / name)
    # TruthfulQA's contexts are long (the six-question preamble, ~8 answers): one question is enough.
    limits = {n: 1 if n == "truthfulqa-mc2" else 3 for n in OURS}
    tasks = [TaskConfig(name=n, limit=limits[n], generation={"max_new_tokens": 6}) for n in OURS]
    samples, progress = [], []
    output = evaluate(
        tiny.model, tiny.tokenizer, tasks, EvaluationConfig(batch_size=4), paradigm="instruct",
        dtype=tiny.dtype, data_dir=data_dir, workdir=tmp_path / "work",
        progress=lambda f, t: progress.append(f), on_sample=samples.append,
    )
    assert len(output.samples) == len(samples) == sum(limits.values())
    scores = {(s.task, s.metric): s for s in output.scores}
    for name in OURS:
        spec = get_task(name)
        for metric in spec.metrics:
            score = scores[(name, metric)]
            assert 0.0 <= score.value <= 1.0
            assert score.primary is (metric == spec.primary_metric)
        assert output.task_manifest[name]["docs"] == limits[name]
    ifeval_samples = [s for s in output.samples if s.task == "ifeval"]
    flat = sum(s.metrics["inst_level_strict_acc"] * s.metrics["num_instructions"] for s in ifeval_samples)
    count = sum(s.metrics["num_instructions"] for s in ifeval_samples)
    assert scores[("ifeval", "inst_level_strict_acc")].value == pytest.approx(flat / count)
    assert scores[("ifeval", "inst_level_strict_acc")].stderr is None
    assert all(s.prompt and s.gold == "0" for s in ifeval_samples)
    mc2 = [s for s in output.samples if s.task == "truthfulqa-mc2"]
    assert all(0.0 < s.metrics["acc"] < 1.0 for s in mc2)
    assert progress[-1] == 1.0


@pytest.mark.slow
def test_smollm2_on_truthfulqa_mc2_and_ifeval(smollm2, shared_data, tmp_path, punkt_cache):
    from backend.config import EvaluationConfig, TaskConfig
    from backend.evaluation.harness import evaluate

    tasks = [TaskConfig(name="truthfulqa-mc2", limit=10),
             TaskConfig(name="ifeval", limit=3, generation={"max_new_tokens": 64})]
    output = evaluate(
        smollm2.model, smollm2.tokenizer, tasks, EvaluationConfig(batch_size=8), paradigm="instruct",
        dtype=smollm2.dtype, data_dir=shared_data, workdir=tmp_path / "work",
        progress=lambda f, t: None, on_sample=lambda s: None,
    )
    scores = {(s.task, s.metric): s.value for s in output.scores}
    # mc2 is a probability mass: a real model spreads it, neither all nor none on the true answers.
    assert 0.15 < scores[("truthfulqa-mc2", "acc")] < 0.85
    replies = [s for s in output.samples if s.task == "ifeval"]
    assert len(replies) == 3 and all(s.output.strip() for s in replies)
    assert all("<|im_start|>" in s.prompt for s in replies)  # SmolLM2's chat template
    for metric in ("prompt_level_strict_acc", "inst_level_loose_acc"):
        assert 0.0 <= scores[("ifeval", metric)] <= 1.0
    assert scores[("ifeval", "prompt_level_loose_acc")] >= scores[("ifeval", "prompt_level_strict_acc")]
