"""Push a saved pruned model and its model card to a Hugging Face model repo.

    check_repo_id(repo_id) -> repo_id          (ValueError: not owner/name)
    push_model(directory, repo_id, token, card, ...) -> Pushed

The card is written into the directory as README.md, then the whole directory (weights, config,
tokenizer, `pruneboard_manifest.json`, README.md) is one commit (`HfApi.upload_folder`); the repo is
created first when missing. `settings.hub_endpoint()` (HF_ENDPOINT) says where the Hub is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import settings

__all__ = ["Pushed", "check_repo_id", "push_model"]


@dataclass(frozen=True)
class Pushed:
    repo_url: str
    commit_url: str


def check_repo_id(repo_id: str) -> str:
    """The id unchanged if it names a model repo as owner/name, else ValueError saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if (repo_id or "").count("/") != 1:
        raise ValueError(f"a Hub repo id is owner/name, not {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
    return repo_id


def push_model(directory: str | Path, repo_id: str, token: str, card: str, *, private: bool = False,
               message: str = "Upload a pruned model (PruneBoard)") -> Pushed:
    """Write `card` as README.md into `directory` and commit the directory to `repo_id` (created
    when missing, private if asked). Raises huggingface_hub's errors (401, 403, network) as they come."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.hub_endpoint(), token=token)
    repo_url = api.create_repo(check_repo_id(repo_id), repo_type="model", private=private, exist_ok=True)
    (Path(directory) / "README.md").write_text(card, encoding="utf-8")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), repo_type="model", commit_message=message)
    return Pushed(repo_url=str(repo_url), commit_url=str(commit.commit_url))
