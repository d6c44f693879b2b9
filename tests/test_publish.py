"""Publishing pruned models to the Hub (`python -m jobs prune --push-to-hub`, the run detail's
"Publish"), against a loopback server answering like the Hub (tests/hub_server.py): what
arrives there loads as its model card says, the card carries the manifest's facts, and refusals
happen before any work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from backend.config import validate_config
from backend.publish.model_card import load_format, model_card
from db.session import dispose_engines
from hub_server import TEST_TOKEN, FakeHub
from jobs import access, queue
from jobs.cli import main
from jobs.worker import Worker
from ui import run_actions

TOKEN = TEST_TOKEN
PROBE = [[5, 17, 42, 99, 3, 64, 8]]


@pytest.fixture()
def hub(hub, monkeypatch):
    """The loopback Hub (tests/conftest.py) with a token that may write to it."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


TINY_PARAMS = {"llm-pruner": {"keep_first_layers": 1, "keep_last_layers": 1}}
"""tiny-llama has 8 layers: the LLaMA recipe's 4 + 2 kept layers would leave too few to prune."""


def write_config(tmp_path: Path, method: str, sparsity: float) -> Path:
    path = tmp_path / f"{method}.yaml"
    pruning = {"method": method, "sparsity": sparsity, "params": TINY_PARAMS.get(method, {})}
    path.write_text(yaml.safe_dump({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"], "seed": 0,
                                    "pruning": pruning}))
    return path


def download(hub: FakeHub, repo_id: str, folder: Path) -> Path:
    """The repo's files as they arrived on the Hub, written to `folder`."""
    for name, content in hub.files_at(repo_id, repo_type="model").items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(PROBE)).logits


# --- python -m jobs prune --push-to-hub ------------------------------------------------------------


def test_prune_pushes_a_loadable_model_with_its_card(hub, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(write_config(tmp_path, "shortgpt", 0.25)), "--out", str(out),
                 "--push-to-hub", "alice/tiny-shortgpt"]) == 0
    files = hub.files_at("alice/tiny-shortgpt", repo_type="model")
    assert {"model.safetensors", "config.json", "pruneboard_manifest.json", "README.md"} <= set(files)
    assert "pushed to" in capsys.readouterr().err

    pulled = download(hub, "alice/tiny-shortgpt", tmp_path / "pulled")
    model = AutoModelForCausalLM.from_pretrained(pulled, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 6
    torch.testing.assert_close(logits(model), logits(AutoModelForCausalLM.from_pretrained(out).eval()), atol=0, rtol=0)

    card = ModelCard((pulled / "README.md").read_text())  # huggingface_hub's own parser
    manifest = json.loads(files["pruneboard_manifest.json"])
    assert card.data.library_name == "transformers" and "shortgpt" in card.data.tags
    assert card.data.base_model is None  # a random test model has no Hub base model
    assert "from_pretrained(\"alice/tiny-shortgpt\")" in card.text
    assert manifest["calibration"]["sha256"] in card.text and manifest["model"]["fingerprint"] in card.text
    assert f"{manifest['prune_report']['achieved_sparsity']:.4g}" in card.text
    assert "Removed layers" in card.text and "Not evaluated" in card.text


def test_a_width_pruned_model_card_says_how_to_load_it(hub, tmp_path):
    out = tmp_path / "out"
    assert main(["prune", str(write_config(tmp_path, "llm-pruner", 0.3)), "--out", str(out),
                 "--push-to-hub", "alice/tiny-llm-pruner", "--private"]) == 0
    assert hub.is_private("alice/tiny-llm-pruner") is True
    pulled = download(hub, "alice/tiny-llm-pruner", tmp_path / "pulled")
    card = ModelCard((pulled / "README.md").read_text())
    assert "load_pruned(snapshot_download(\"alice/tiny-llm-pruner\"))" in card.text
    assert "cannot build" in card.text
    with pytest.raises(Exception):  # what the card warns of
        AutoModelForCausalLM.from_pretrained(pulled)
    from backend.models.loading import load_pruned

    torch.testing.assert_close(logits(load_pruned(pulled)), logits(load_pruned(out)), atol=0, rtol=0)


def test_routed_models_get_a_card_that_says_the_routers_need_pruneboard(tmp_path):
    manifest = {"config": {"model": "builtin:smollm2-135m-instruct",
                           "pruning": {"method": "skipgpt-style", "sparsity": 0.3}}, "prune_report": {}}
    (tmp_path / "config.json").write_text("{}")
    assert load_format(manifest, tmp_path) == "routed"
    card = ModelCard(model_card(manifest, tmp_path, "alice/routed"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "routers" in card.text and "skips nothing" in card.text and "python -m jobs prune" in card.text


def fail_if_loaded(monkeypatch):
    import backend.models.loading

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(backend.models.loading, "load_model", boom)


def test_push_without_a_token_or_with_a_bad_repo_exits_2_before_pruning(tmp_path, monkeypatch, capsys):
    fail_if_loaded(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    config = str(write_config(tmp_path, "magnitude", 0.5))
    assert main(["prune", config, "--out", str(tmp_path / "a"), "--push-to-hub", "alice/m"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not (tmp_path / "a").exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["prune", config, "--out", str(tmp_path / "b"), "--push-to-hub", "no-owner"]) == 2
    assert "owner/name" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_a_token_the_hub_rejects_exits_2_and_keeps_the_model(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    out = tmp_path / "out"
    assert main(["prune", str(write_config(tmp_path, "magnitude", 0.5)), "--out", str(out),
                 "--push-to-hub", "alice/m"]) == 2
    err = capsys.readouterr().err
    assert "could not push to alice/m" in err and "401" in err and str(out) in err
    assert (out / "model.safetensors").is_file() and hub.repo_ids() == set()


# --- "Publish" in the run detail -----------------------------------------------------------------


def kept_run(submitter: str, keep_model: bool = True) -> int:
    config = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc", "limit": 4}],
                              "pruning": {"method": "magnitude", "sparsity": 0.5}, "keep_model": keep_model})
    job, _ = queue.submit(config, submitter=submitter)
    assert Worker("test").run(drain=True, install_signals=False) == 1
    return job.id


def test_publish_a_kept_run_from_the_run_detail(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "pruneboard/test")
    monkeypatch.setenv("PRUNEBOARD_ADMINS", "carol")
    monkeypatch.setenv("SPACE_HOST", "pruneboard-test.hf.space")
    job_id = kept_run("alice")
    alice, bob, carol = access.User.named("alice"), access.User.named("bob"), access.User.named("carol")

    refused = run_actions.publish(job_id, "bob/copy", bob)
    assert "Not published" in refused and "only its submitter or an admin" in refused
    assert run_actions.publish(job_id, "not a repo", alice).startswith("**Not published.** Give the Hub repo")
    message = run_actions.publish(job_id, "alice/tiny-magnitude", alice)
    assert message.startswith("Published job") and hub.repo_ids() == {"alice/tiny-magnitude"}

    pulled = download(hub, "alice/tiny-magnitude", tmp_path / "pulled")
    card = ModelCard((pulled / "README.md").read_text())
    from db import queries
    from db.session import read_session

    with read_session() as session:
        detail = queries.job_detail(session, job_id)
    primary = next(s for s in detail["scores"] if s["primary"])
    assert f"https://pruneboard-test.hf.space/?tab=queue&job={job_id}" in card.text
    assert primary["comparability_key"] in card.text and f"{primary['value']:.4g}" in card.text
    from db import leaderboard

    with read_session() as session:
        speedup = leaderboard.board(session).frame.set_index("job_id").loc[job_id, "speedup_measured"]
    # the efficiency probe times the dense model in the same process, so no separate baseline run is needed
    assert f"Measured speed-up: **{speedup:.2f}×** decode tokens/s over the dense baseline" in card.text
    model = AutoModelForCausalLM.from_pretrained(pulled).eval()
    zeros = float((model.model.layers[0].mlp.down_proj.weight == 0).float().mean())
    assert zeros == pytest.approx(0.5, abs=0.01)
    assert [e["detail"] for e in access.audit_entries(action="publish")] == [{"repo": "alice/tiny-magnitude"}]

    access.hide_run(carol, job_id, "checking")
    assert "hidden" in run_actions.publish(job_id, "alice/again", alice)
    assert run_actions.publish(job_id, "carol/hidden-copy", carol).startswith("Published job")


def test_publish_explains_what_a_run_without_a_kept_model_needs(hub, monkeypatch):
    job_id = kept_run("alice", keep_model=False)
    message = run_actions.publish(job_id, "alice/m", access.User.named("alice")).replace("\\", "")  # unescaped
    assert "did not keep its pruned model" in message and "keep_model: true" in message and hub.repo_ids() == set()
    monkeypatch.delenv("HF_TOKEN")
    other = kept_run("alice")
    assert "HF_TOKEN" in run_actions.publish(other, "alice/m", access.User.named("alice")).replace("\\", "")
