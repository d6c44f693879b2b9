"""Config validation, canonical form and the run hash."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from backend.config import ConfigError, canonical_dict, config_hash, load_config, parse_config_text, validate_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}

# Pinned: changing the canonical form (or a default that tiny-dense relies on) changes every run id.
TINY_DENSE_HASH = "e3d89bc71efb1624553888bb2c2595bae6c018ce43525e4c7454d2823280cd5b"


def test_tiny_dense_hash_is_pinned():
    assert config_hash(load_config(EXAMPLES / "tiny-dense.yaml")) == TINY_DENSE_HASH


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_and_have_a_seed(path):
    config = load_config(path)
    assert "seed:" in path.read_text()
    assert config.tasks


def test_defaults_are_left_out_of_the_canonical_form():
    explicit = validate_config({**BASE, "paradigm": "instruct", "pruning": {"method": "dense", "sparsity": 0.0},
                                "evaluation": {"batch_size": 8}, "seed": 0})
    assert canonical_dict(explicit) == {"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc"}]}
    assert config_hash(explicit) == config_hash(validate_config(BASE))


def test_task_order_and_spelling_do_not_change_the_hash():
    a = validate_config({**BASE, "tasks": ["synthetic-mc", {"name": "synthetic-arith"}]})
    b = validate_config({**BASE, "tasks": [{"name": "synthetic-arith"}, "synthetic-mc"]})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(validate_config(BASE))


def test_method_params_are_normalised():
    config = validate_config({**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5}})
    assert config.pruning.params == {}
    with pytest.raises(ConfigError, match="pruning.*params"):
        validate_config({**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5, "params": {"bogus": 1}}})


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"pruning": {"method": "nope", "sparsity": 0.5}}, "pruning"),
        ({"pruning": {"method": "magnitude", "sparsity": -0.1}}, "pruning.sparsity"),
        ({"pruning": {"method": "magnitude", "sparsity": 1.0}}, "pruning.sparsity"),
        ({"pruning": {"method": "magnitude", "sparsity": math.nan}}, "pruning.sparsity"),
        ({"pruning": {"method": "magnitude", "sparsity": 1e308}}, "pruning.sparsity"),
        ({"pruning": {"method": "dense", "sparsity": 0.5}}, "pruning"),
        ({"tasks": ["no-such-task"]}, "tasks.0.name"),
        ({"tasks": []}, "tasks"),
        ({"model": "builtin:nope"}, "model"),
        ({"model": "/nonexistent/model/dir"}, "model"),
        ({"model": "file:///etc/passwd"}, "model"),
        ({"model": "../x"}, "model"),
        ({"model": "x" * 100_000}, "model"),
        ({"bogus_key": 1}, "bogus_key"),
        ({"calibration": {"source": "text"}}, "calibration"),
        ({"calibration": {"source": "text", "path": "../secret.txt"}}, "calibration"),
        ({"model_args": {"sleep_ms": 5}}, "model_args"),
    ],
)
def test_bad_configs_name_the_field(patch, field):
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, **patch})
    message = str(info.value)
    assert message.startswith(field), message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    "text",
    ["", "null", "- a\n- b", "model: [unclosed", "!!python/object:os.system {}", "model: !!python/name:os.system"],
)
def test_bad_yaml_documents(text):
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert "\n" not in str(info.value)


def test_bad_json_document():
    with pytest.raises(ConfigError, match="malformed JSON"):
        parse_config_text("{not json", "json")


def test_noop_needs_permission(monkeypatch):
    monkeypatch.delenv("PRUNEBOARD_ALLOW_NOOP")
    with pytest.raises(ConfigError, match="PRUNEBOARD_ALLOW_NOOP"):
        validate_config({**BASE, "model": "builtin:noop"})
