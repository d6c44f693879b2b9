"""The Submit form's logic (ui.forms) and the queue/submit services behind the Submit, Queue and
Findings tabs, without a browser."""
from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from backend.config import ConfigError, canonical_dict, validate_config
from backend.pruning import list_methods
from jobs import queue
from ui import forms, services
from ui.markdown import escape

HOSTILE = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned2=1"> '
           "[x](javascript:window.__pwned3=1)")


def _form(**changes):
    return {**forms.DEFAULT_FORM, **changes}


# --- the method dropdown and its parameters ---------------------------------------------------------


def test_method_choices_cover_the_registry_grouped_by_family():
    choices = forms.method_choices()
    assert {name for _, name in choices} == {m.name for m in list_methods()}
    families = [label.split(" · ")[0] for label, _ in choices]
    order = [forms.FAMILIES.index(f) for f in families]
    assert order == sorted(order), "methods are grouped in family order"
    assert ("unstructured · wanda", "wanda") in choices


def test_param_fields_follow_each_methods_params_model():
    wanda = {f.name: f for f in forms.param_fields("wanda")}
    assert wanda["pattern"].kind == "text" and wanda["pattern"].default == "unstructured"
    assert wanda["allocation"].kind == "choice"
    assert set(wanda["allocation"].choices) == {"uniform", "owl", "reconstruction-sensitivity"}
    assert wanda["owl_m"].kind == "number" and not wanda["owl_m"].integer and "> 0.0" in wanda["owl_m"].info
    sparsegpt = {f.name: f for f in forms.param_fields("sparsegpt")}
    assert sparsegpt["blocksize"].integer
    assert [(f.name, f.kind) for f in forms.param_fields("flap")] == [("bias_compensation", "bool"),
                                                                      ("standardize", "choice")]
    assert forms.param_fields("dense") == []
    # The pool of generic inputs is large enough for every method.
    counts = forms.slot_counts()
    for method in list_methods():
        for kind, fields in forms.param_slots(method.name).items():
            assert len(fields) <= counts[kind]


@pytest.mark.parametrize("method, params", [
    ("wanda", {"pattern": "2:4", "allocation": "owl", "owl_m": 7.0}),
    ("sparsegpt", {"blocksize": 64, "percdamp": 0.05}),
    ("flap", {"bias_compensation": False, "standardize": "per-module-type"}),
    ("llm-pruner", {"scope": "global", "importance": "vector", "keep_first_layers": 0}),
    ("mod-style", {"variant": "causal-threshold", "steps": 5}),
])
def test_slots_round_trip_method_params(method, params):
    layout = forms.param_slots(method)
    values = {kind: [forms.slot_value(f, params.get(f.name, f.default)) for f in fields]
              for kind, fields in layout.items()}
    assert forms.slots_to_params(method, values) == params


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_registered_method_fits_the_form(method):
    """Whatever a method's Params holds, the form shows it and reads it back (changed values only)."""
    layout = forms.param_slots(method)
    values = {kind: [forms.slot_value(f, f.default) for f in fields] for kind, fields in layout.items()}
    assert forms.slots_to_params(method, values) == {}
    numbers = [f for f in layout["number"] if f.default]
    if numbers:
        changed = numbers[0].default * 2
        values["number"][layout["number"].index(numbers[0])] = changed
        expected = {numbers[0].name: int(changed) if numbers[0].integer else changed}
        assert forms.slots_to_params(method, values) == expected


def test_slot_parsing_types_and_errors():
    blocksize = next(f for f in forms.param_fields("sparsegpt") if f.name == "blocksize")
    assert forms.parse_slot(blocksize, 64.0) == 64 and isinstance(forms.parse_slot(blocksize, 64.0), int)
    assert forms.parse_slot(blocksize, None) is None
    structured = forms.ParamField("layers", "text", None, optional=True, structured=True)
    assert forms.parse_slot(structured, "[1, 2, 3]") == [1, 2, 3]
    assert forms.parse_slot(structured, "  ") is None
    with pytest.raises(ConfigError, match="pruning.params.layers"):
        forms.parse_slot(structured, "[1, 2")
    # Values equal to the default stay out of the config (they do not change its hash).
    wanda = forms.param_slots("wanda")
    untouched = {kind: [f.default for f in fields] for kind, fields in wanda.items()}
    assert forms.slots_to_params("wanda", untouched) == {}


# --- form <-> config --------------------------------------------------------------------------------


ROUND_TRIP_FORMS = [
    _form(),
    _form(method="wanda", sparsity=0.5, params={"pattern": "2:4"}, calibration_source="text",
          calibration_path="wikitext2/valid.txt", calibration_samples=32, calibration_seq_len=512),
    _form(method="sparsegpt", sparsity=0.6, params={"allocation": "owl", "blocksize": 64},
          calibration_source="task-aligned", calibration_task="gsm8k", tasks=["gsm8k", "piqa"], limit=10,
          max_new_tokens=128, paradigm="think"),
    _form(method="flap", sparsity=0.3, params={"bias_compensation": False}, tasks=["synthetic-mc"], limit=None,
          batch_size=4, seed=3),
    _form(method="shortgpt", sparsity=0.25, recovery_enabled=True, recovery_data="synthetic", recovery_rank=4,
          recovery_steps=3, recovery_lr=1e-3, recovery_samples=8),
    _form(method="magnitude", sparsity=0.5, tasks=["wikitext2-ppl", "synthetic-arith"], max_new_tokens=16),
]


@pytest.mark.parametrize("form", ROUND_TRIP_FORMS, ids=lambda f: f["method"])
def test_form_to_config_round_trip(form):
    config = forms.form_to_config(form)
    result = forms.check(config)
    assert result.error is None, result.error
    assert result.config.pruning.method == form["method"]
    assert result.config.pruning.params == form["params"]
    back, _notes = forms.config_to_form(result.config)
    uses_calibration = forms.uses_calibration(form["method"], form["params"])
    for key in forms.FORM_KEYS:
        if key.startswith("calibration_") and not uses_calibration:
            continue  # not part of the config: the method reads no calibration data
        if key.startswith("recovery_") and not form["recovery_enabled"]:
            continue
        expected = sorted(form[key]) if key == "tasks" else form[key]
        assert back[key] == expected, key
    # The YAML the editor gets parses back to the same canonical config.
    yaml_text = forms.config_to_yaml(config)
    assert canonical_dict(validate_config(forms.editor_to_dict(yaml_text))) == canonical_dict(result.config)


def test_form_writes_only_what_the_method_uses():
    dense = forms.form_to_config(_form(method="dense", sparsity=0.4, calibration_source="text"))
    assert dense["pruning"] == {"method": "dense", "sparsity": 0.0}  # dense takes no sparsity
    assert "calibration" not in dense and "recovery" not in dense
    uniform = forms.form_to_config(_form(method="magnitude", sparsity=0.5))
    assert "calibration" not in uniform  # uniform magnitude reads no data
    owl = forms.form_to_config(_form(method="magnitude", sparsity=0.5, params={"allocation": "owl"}))
    assert owl["calibration"]["source"] == "synthetic"
    budget = forms.form_to_config(_form(tasks=["synthetic-mc", "synthetic-arith"], max_new_tokens=24, limit=0))
    by_name = {t["name"]: t for t in budget["tasks"]}
    assert by_name["synthetic-arith"] == {"name": "synthetic-arith", "generation": {"max_new_tokens": 24}}
    assert by_name["synthetic-mc"] == {"name": "synthetic-mc"}  # log-likelihood: no budget; 0 = all rows


def test_config_to_form_notes_what_the_form_cannot_show():
    config = validate_config({"model": "builtin:tiny-llama", "keep_model": True, "tasks": [
        {"name": "synthetic-mc", "limit": 5, "num_fewshot": 2}, {"name": "synthetic-arith", "limit": 8}]})
    form, notes = forms.config_to_form(config)
    assert form["limit"] == 8
    assert any("different limits" in n for n in notes)
    assert any("num_fewshot" in n for n in notes)
    assert any("keep_model" in n for n in notes)


@pytest.mark.parametrize("form, message", [
    (_form(method="magnitude", sparsity=0.0, tasks=["synthetic-mc"]), None),
    (_form(method="shortgpt", sparsity=0.0), "needs a sparsity > 0"),
    (_form(method="wanda", sparsity=0.3, params={"pattern": "2:4"}), "fixes the sparsity at 0.5"),
    (_form(tasks=[]), "tasks"),
    (_form(model="not a model"), "model"),
    (_form(method="wanda", sparsity=0.5, calibration_source="text", calibration_path=""), "needs a path"),
    (_form(method="wanda", sparsity=0.5, params={"owl_m": -1.0}), "owl_m: Input should be greater than 0"),
])
def test_validation_messages_come_from_the_cli_schema(form, message):
    result = forms.check(forms.form_to_config(form))
    if message is None:
        assert result.error is None
    else:
        assert result.config is None and message in result.error
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            validate_config(forms.form_to_config(form))


def test_editor_to_dict_rejects_non_mappings():
    assert forms.editor_to_dict('{"model": "x"}') == {"model": "x"}
    with pytest.raises(ConfigError, match="mapping"):
        forms.editor_to_dict("- a\n- b\n")
    with pytest.raises(ConfigError, match="malformed"):
        forms.editor_to_dict("model: [unclosed")


# --- estimate ---------------------------------------------------------------------------------------


def test_estimate_counts_samples_times_tokens_and_calibration():
    config = validate_config(forms.form_to_config(_form(
        method="wanda", sparsity=0.5, calibration_samples=16, calibration_seq_len=64,
        tasks=["synthetic-arith", "synthetic-mc"], limit=8, max_new_tokens=16)))
    est = forms.estimate(config)
    by_task = {t.task: t for t in est["tasks"]}
    assert by_task["synthetic-arith"].tokens == 8 * 16
    assert by_task["synthetic-mc"].tokens is None  # scored by log-likelihood, nothing generated
    assert est["generated_tokens"] == 128
    assert est["calibration_tokens"] == 16 * 64
    text = forms.render_estimate(est)
    assert "128" in text and "16 x 64 tokens" in text
    # No budget given: the task's CPU default (synthetic-arith: 32 new tokens).
    default = forms.estimate(validate_config({"model": "builtin:tiny-llama",
                                              "tasks": [{"name": "synthetic-arith", "limit": 10}]}))
    assert default["generated_tokens"] == 10 * 32 and default["calibration_tokens"] == 0
    recovery = forms.estimate(validate_config(forms.form_to_config(_form(
        method="shortgpt", sparsity=0.25, recovery_enabled=True, recovery_steps=5))))
    assert recovery["recovery_tokens"] == 5 * 2 * 128


def test_estimate_counts_rows_of_local_data(shared_data):
    config = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "gsm8k"}]})
    (task,) = forms.estimate(config)["tasks"]
    lines = sum(1 for line in (shared_data / "gsm8k" / "test.jsonl").open() if line.strip())
    assert task.rows == lines and task.tokens == lines * task.max_new_tokens


# --- duplicates and submitting ------------------------------------------------------------------------


def _tiny(**pruning):
    return validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                            "pruning": pruning or {"method": "dense"}})


def test_duplicate_detection_names_the_existing_job():
    config = _tiny(method="magnitude", sparsity=0.5)
    assert services.find_duplicate(config) is None
    job, _ = queue.submit(config)
    duplicate = services.find_duplicate(config)
    assert duplicate == {"id": job.id, "state": "queued"}
    message = services.duplicate_message(duplicate)
    assert f"job {job.id}" in message and f"?tab=queue&job={job.id}" in message
    # A failed job is not a duplicate: submitting queues it again.
    claimed = queue.claim_next("w")
    queue.fail(claimed.id, claimed.attempts, "RuntimeError", "boom")
    assert services.find_duplicate(config) is None
    assert services.find_duplicate(_tiny(method="magnitude", sparsity=0.4)) is None


def test_submit_text_and_the_job_id_it_names():
    text = forms.config_to_yaml(forms.form_to_config(_form()))
    message = services.submit_text(text, False)
    assert "Queued as **job 1**" in message
    assert services.submitted_job_id(message) == 1
    assert "already exists as **job 1**" in services.submit_text(text, False)
    bad = services.submit_text(text.replace("builtin:tiny-llama", "<b>bad</b>"), False)
    assert "Not submitted" in bad and "<b>" not in bad


def test_presets_submit_from_the_ui():
    names = [value for _, value in services.preset_choices()]
    assert "study-smoke" in names
    text, jobs = services.preset_overview("study-smoke")
    assert r"study\-smoke" in text and len(jobs) == 6
    assert "model:" in services.preset_job_yaml("study-smoke", 0)
    message = services.submit_preset("study-smoke")
    assert "6 job(s) queued" in message and "jobs 1–6" in message
    assert "6 already existed" in services.submit_preset("study-smoke")
    assert "Preset not submitted" in services.submit_preset("no-such-preset")
    assert "Choose a preset" in services.submit_preset(None)


# --- queue ------------------------------------------------------------------------------------------


def test_queue_rows_show_state_progress_elapsed_and_error():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    job = {"id": 7, "state": "running", "progress": 0.42, "stage": "evaluate", "stage_text": "gsm8k 21/50",
           "worker_id": "local-0", "attempts": 2, "model": "m", "method": "wanda", "sparsity": 0.5,
           "submitter": "web", "error_type": None, "error_message": None, "cancel_requested": True,
           "created_at": "2026-01-01T11:00:00Z", "started_at": "2026-01-01T11:58:55Z", "finished_at": None}
    row = services.queue_row(job, now)
    assert row["elapsed"] == "1m 05s" and row["worker"] == "local-0" and row["attempts"] == 2
    assert "42%" in row["progress"] and 'width:42%' in row["progress"]
    assert "pb-badge-running" in row["state"]
    assert row["stage"].startswith("cancel requested")
    queued = services.queue_row({**job, "state": "queued", "started_at": None}, now)
    assert queued["elapsed"] == "waiting 1h 00m"
    failed = services.queue_row({**job, "state": "failed", "error_type": "ValueError", "error_message": HOSTILE}, now)
    assert failed["error"] == f"ValueError: {HOSTILE}"  # a plain-text cell: shown literally by the table
    assert services.progress_bar(3.0).count("100%") == 2
    assert "&lt;b&gt;" in services.state_badge("<b>")
    assert list(services.queue_view().columns) == services.QUEUE_COLUMNS


def test_job_panel_escapes_a_failed_jobs_error_and_log():
    job, _ = queue.submit(_tiny())
    claimed = queue.claim_next("w")
    queue.fail(claimed.id, claimed.attempts, "HostileError", HOSTILE, log_tail=HOSTILE)
    panel = services.job_panel(job.id)
    assert "HostileError" in panel and "Log tail" in panel
    assert "<script" not in panel and "<img" not in panel and "<a " not in panel
    assert panel.count("&lt;script&gt;") == 2
    assert "There is no job 99" in services.job_panel(99)
    assert "No job selected" in services.job_panel(None)


def test_job_actions_disable_buttons_that_would_do_nothing():
    assert services.job_actions(None) == (False, False, "Select a job to cancel or retry it.")
    job, _ = queue.submit(_tiny())
    assert services.job_actions(job.id)[:2] == (True, False)
    queue.cancel(job.id)
    assert services.job_actions(job.id)[:2] == (False, True)
    assert "queued again" in services.retry_job(job.id)
    claimed = queue.claim_next("w")
    queue.complete(claimed.id, claimed.attempts, SimpleNamespace(
        scores=[], samples=[], efficiency={}, prune_report={}, manifest={}, stage_seconds={}, trace_stats={}))
    can_cancel, can_retry, hint = services.job_actions(job.id)
    assert (can_cancel, can_retry) == (False, False) and "Force" in hint
    assert services.job_actions(1234)[2] == "There is no job 1234."


# --- escaping and findings ------------------------------------------------------------------------------


def test_markdown_escape_makes_links_and_tags_inert():
    text = escape(HOSTILE)
    assert "<script>" not in text and "<img" not in text
    assert "](" not in text.replace("\\](", "").replace("\\]\\(", "")
    assert r"\[x\]\(javascript:" in text


def test_findings_render_verdicts_escaped():
    verdict = SimpleNamespace(key="k", statement=f"Depth beats width {HOSTILE}", verdict="supported",
                              rule="paired bootstrap <b>", reason="enough samples",
                              numbers={"estimate": 0.05, "ci_low": 0.01, "ci_high": 0.09, "n": 40, "n_paired": 120,
                                       "runs": {"depth": [1, 2], "width": [3]}})
    card = services.render_verdict(verdict)
    assert "pb-badge-supported" in card and "pb-verdict-supported" in card
    assert "<script" not in card and "<img" not in card and "&lt;b&gt;" in card
    assert "n = 40 documents (120 paired values)" in card and "depth: jobs 1, 2" in card
    assert "estimate 0.05, 95% CI [0.01, 0.09]" in card and "Rule:</em> paired bootstrap &lt;b&gt;" in card
    page = services.findings_html()
    assert "pb-card" in page or "pb-empty" in page
