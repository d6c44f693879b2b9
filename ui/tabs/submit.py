"""Submit tab: a form whose inputs follow the chosen method, presets and examples, and the YAML
editor that is submitted (the form writes into it). The logic lives in `ui.forms` and `ui.services`."""
from __future__ import annotations

import gradio as gr

from backend.config import ConfigError
from ui import forms, services
from ui.auth import user_from
from ui.markdown import escape

SCALAR_KEYS = [key for key in forms.FORM_KEYS if key not in ("params", "tasks")]
"""Form values held by one component each; params go to the slot pool, tasks to one group per category."""
SLOT_COMPONENTS = {"number": gr.Number, "choice": gr.Dropdown, "bool": gr.Checkbox, "text": gr.Textbox}


def build(shared) -> None:
    d = forms.DEFAULT_FORM
    c: dict[str, gr.components.Component] = {}
    presets = services.preset_choices()
    with gr.Row(equal_height=False, elem_classes="pb-submit-top"):
        shared.submit_preset = gr.Dropdown(
            label="Study preset (several jobs at once)", choices=presets, value=None, elem_id="pb-submit-preset",
            info="Reproduce a study's experiments in one action." if presets else "No presets in this build.",
            interactive=bool(presets))
        shared.submit_preset_job = gr.Dropdown(label="Open one job of the preset in the editor", choices=[],
                                               value=None, interactive=False)
        shared.submit_preset_button = gr.Button("Submit preset", variant="secondary", interactive=False,
                                                elem_id="pb-submit-preset-button")
    shared.submit_preset_info = gr.Markdown(elem_id="pb-submit-preset-info")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300, elem_classes="pb-form"):
            gr.Markdown("### Form\nFields follow the method; *Apply form to config* writes the YAML below.")
            with gr.Row():
                c["model"] = gr.Dropdown(label="Model", choices=forms.model_choices(), value=d["model"],
                                         allow_custom_value=True, elem_id="pb-submit-model",
                                         info="A builtin model, or type a hub id (owner/name) or a local directory.")
                c["paradigm"] = gr.Radio(list(forms.PARADIGMS), value=d["paradigm"], label="Paradigm",
                                         info="think: reasoning models (a thinking block before the answer).")
            with gr.Row():
                c["method"] = gr.Dropdown(label="Pruning method (family · name)", choices=forms.method_choices(),
                                          value=d["method"], elem_id="pb-submit-method")
                c["sparsity"] = gr.Slider(0.0, 0.95, value=d["sparsity"], step=0.01, label="Sparsity",
                                          interactive=False, elem_id="pb-submit-sparsity")
            shared.submit_method_info = gr.Markdown(forms.method_summary(d["method"]), elem_classes="pb-hint")
            slots: dict[str, list] = {}
            with gr.Group(visible=False, elem_classes="pb-params") as shared.submit_params_box, gr.Row():
                for kind, count in forms.slot_counts().items():
                    slots[kind] = [SLOT_COMPONENTS[kind](visible=False, elem_id=f"pb-param-{kind}-{i}")
                                   for i in range(count)]
            with gr.Accordion("Calibration data", open=True, visible=False) as shared.submit_calibration_box:
                with gr.Row():
                    c["calibration_source"] = gr.Dropdown(list(forms.CALIBRATION_SOURCES), value=d["calibration_source"],
                                                          label="Source")
                    c["calibration_path"] = gr.Textbox(label="Text file (under the data directory)",
                                                       value=d["calibration_path"], placeholder="wikitext2/valid.txt")
                    c["calibration_task"] = gr.Dropdown(forms.calibration_tasks(), value=d["calibration_task"],
                                                        label="Prompt source task")
                with gr.Row():
                    c["calibration_samples"] = gr.Number(d["calibration_samples"], label="Samples", precision=0)
                    c["calibration_seq_len"] = gr.Number(d["calibration_seq_len"], label="Sequence length", precision=0)
                    c["calibration_seed"] = gr.Number(d["calibration_seed"], label="Seed", precision=0)
            shared.submit_no_calibration = gr.Markdown("This method uses no calibration data.", elem_classes="pb-hint")
            with gr.Accordion("Recovery fine-tuning (LoRA)", open=False):
                c["recovery_enabled"] = gr.Checkbox(value=d["recovery_enabled"], label="Recover with LoRA after pruning")
                with gr.Row():
                    c["recovery_data"] = gr.Dropdown(list(forms.RECOVERY_DATA), value=d["recovery_data"], label="Data")
                    c["recovery_path"] = gr.Textbox(label="Text file", value=d["recovery_path"])
                    c["recovery_task"] = gr.Dropdown(forms.calibration_tasks(), value=d["recovery_task"], label="Task")
                with gr.Row():
                    c["recovery_samples"] = gr.Number(d["recovery_samples"], label="Sequences", precision=0)
                    c["recovery_rank"] = gr.Number(d["recovery_rank"], label="LoRA rank", precision=0)
                    c["recovery_steps"] = gr.Number(d["recovery_steps"], label="Steps", precision=0)
                    c["recovery_lr"] = gr.Number(d["recovery_lr"], label="Learning rate")
            gr.Markdown("#### Tasks")
            task_groups = []
            with gr.Row(elem_classes="pb-tasks"):
                for category, names in forms.tasks_by_category().items():
                    task_groups.append(gr.CheckboxGroup(names, value=[n for n in d["tasks"] if n in names],
                                                        label=category, elem_id=f"pb-submit-tasks-{category}"))
            with gr.Row():
                c["limit"] = gr.Number(d["limit"], label="Samples per task (0: all)", precision=0,
                                       elem_id="pb-submit-limit")
                c["max_new_tokens"] = gr.Number(d["max_new_tokens"], label="Max new tokens (0: task default)",
                                                precision=0, elem_id="pb-submit-max-new-tokens")
                c["batch_size"] = gr.Number(d["batch_size"], label="Batch size", precision=0,
                                            elem_id="pb-submit-batch-size")
                c["seed"] = gr.Number(d["seed"], label="Seed", precision=0, elem_id="pb-submit-seed")
            with gr.Row():
                shared.submit_apply = gr.Button("Apply form to config", variant="primary", elem_id="pb-submit-apply")
                shared.submit_fill = gr.Button("Fill form from config", elem_id="pb-submit-fill")
            shared.submit_form_notes = gr.Markdown()
        with gr.Column(scale=2, min_width=280, elem_classes="pb-side"):
            gr.Markdown("### Check\nValidated as you edit the form, and again whenever the editor changes.",
                        elem_classes="pb-hint")
            shared.submit_check = gr.Markdown(elem_id="pb-submit-check")
            shared.submit_duplicate = gr.Markdown(elem_id="pb-submit-duplicate")
            shared.submit_open_duplicate = gr.Button("Open the existing job in Queue", visible=False,
                                                     elem_id="pb-submit-open-duplicate")
            shared.submit_duplicate_id = gr.State(None)
            gr.Markdown("### Estimate")
            shared.submit_estimate = gr.Markdown(elem_id="pb-submit-estimate")
    gr.Markdown("### Configuration submitted")
    with gr.Row():
        shared.submit_example = gr.Dropdown(label="Start from an example", choices=services.example_names(),
                                            value=services.DEFAULT_EXAMPLE)
        shared.submit_force = gr.Checkbox(label="Force a new run even if this config ran before", value=False)
    shared.submit_editor = gr.Code(label="Configuration (YAML or JSON)", language="yaml", lines=18,
                                   value=services.example_text(services.DEFAULT_EXAMPLE), elem_id="pb-submit-editor")
    shared.submit_button = gr.Button("Validate and submit", variant="primary", elem_id="pb-submit-button")
    shared.submit_message = gr.Markdown(elem_id="pb-submit-message")
    shared.submit_fields = c
    shared.submit_slots = slots
    shared.submit_task_groups = task_groups


def _inputs(shared) -> list:
    slots = [comp for kind in forms.SLOT_KINDS for comp in shared.submit_slots[kind]]
    return [*(shared.submit_fields[k] for k in SCALAR_KEYS), *slots, *shared.submit_task_groups]


def _form(shared, values: tuple) -> dict:
    """Form values from the components' values, in `_inputs` order (ConfigError for unreadable params)."""
    n = len(SCALAR_KEYS)
    form = dict(zip(SCALAR_KEYS, values[:n]))
    rest = list(values[n:])
    slot_values = {}
    for kind in forms.SLOT_KINDS:
        count = len(shared.submit_slots[kind])
        slot_values[kind], rest = rest[:count], rest[count:]
    form["tasks"] = [name for group in rest for name in (group or [])]
    form["params"] = forms.slots_to_params(form["method"] or "dense", slot_values)
    return form


def _slot_updates(shared, method: str, params: dict) -> list:
    updates = []
    layout = forms.param_slots(method)
    for kind in forms.SLOT_KINDS:
        fields = layout[kind]
        for i, _ in enumerate(shared.submit_slots[kind]):
            if i >= len(fields):
                updates.append(gr.update(visible=False))
                continue
            f = fields[i]
            value = forms.slot_value(f, params.get(f.name, f.default))
            extra = {"choices": list(f.choices)} if kind == "choice" else {}
            updates.append(gr.update(visible=True, label=f.label, info=f.info, value=value, **extra))
    return updates


def _check_updates(shared, config: dict | None, error: str | None = None) -> list:
    """[check, duplicate, open-duplicate button, duplicate id, estimate]."""
    if config is None:
        return [f"**Not valid:** {escape(error)}", "", gr.update(visible=False), None, ""]
    result = forms.check(config)
    if result.config is None:
        return [f"**Not valid:** {escape(result.error)}", "", gr.update(visible=False), None, ""]
    duplicate = services.find_duplicate(result.config)
    estimate = forms.render_estimate(forms.estimate(result.config))
    check = f"**Valid.** Same schema as the CLI; config hash `{result.hash[:12]}`."
    button = gr.update(visible=duplicate is not None,
                       value=f"Open job {duplicate['id']} in Queue" if duplicate else "Open")
    return [check, services.duplicate_message(duplicate), button, duplicate["id"] if duplicate else None, estimate]


# Gradio injects `profile` and `request` by annotation (not inputs; the API keeps its signature).


def _submit(text, force, profile: gr.OAuthProfile | None, request: gr.Request):
    return services.submit_text(text, force, user_from(profile, request))


def _submit_preset(name, profile: gr.OAuthProfile | None, request: gr.Request):
    return services.submit_preset(name, user_from(profile, request))


def wire(shared, demo) -> None:
    inputs = _inputs(shared)
    fields = shared.submit_fields
    check_outputs = [shared.submit_check, shared.submit_duplicate, shared.submit_open_duplicate,
                     shared.submit_duplicate_id, shared.submit_estimate]
    visibility_outputs = [shared.submit_calibration_box, shared.submit_no_calibration, fields["calibration_path"],
                          fields["calibration_task"], fields["sparsity"]]

    def visibility(form: dict) -> list:
        calib = forms.uses_calibration(form["method"] or "dense", form["params"])
        source = form["calibration_source"]
        dense = form["method"] == "dense"
        return [gr.update(visible=calib), gr.update(visible=not calib), gr.update(visible=source == "text"),
                gr.update(visible=source in ("task-aligned", "self-generated")),
                gr.update(interactive=not dense, **({"value": 0.0} if dense else {}))]

    def on_form(*values):
        try:
            form = _form(shared, values)
        except (ConfigError, ValueError) as exc:
            return [*_check_updates(shared, None, str(exc)), *[gr.update()] * len(visibility_outputs)]
        return [*_check_updates(shared, forms.form_to_config(form)), *visibility(form)]

    def on_method(method, sparsity):
        method = method or "dense"
        # Leaving dense with sparsity 0 would only produce an error: start from a middle value.
        start = gr.update(value=forms.DEFAULT_PRUNED_SPARSITY) if method != "dense" and not sparsity else gr.update()
        return [forms.method_summary(method), gr.update(visible=bool(forms.param_fields(method))), start,
                *_slot_updates(shared, method, {})]

    slot_list = [comp for kind in forms.SLOT_KINDS for comp in shared.submit_slots[kind]]
    fields["method"].input(on_method, [fields["method"], fields["sparsity"]],
                           [shared.submit_method_info, shared.submit_params_box, fields["sparsity"], *slot_list],
                           api_name=False).then(on_form, inputs, check_outputs + visibility_outputs, api_name=False)
    others = [comp for comp in inputs if comp is not fields["method"]]
    # always_last: a check still running must not swallow the latest edit
    gr.on([comp.input for comp in others], on_form, inputs, check_outputs + visibility_outputs, api_name=False,
          trigger_mode="always_last")

    def apply(*values):
        try:
            form = _form(shared, values)
        except (ConfigError, ValueError) as exc:
            return gr.update(), f"**Not applied:** {escape(exc)}"
        return forms.config_to_yaml(forms.form_to_config(form)), ("Written to the editor below. Fields the form "
                                                                 "does not cover (model_args, per-task settings) "
                                                                 "are edited in the YAML directly.")

    shared.submit_apply.click(apply, inputs, [shared.submit_editor, shared.submit_form_notes], api_name=False)

    def fill(text):
        try:
            form, notes = forms.config_to_form(forms.editor_to_dict(text))
        except ConfigError as exc:
            return [*[gr.update()] * (len(SCALAR_KEYS) + 2 + len(slot_list) + len(shared.submit_task_groups)),
                    f"**Cannot fill the form:** {escape(exc)}"]
        scalars = [form[k] for k in SCALAR_KEYS]
        groups = [[n for n in form["tasks"] if n in names] for names in forms.tasks_by_category().values()]
        note = ("Form filled from the editor." + ("  \n" + "  \n".join(escape(n) for n in notes)
                                                   if notes else ""))
        return [*scalars, forms.method_summary(form["method"]), gr.update(visible=bool(forms.param_fields(form["method"]))),
                *_slot_updates(shared, form["method"], form["params"]),
                *groups, note]

    scalar_components = [fields[k] for k in SCALAR_KEYS]
    shared.submit_fill.click(
        fill, shared.submit_editor,
        [*scalar_components, shared.submit_method_info, shared.submit_params_box, *slot_list, *shared.submit_task_groups,
         shared.submit_form_notes], api_name=False,
    ).then(on_form, inputs, check_outputs + visibility_outputs, api_name=False)

    def on_editor(text):
        try:
            config = forms.editor_to_dict(text)
        except ConfigError as exc:
            return _check_updates(shared, None, str(exc))
        return _check_updates(shared, config)

    shared.submit_editor.change(on_editor, shared.submit_editor, check_outputs, api_name=False,
                                trigger_mode="always_last")
    shared.submit_example.change(services.example_text, shared.submit_example, shared.submit_editor, api_name=False)
    shared.submit_button.click(_submit, [shared.submit_editor, shared.submit_force],
                               shared.submit_message, api_name="submit").then(
        services.submitted_job_id, shared.submit_message, shared.queue_job_id, api_name=False)

    shared.submit_open_duplicate.click(lambda job_id: (job_id, gr.Tabs(selected="queue")),
                                       shared.submit_duplicate_id, [shared.queue_job_id, shared.tabs], api_name=False)

    def on_preset(name):
        info, jobs = services.preset_overview(name)
        return (info, gr.update(choices=jobs, value=None, interactive=bool(jobs)),
                gr.update(interactive=bool(name), value=f"Submit preset ({len(jobs)} jobs)" if name else "Submit preset"))

    shared.submit_preset.change(on_preset, shared.submit_preset,
                                [shared.submit_preset_info, shared.submit_preset_job, shared.submit_preset_button],
                                api_name=False)
    shared.submit_preset_job.input(services.preset_job_yaml, [shared.submit_preset, shared.submit_preset_job],
                                   shared.submit_editor, api_name=False)
    shared.submit_preset_button.click(_submit_preset, shared.submit_preset, shared.submit_message,
                                      api_name=False)
    demo.load(on_editor, shared.submit_editor, check_outputs, api_name=False)
