"""The Submit form's logic, without Gradio: which inputs a pruning method needs, form values <-> config
dict, inline validation and an estimate of the work. The YAML editor stays the source of truth; the
form only writes into it (`form_to_config` then `config_to_yaml`).

Form values are a plain dict keyed by `FORM_KEYS`; a method's own parameters travel as a nested dict
under "params" here, and are spread over a fixed pool of generic inputs by `ui.tabs.submit`
(`param_slots` / `slots_to_params`).
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from common import settings
from common.vocabulary import FAMILIES, PARADIGMS, TASK_CATEGORIES  # noqa: F401  (PARADIGMS: the Submit tab)
from backend.config import ConfigError, JobConfig, config_hash, validate_config
from backend.models.ids import BUILTIN_MODELS, NOOP_MODEL
from backend.pruning import get_method, list_methods
from backend.tasks import get_task, list_tasks
from backend.work import TaskEstimate, estimate, task_rows  # noqa: F401  (the Submit tab's estimate)

CALIBRATION_SOURCES = ("synthetic", "text", "task-aligned", "self-generated")
RECOVERY_DATA = ("synthetic", "text", "task-aligned", "self-generated")
SLOT_KINDS = ("number", "choice", "bool", "text")
"""Kinds of generic inputs a method parameter is shown in (gr.Number, gr.Dropdown, gr.Checkbox, gr.Textbox)."""

DEFAULT_FORM: dict[str, Any] = {
    "model": "builtin:tiny-llama",
    "paradigm": "instruct",
    "method": "dense",
    "sparsity": 0.0,
    "params": {},
    "calibration_source": "synthetic",
    "calibration_path": "",
    "calibration_task": "gsm8k",
    "calibration_samples": 8,
    "calibration_seq_len": 128,
    "calibration_seed": 0,
    "recovery_enabled": False,
    "recovery_data": "synthetic",
    "recovery_path": "",
    "recovery_task": "gsm8k",
    "recovery_samples": 16,
    "recovery_rank": 8,
    "recovery_steps": 8,
    "recovery_lr": 2e-4,
    "tasks": ["synthetic-arith", "synthetic-mc"],
    "limit": 20,
    "max_new_tokens": None,
    "batch_size": 8,
    "seed": 0,
}
FORM_KEYS = tuple(DEFAULT_FORM)
DEFAULT_PRUNED_SPARSITY = 0.25
"""The sparsity the form starts from when a pruning method replaces dense."""


# --- the registry, as the form shows it ------------------------------------------------------


def method_choices() -> list[tuple[str, str]]:
    """(label, name) for the method dropdown, grouped by family in `FAMILIES` order."""
    order = {family: i for i, family in enumerate(FAMILIES)}
    methods = sorted(list_methods(), key=lambda m: (order.get(m.family, len(order)), m.name))
    return [(f"{m.family} · {m.name}", m.name) for m in methods]


def method_summary(name: str) -> str:
    """One line under the dropdown: family, what sparsity means, whether calibration is used."""
    method = get_method(name)
    calib = "uses calibration data" if method.needs_calibration else "no calibration data by default"
    return f"**{method.family}** · {method.description or name}. Sparsity: {method.sparsity_meaning}; {calib}."


def model_choices() -> list[str]:
    return [m for m in BUILTIN_MODELS if m != NOOP_MODEL or settings.allow_noop()]


def tasks_by_category() -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {c: [] for c in TASK_CATEGORIES}
    for spec in list_tasks():
        grouped.setdefault(spec.category, []).append(spec.name)
    return grouped


def calibration_tasks() -> list[str]:
    from backend.calibration.tasks import CALIBRATION_TASKS

    return sorted(CALIBRATION_TASKS)


# --- method parameters ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamField:
    """One field of a method's `Params` model, as a form input."""

    name: str
    kind: Literal["number", "choice", "bool", "text"]
    default: Any
    choices: tuple[Any, ...] = ()
    integer: bool = False
    optional: bool = False
    structured: bool = False
    """Text inputs of non-string fields (tuples, lists, dicts) are read as YAML."""
    info: str = ""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


_BOUND_WORDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def param_fields(method: str) -> list[ParamField]:
    """The method's own knobs, from its pydantic `Params` model, in declaration order."""
    fields = []
    for name, field in get_method(method).Params.model_fields.items():
        annotation, optional = _strip_optional(field.annotation)
        bounds = [f"{_BOUND_WORDS[k]} {getattr(m, k)}" for m in field.metadata for k in _BOUND_WORDS
                  if getattr(m, k, None) is not None]
        default = field.get_default(call_default_factory=True)
        info = ", ".join([*([field.description] if field.description else []), *bounds, f"default {_display(default)}"])
        if annotation is bool:
            fields.append(ParamField(name, "bool", default, info=info))
        elif typing.get_origin(annotation) is Literal:
            fields.append(ParamField(name, "choice", default, tuple(typing.get_args(annotation)),
                                     optional=optional, info=info))
        elif annotation in (int, float):
            fields.append(ParamField(name, "number", default, integer=annotation is int, optional=optional, info=info))
        else:  # str, tuples, lists, dicts: typed as text (YAML for structured values)
            fields.append(ParamField(name, "text", default, optional=optional, structured=annotation is not str,
                                     info=info))
    return fields


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _display(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def slot_counts() -> dict[str, int]:
    """How many generic inputs of each kind the form needs: the most any registered method uses."""
    counts = {kind: 0 for kind in SLOT_KINDS}
    for method in list_methods():
        per_kind: dict[str, int] = {}
        for field in param_fields(method.name):
            per_kind[field.kind] = per_kind.get(field.kind, 0) + 1
        for kind, n in per_kind.items():
            counts[kind] = max(counts[kind], n)
    return counts


def param_slots(method: str) -> dict[str, list[ParamField]]:
    """The method's fields by input kind, in order: field i of a kind goes to input i of that kind."""
    slots: dict[str, list[ParamField]] = {kind: [] for kind in SLOT_KINDS}
    for field in param_fields(method):
        slots[field.kind].append(field)
    return slots


def slot_value(field: ParamField, value: Any) -> Any:
    """A param value as its input shows it."""
    if field.kind == "text" and not isinstance(value, str):
        return "" if value is None else json.dumps(value)
    return value


def parse_slot(field: ParamField, raw: Any) -> Any:
    """An input's value as the param value (ConfigError naming the field when it cannot be read)."""
    if field.kind == "number":
        if raw is None or raw == "":
            return None
        number = float(raw)
        return int(number) if field.integer and number.is_integer() else number
    if field.kind == "text":
        text = "" if raw is None else str(raw)
        if not text.strip():
            return None
        if not field.structured:
            return text
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"pruning.params.{field.name}: not valid YAML/JSON: {text[:80]!r}") from None
    return raw


def slots_to_params(method: str, values: dict[str, list[Any]]) -> dict[str, Any]:
    """Collect the method's params from the generic inputs' values; defaults are left out."""
    params = {}
    for kind, fields in param_slots(method).items():
        for field, raw in zip(fields, values.get(kind, [])):
            value = parse_slot(field, raw)
            if value is None and not field.optional:
                continue
            if value != field.default:
                params[field.name] = value
    return params


# --- form <-> config --------------------------------------------------------------------------


def uses_calibration(method: str, params: dict[str, Any]) -> bool:
    cls = get_method(method)
    try:
        return cls.uses_calibration(cls.Params(**params))
    except (ValidationError, TypeError):  # invalid params: validation reports them; show the calibration inputs
        return cls.needs_calibration


def _number(value: Any, integer: bool = True) -> Any:
    if value is None or value == "":
        return None
    number = float(value)
    return int(number) if integer and number.is_integer() else number


def form_to_config(form: dict[str, Any]) -> dict[str, Any]:
    """The config dict the form describes (not validated: `check` does that, with the CLI's schema)."""
    form = {**DEFAULT_FORM, **form}
    method = form["method"] or "dense"
    params = dict(form["params"] or {})
    config: dict[str, Any] = {
        "model": (form["model"] or "").strip(),
        "paradigm": form["paradigm"],
        "pruning": {"method": method, "sparsity": 0.0 if method == "dense" else float(form["sparsity"] or 0.0)},
    }
    if params:
        config["pruning"]["params"] = params
    if uses_calibration(method, params):
        source = form["calibration_source"]
        calibration: dict[str, Any] = {"source": source}
        if source == "text":
            calibration["path"] = (form["calibration_path"] or "").strip()
        if source in ("task-aligned", "self-generated"):
            calibration["task"] = form["calibration_task"]
        calibration.update(num_samples=_number(form["calibration_samples"]),
                           seq_len=_number(form["calibration_seq_len"]), seed=_number(form["calibration_seed"]))
        config["calibration"] = {k: v for k, v in calibration.items() if v is not None}
    tasks = []
    # 0 or empty: all rows / the task's default budget
    limit, max_new_tokens = _number(form["limit"]) or None, _number(form["max_new_tokens"]) or None
    for name in sorted(dict.fromkeys(form["tasks"] or [])):
        task: dict[str, Any] = {"name": name}
        if limit is not None:
            task["limit"] = limit
        if max_new_tokens is not None and _output_type(name) == "generate":
            task["generation"] = {"max_new_tokens": max_new_tokens}
        tasks.append(task)
    config["tasks"] = tasks
    batch_size = form["batch_size"]
    config["evaluation"] = {"batch_size": batch_size if batch_size == "auto" else _number(batch_size)}
    if form["recovery_enabled"]:
        data = form["recovery_data"]
        recovery: dict[str, Any] = {"enabled": True, "data": data}
        if data == "text":
            recovery["path"] = (form["recovery_path"] or "").strip()
        if data in ("task-aligned", "self-generated"):
            recovery["task"] = form["recovery_task"]
        recovery.update(num_samples=_number(form["recovery_samples"]), rank=_number(form["recovery_rank"]),
                        steps=_number(form["recovery_steps"]), learning_rate=_number(form["recovery_lr"], False))
        config["recovery"] = {k: v for k, v in recovery.items() if v is not None}
    config["seed"] = _number(form["seed"]) or 0
    return config


def _output_type(task: str) -> str | None:
    try:
        return get_task(task).output_type
    except KeyError:
        return None


def config_to_form(config: JobConfig | dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Form values for a config, and notes on what the form cannot show (edit those in the YAML)."""
    if isinstance(config, dict):
        config = validate_config(config)
    notes: list[str] = []
    form = dict(DEFAULT_FORM)
    pruning, calib = config.pruning, config.effective_calibration()
    form.update(model=config.model, paradigm=config.paradigm, method=pruning.method, sparsity=pruning.sparsity,
                params=dict(pruning.params), seed=config.seed, tasks=[t.name for t in config.tasks],
                batch_size=config.evaluation.batch_size)
    form.update(calibration_source=calib.source, calibration_path=calib.path or "",
                calibration_task=calib.task or DEFAULT_FORM["calibration_task"],
                calibration_samples=calib.num_samples, calibration_seq_len=calib.seq_len, calibration_seed=calib.seed)
    limits = {t.limit for t in config.tasks}
    budgets = {t.generation.max_new_tokens for t in config.tasks if _output_type(t.name) == "generate"}
    form["limit"] = max((v for v in limits if v is not None), default=None) if None not in limits else None
    form["max_new_tokens"] = max((v for v in budgets if v is not None), default=None) if None not in budgets else None
    if len(limits) > 1:
        notes.append("tasks have different limits; the form uses one limit for every task")
    if len(budgets) > 1:
        notes.append("tasks have different max_new_tokens; the form uses one budget for every generation task")
    other_task_fields = {k for t in config.tasks for k in t.model_dump(exclude_defaults=True)
                         if k not in ("name", "limit")}
    other_task_fields |= {f"generation.{k}" for t in config.tasks
                          for k in t.generation.model_dump(exclude_defaults=True) if k != "max_new_tokens"}
    if other_task_fields:
        notes.append(f"per-task settings the form does not show: {', '.join(sorted(other_task_fields))}")
    if config.recovery is not None:
        rec = config.recovery
        form.update(recovery_enabled=rec.enabled, recovery_data=rec.data, recovery_path=rec.path or "",
                    recovery_task=rec.task or DEFAULT_FORM["recovery_task"], recovery_samples=rec.num_samples,
                    recovery_rank=rec.rank, recovery_steps=rec.steps, recovery_lr=rec.learning_rate)
    hidden = [name for name in ("model_args", "keep_model") if getattr(config, name)]
    if config.evaluation.backend != "hf":
        hidden.append("evaluation.backend")
    if hidden:
        notes.append(f"fields the form does not show: {', '.join(hidden)}")
    return form, notes


def config_to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def editor_to_dict(text: str) -> dict[str, Any]:
    """Parse the editor's YAML/JSON (ConfigError when malformed or not a mapping)."""
    stripped = (text or "").lstrip()
    try:
        data = json.loads(text) if stripped.startswith("{") else yaml.safe_load(text or "")
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"malformed config: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of fields")
    return data


# --- validation and estimate ------------------------------------------------------------------


@dataclass
class Check:
    """The outcome of validating a config: the config (None when invalid) or the error, one line."""

    config: JobConfig | None
    error: str | None = None

    @property
    def hash(self) -> str | None:
        return config_hash(self.config) if self.config is not None else None


def check(config: dict[str, Any]) -> Check:
    """Validate with the CLI's schema (backend.config), and the task data check submit applies."""
    from backend.taskdata.availability import check_submission

    try:
        validated = validate_config(config)
        check_submission(validated)
        return Check(validated)
    except ConfigError as exc:
        return Check(None, str(exc))


def render_estimate(est: dict[str, Any]) -> str:
    """Markdown table of `estimate` (task names come from the registry, still escaped by the caller's rule)."""
    from ui.markdown import escape

    lines = ["| task | kind | samples | max new tokens | generated tokens (at most) |", "|---|---|---|---|---|"]
    for t in est["tasks"]:
        rows = "all" if t.rows is None else f"{t.rows:,}"
        budget = "-" if t.max_new_tokens is None else f"{t.max_new_tokens:,}" + (
            f" x {t.samples_per_prompt}" if t.samples_per_prompt > 1 else "")
        tokens = "-" if t.tokens is None else f"{t.tokens:,}"
        lines.append(f"| {escape(t.task)} | {t.kind} | {rows} | {budget} | {tokens} |")
    lines.append("")
    lines.append(f"**Generation:** at most {est['generated_tokens']:,} new tokens"
                 + (" (plus tasks of unknown size)" if est["unknown_rows"] else "") + ".  ")
    lines.append(f"**Calibration:** {escape(est['calibration_note'])}.  ")
    if est["recovery_tokens"]:
        lines.append(f"**Recovery:** {est['recovery_tokens']:,} training tokens.")
    return "\n".join(lines)
