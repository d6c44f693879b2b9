"""Changed defaults never change what a stored config means (defaults version 2, migration 0008).

`tests/data/defaults_v1_runs.json` was computed by the code before the change (commit c8a55b9): for
configs that relied on a changed default, what each pruning picked on tiny-llama (random calibration
tokens, below). A v1 config with its old defaults written out (`pin_changed_defaults`) must pick the
same now. The migration's frozen copy of the changes must agree with `backend.defaults`, and an upgrade
must rewrite stored configs and their hashes (and leave configs that relied on no changed default alone).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from backend.config import (
    DEFAULT_CALIBRATION,
    CalibrationConfig,
    HFModelArgs,
    canonical_dict,
    canonical_json,
    config_hash,
    validate_config,
)
from backend.defaults import DEFAULTS_VERSION, pin_changed_defaults
from backend.models.loading import load_model
from backend.pruning import get_method

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((ROOT / "tests" / "data" / "defaults_v1_runs.json").read_text())
MIGRATION = ROOT / "db" / "migrations" / "versions" / "0009_faithful_defaults.py"
BASE = {"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc"}]}

V1_DOCUMENTS = [case["config"] for case in GOLDEN["cases"].values()] + [
    {**BASE},  # dense: no changed default
    {**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5}},  # uniform magnitude: no calibration, no change
    {**BASE, "pruning": {"method": "wanda", "sparsity": 0.5}},  # calibrated without a section
    {**BASE, "pruning": {"method": "wanda", "sparsity": 0.5}, "calibration": {"source": "text", "path": "w.txt"}},
    {**BASE, "pruning": {"method": "sleb", "sparsity": 0.25, "params": {"loss_stride": 1}},
     "calibration": {"seq_len": 64}},
    {**BASE, "pruning": {"method": "shortened-taylor", "sparsity": 0.25, "params": {"aggregate": "weight"}},
     "calibration": {"num_samples": 4}},
    {**BASE, "pruning": {"method": "sparsegpt", "sparsity": 0.5, "params": {"allocation": "layer-influence"}},
     "resources": {"device": "cpu"}},
    {**BASE, "pruning": {"method": "llm-pruner", "sparsity": 0.25, "params": {"scope": "global"}},
     "calibration": {"num_samples": 4}},
]
UNCHANGED = [0, 1, 3]
"""Indices (after the golden cases) of V1_DOCUMENTS that rely on no changed default."""


def _migration():
    spec = importlib.util.spec_from_file_location("migration_0008", MIGRATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _v1_hash(document: dict) -> str:
    data = {k: v for k, v in document.items() if k != "resources"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _pinned(document: dict) -> dict:
    return canonical_dict(validate_config(pin_changed_defaults(document, 1)))


# --- a pinned config computes what it computed before ------------------------------------------------


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor, block: int = 1) -> list[int]:
    index = {dense[i:i + block].numpy().tobytes(): i // block for i in range(0, dense.shape[0], block)}
    return [index[pruned[i:i + block].numpy().tobytes()] for i in range(0, pruned.shape[0], block)]


def _mask_sha256(model) -> str:
    digest = hashlib.sha256()
    for layer in model.model.layers:
        for _, module in sorted(layer.named_modules()):
            if isinstance(module, torch.nn.Linear):
                digest.update((module.weight.detach() == 0).numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_pinned_v1_config_computes_what_it_computed_before(case):
    expected = GOLDEN["cases"][case]
    assert pin_changed_defaults(expected["config"], 1) != expected["config"]  # something was pinned
    config = validate_config(pin_changed_defaults(expected["config"], 1))
    loaded = load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"))
    dense = copy.deepcopy(loaded.model)
    calibration = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    method = get_method(config.pruning.method)
    details = method().prune(loaded.model, config.pruning.sparsity, config.pruning.method_params(), calibration,
                             lambda f, t: None).details
    if "mask_sha256" in expected:
        assert details["layer_sparsity_planned"] == expected["layer_sparsity_planned"]
        assert _mask_sha256(loaded.model) == expected["mask_sha256"]
    if "removed_layers" in expected:
        assert details["removed_layers"] == expected["removed_layers"]
    if "removal_order" in expected:
        assert details["removal_order"] == expected["removal_order"]
    if "kept" in expected:
        for want, d, p in zip(expected["kept"], dense.model.layers, loaded.model.model.layers):
            kept_groups = _kept_rows(d.self_attn.k_proj.weight.detach(), p.self_attn.k_proj.weight.detach(), 16)
            assert kept_groups == want["groups"]
            assert _kept_rows(d.mlp.gate_proj.weight.detach(), p.mlp.gate_proj.weight.detach()) == want["channels"]
            for name, module in (("o_bias_sum", p.self_attn.o_proj), ("down_bias_sum", p.mlp.down_proj)):
                got = None if module.bias is None else float(module.bias.detach().double().sum())
                assert got == pytest.approx(want[name], abs=1e-5) if want[name] is not None else got is None
    if "calibration_skip" in expected:
        assert details["calibration_skip"] == expected["calibration_skip"]


def test_pinned_empty_calibration_is_the_old_default():
    """A calibrated v1 config without a section gets `calibration: {}`: synthetic 8 x 128, seed 0, the
    same tokens as before; without a section the study's WikiText-2 text is used now."""
    from backend.calibration.build import build_calibration

    document = pin_changed_defaults({**BASE, "pruning": {"method": "shortgpt", "sparsity": 0.25}}, 1)
    assert document["calibration"] == {}
    config = validate_config(document)
    assert config.effective_calibration() == CalibrationConfig()
    loaded = load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"))
    data = build_calibration(config.effective_calibration(), loaded.tokenizer, None, model=loaded.model,
                             fingerprint=loaded.fingerprint)
    assert data.sha256 == GOLDEN["default_calibration"]["sha256"]
    assert validate_config({**BASE, "pruning": {"method": "shortgpt", "sparsity": 0.25}}).effective_calibration() \
        == DEFAULT_CALIBRATION


# --- the migration ------------------------------------------------------------------------------------


def test_defaults_version_is_2_and_configs_naming_everything_keep_their_hash():
    assert DEFAULTS_VERSION == 2
    for index in UNCHANGED:
        document = V1_DOCUMENTS[len(GOLDEN["cases"]) + index]
        assert pin_changed_defaults(document, 1) == document
        assert config_hash(validate_config(document)) == _v1_hash(document)


@pytest.mark.parametrize("document", V1_DOCUMENTS, ids=lambda d: (d.get("pruning") or {}).get("method", "dense"))
def test_migration_copy_agrees_with_backend_defaults(document):
    migration = _migration()
    assert migration.pin_version_1(document) == _pinned(document)
    assert migration.config_hash(migration.pin_version_1(document)) == config_hash(validate_config(_pinned(document)))


def _database_at(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from db.session import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def test_upgrade_pins_stored_configs_and_recomputes_their_hashes(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _database_at(url, "0007")
    engine = sa.create_engine(url)
    stored = {}
    with engine.begin() as connection:
        for document in V1_DOCUMENTS:
            text = json.dumps(document, sort_keys=True, separators=(",", ":"))
            result = connection.execute(sa.text(
                "INSERT INTO jobs (config_hash, config_json, model, paradigm, method, sparsity, state, attempts, "
                "requeues, progress, cancel_requested, created_at, hidden) VALUES (:h, :c, :m, 'instruct', :method, "
                ":s, 'succeeded', 1, 0, 1.0, 0, CURRENT_TIMESTAMP, 0)"),
                {"h": _v1_hash(document), "c": text, "m": document["model"],
                 "method": (document.get("pruning") or {}).get("method", "dense"),
                 "s": (document.get("pruning") or {}).get("sparsity", 0.0)})
            stored[result.lastrowid] = document
    engine.dispose()
    _database_at(url, "head")
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = {row.id: row for row in connection.execute(sa.text("SELECT id, config_hash, config_json FROM jobs"))}
    engine.dispose()
    for job_id, document in stored.items():
        row = rows[job_id]
        config = validate_config(json.loads(row.config_json))
        assert row.config_json == canonical_json(validate_config(_pinned(document)))
        assert row.config_hash == config_hash(config)
        assert row.config_json == canonical_json(config)  # stored canonical: the hash is what a resubmission gets
    unchanged = [list(stored)[len(GOLDEN["cases"]) + i] for i in UNCHANGED]
    for job_id in unchanged:
        assert rows[job_id].config_hash == _v1_hash(stored[job_id])
    changed = [job_id for job_id in stored if job_id not in unchanged]
    assert all(rows[job_id].config_hash != _v1_hash(stored[job_id]) for job_id in changed)
    sleb = next(job_id for job_id, d in stored.items() if (d.get("pruning") or {}).get("params") == {"loss_stride": 1})
    assert "params" not in json.loads(rows[sleb].config_json)["pruning"]  # 1 is the default now: left out
