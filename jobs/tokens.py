"""Bearer tokens of remote workers: created and revoked from the CLI, stored as SHA-256 only.

A token is 32 random bytes (URL-safe base64, prefixed "pbw_"); the plaintext is returned once by
`create` and never stored. Random 256-bit secrets need no slow hash: SHA-256 resists preimages and
the lookup is by digest, then compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from sqlalchemy import select

from db.schema import WorkerToken, utcnow
from db.session import read_session, write_session

__all__ = ["create", "revoke", "list_tokens", "authenticate", "TokenInvalid", "TokenRevoked", "NAME_PATTERN"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PREFIX = "pbw_"


class TokenInvalid(LookupError):
    """No token has this value."""


class TokenRevoked(PermissionError):
    """The token existed but was revoked."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(name: str) -> str:
    """A new token for worker `name`; return the plaintext (shown once). A revoked name is reused."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid token name {name!r}: letters, digits, '.', '_' or '-', at most 100")
    token = PREFIX + secrets.token_urlsafe(32)
    with write_session() as session:
        row = session.scalar(select(WorkerToken).where(WorkerToken.name == name))
        if row is not None and row.revoked_at is None:
            raise FileExistsError(f"token {name!r} exists; revoke it first")
        if row is None:
            row = WorkerToken(name=name)
            session.add(row)
        row.token_hash = digest(token)
        row.created_at = utcnow()
        row.revoked_at = None
        row.source = "cli"
    return token


def revoke(name: str) -> bool:
    """Revoke token `name`; False if it was revoked already. Raises KeyError for an unknown name."""
    with write_session() as session:
        row = session.scalar(select(WorkerToken).where(WorkerToken.name == name))
        if row is None:
            raise KeyError(f"no token named {name!r}")
        if row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
    return True


def list_tokens() -> list[dict[str, Any]]:
    with read_session() as session:
        rows = session.scalars(select(WorkerToken).order_by(WorkerToken.name)).all()
        return [
            {"name": r.name, "created_at": r.created_at, "revoked_at": r.revoked_at, "active": r.revoked_at is None}
            for r in rows
        ]


def authenticate(token: str) -> str:
    """The name of the worker holding `token`; raises TokenInvalid or TokenRevoked."""
    wanted = digest(token)
    with read_session() as session:
        row = session.execute(
            select(WorkerToken.name, WorkerToken.token_hash, WorkerToken.revoked_at).where(WorkerToken.token_hash == wanted)
        ).first()
    if row is None or not hmac.compare_digest(row.token_hash, wanted):
        raise TokenInvalid("invalid token")
    if row.revoked_at is not None:
        raise TokenRevoked(f"token {row.name!r} was revoked")
    return row.name
