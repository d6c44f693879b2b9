"""The model card (README.md) of a published pruned model, generated from its manifest.

    model_card(manifest, directory, repo_id, run=None) -> README text
    load_format(manifest, directory) -> "plain" | "width" | "sliced" | "routed"

The card has YAML front matter (`base_model` when the base model is on the Hub, `library_name`,
`pipeline_tag`, `tags`), then what was done (base model and revision, method and parameters,
calibration, achieved sparsity, parameter counts, recovery, PruneBoard commit and config hash),
the run's scores with their comparability keys and its measured speed-up (when the model comes from
a PruneBoard run: `RunSummary`), and how to load it. Plain `from_pretrained` loads dense,
unstructured and depth-pruned models; width-pruned models (layers of different widths, SliceGPT's
rotations) need PruneBoard's loader, and routed (dynamic) models keep routers transformers does not
know: the card says so and how to load them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunSummary", "load_format", "model_card"]

HUB_BASE_MODELS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Builtin models that are a Hub model (converted from its GGUF): their card names it as base_model."""


@dataclass
class RunSummary:
    """What a PruneBoard run measured on the pruned model, for its card."""

    job_id: int
    url: str | None
    """A link to the run in the PruneBoard app, when the app's address is known."""
    scores: list[dict[str, Any]] = field(default_factory=list)
    """task, metric, value, stderr, comparability_key (primary metrics)."""
    speedup: float | None = None
    """Decode tokens/s over the dense baseline's on the same device; None when not measured."""
    baseline_job_id: int | None = None
    device: str | None = None


def load_format(manifest: dict[str, Any], directory: str | Path) -> str:
    """How the saved model loads: "plain" (transformers `from_pretrained`), "width" (layers of
    different widths), "sliced" (SliceGPT) or "routed" (dynamic routers)."""
    from backend.pruning import get_method
    from backend.pruning.slicegpt import is_sliced_dir
    from backend.pruning.width import WIDTHS_KEY

    method = _pruning(manifest).get("method", "dense")
    if get_method(method).family == "dynamic":
        return "routed"
    if is_sliced_dir(directory):
        return "sliced"
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    return "width" if WIDTHS_KEY in config else "plain"


def model_card(manifest: dict[str, Any], directory: str | Path, repo_id: str, run: RunSummary | None = None) -> str:
    config = manifest.get("config") or {}
    pruning = _pruning(manifest)
    method = pruning.get("method", "dense")
    base = config.get("model") or (manifest.get("model") or {}).get("id") or "unknown"
    fmt = load_format(manifest, directory)
    front = _front_matter(base, method)
    report = manifest.get("prune_report") or {}
    title = f"{base} pruned with {method} at sparsity {pruning.get('sparsity', 0.0):g}"
    lines = [f"# {_text(title)}", "",
             f"Pruned with PruneBoard from `{_code(base)}`"
             + (f", [run {run.job_id}]({run.url})" if run and run.url else (f", run {run.job_id}" if run else ""))
             + ". Everything below comes from the run's manifest (`pruneboard_manifest.json` in this repo).", ""]
    lines += ["## How it was made", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _facts(manifest, config, pruning, report)]
    lines += ["", "## Results", ""] + _results(run)
    lines += ["", "## How to load", ""] + _loading(fmt, repo_id, method)
    body = "\n".join(lines).rstrip() + "\n"
    return f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n{body}"


def _pruning(manifest: dict[str, Any]) -> dict[str, Any]:
    return (manifest.get("config") or {}).get("pruning") or {"method": "dense", "sparsity": 0.0}


def _front_matter(base: str, method: str) -> dict[str, Any]:
    from backend.pruning import get_method

    front: dict[str, Any] = {}
    hub_base = HUB_BASE_MODELS.get(base) or (base if _is_hub_id(base) else None)
    if hub_base:
        front["base_model"] = hub_base
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["pruneboard", "pruned", method, f"{get_method(method).family}-pruning"]
    return front


def _is_hub_id(model: str) -> bool:
    from backend.models.ids import is_hub_id

    return is_hub_id(model) and not Path(model).exists()  # a local directory can look like owner/name


def _facts(manifest: dict[str, Any], config: dict[str, Any], pruning: dict[str, Any],
           report: dict[str, Any]) -> list[tuple[str, str]]:
    model = manifest.get("model") or {}
    revision = (config.get("model_args") or {}).get("revision") or "main (default branch)"
    facts = [
        ("Base model", f"`{_code(config.get('model', model.get('id', 'unknown')))}`"),
        ("Revision", f"`{_code(revision)}`"),
        ("Weights fingerprint (sha256)", f"`{_code(model.get('fingerprint') or 'unknown')}`"),
        ("Method", f"`{_code(pruning.get('method', 'dense'))}`"),
        ("Parameters", f"`{_code(json.dumps(pruning.get('params') or {}, sort_keys=True))}`"),
        ("Target sparsity", f"{pruning.get('sparsity', 0.0):g}"),
        ("Achieved sparsity", _number(report.get("achieved_sparsity"))),
        ("Parameters before → after", f"{_count(report.get('params_before'))} → {_count(report.get('params_after'))}"),
        ("Calibration", _calibration(manifest.get("calibration"), config.get("calibration") or {})),
        ("Recovery", _code(json.dumps(config["recovery"], sort_keys=True)) if config.get("recovery") else "none"),
        ("Paradigm", _text(config.get("paradigm", "instruct"))),
        ("Seed", str(config.get("seed", 0))),
        ("dtype", _text(manifest.get("dtype") or "unknown")),
        ("PruneBoard commit", f"`{_code(manifest.get('project_commit') or 'unknown')}`"),
        ("Config hash", f"`{_code(manifest.get('config_hash') or 'unknown')}`"),
    ]
    if report.get("removed_layers") is not None:
        facts.append(("Removed layers", _text(", ".join(str(i) for i in report["removed_layers"]))))
    return facts


def _calibration(stored: dict[str, Any] | None, requested: dict[str, Any]) -> str:
    if not stored:
        return "none (the method uses no calibration data)"
    shape = stored.get("shape") or []
    size = f"{shape[0]} × {shape[1]} tokens" if len(shape) == 2 else "?"
    where = requested.get("path") or requested.get("task") or ""
    source = f"{stored.get('source', requested.get('source', '?'))}" + (f" ({where})" if where else "")
    return f"{_text(source)}, {size}, split `{_code(requested.get('split', 'train'))}`, sha256 `{_code(stored.get('sha256', '?'))}`"


def _results(run: RunSummary | None) -> list[str]:
    if run is None:
        return ["Not evaluated: this model was pruned with `python -m jobs prune` (no evaluation, no speed "
                "probe). Submit the same config to PruneBoard to measure its scores and speed-up."]
    lines = []
    if run.scores:
        lines += ["| task | metric | value | stderr | comparability key |", "|---|---|---|---|---|"]
        lines += [f"| {_text(s['task'])} | {_text(s['metric'])} | {_number(s.get('value'))} | "
                  f"{_number(s.get('stderr'))} | `{_code(s.get('comparability_key') or '')}` |" for s in run.scores]
        lines += ["", "Scores compare only with scores of the same comparability key (same task config, data, "
                  "limits, generation settings, lm-eval version and dtype)."]
    else:
        lines.append("The run stored no scores.")
    if run.speedup is not None:
        baseline = f" (dense baseline: run {run.baseline_job_id})" if run.baseline_job_id is not None else ""
        device = f" on {_text(run.device)}" if run.device else ""
        lines += ["", f"Measured speed-up: **{run.speedup:.2f}×** decode tokens/s over the dense baseline{device}{baseline}."]
    else:
        lines += ["", "Measured speed-up: not measured (no dense baseline run on the same device)."]
    return lines


def _loading(fmt: str, repo_id: str, method: str) -> list[str]:
    repo = _code(repo_id)
    if fmt == "plain":
        from backend.pruning import get_method

        note = {"unstructured": ["", "The pruned weights are explicit zeros in dense tensors: smaller once "
                                     "compressed, but no faster on dense kernels."],
                "depth": ["", "The removed layers are gone: `num_hidden_layers` in config.json is the new depth."],
                }.get(get_method(method).family, [])
        return ["Plain transformers:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "", f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", *note]
    if fmt in ("width", "sliced"):
        what = ("SliceGPT's rotated, sliced layers and shortcut matrices" if fmt == "sliced"
                else f"{method}'s layers of different widths (`pruneboard_layer_widths` in config.json)")
        return [f"Plain `from_pretrained` cannot build {what}. With PruneBoard on the Python path:", "",
                "```python", "from huggingface_hub import snapshot_download", "from backend.models.loading import load_pruned",
                "", f'model = load_pruned(snapshot_download("{repo}"))', "```"]
    return [f"{method} adds per-token routers (under `model.layers.*.routing` in the weights) that transformers "
            "does not know: plain `from_pretrained` loads the decoder weights and ignores the routers (it reports "
            "them as unused), so that model runs every token through every layer and skips nothing. PruneBoard "
            "has no loader for routed checkpoints: to run the routed model, prune again from the config in "
            "`pruneboard_manifest.json` (same seed and calibration):", "", "```bash",
            "python -m jobs prune CONFIG --out DIR   # CONFIG: the manifest's \"config\", as YAML or JSON", "```"]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _text(value: Any) -> str:
    """Plain text for a table cell: no line breaks, pipes or HTML."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any) -> str:
    """Text inside backticks: one line, no backticks or pipes."""
    return " ".join(str(value).split()).replace("`", "'").replace("|", "/")
