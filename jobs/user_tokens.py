"""Personal API tokens: a signed-in user creates one in the app, and the CLI's `--server` (the user
API, `jobs.user_api`) then acts as that user, under the rules of `jobs.access`.

Like worker tokens (`jobs.tokens`), a token is 32 random bytes (URL-safe base64, prefixed "pbu_"),
shown once and stored as SHA-256 only. A user has at most `MAX_ACTIVE_PER_USER` active tokens, sees
and revokes only their own, and every creation and revocation is in the audit log. The token names
the user, not their rights: whether they are an admin is looked up on every request.
"""
from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from db.schema import AuditEntry, UserToken, utcnow
from db.session import read_session, write_session
from jobs.access import AccessDenied, LoginRequired, User
from jobs.tokens import NAME_PATTERN, TokenInvalid, TokenRevoked, digest

__all__ = ["create", "list_tokens", "revoke", "authenticate", "PREFIX", "MAX_ACTIVE_PER_USER"]

PREFIX = "pbu_"
MAX_ACTIVE_PER_USER = 10
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""`last_used_at` is written at most this often per token (a script polling status writes nothing more)."""


def create(user: User, label: str) -> tuple[int, str]:
    """A new token for `user`; returns (its id, the plaintext: shown once, never stored)."""
    if not user.logged_in:
        raise LoginRequired("Log in with Hugging Face to create an API token.")
    label = (label or "").strip()
    if not NAME_PATTERN.match(label):
        raise ValueError("Name the token with letters, digits, '.', '_' or '-' (at most 100), e.g. laptop.")
    token = PREFIX + secrets.token_urlsafe(32)
    with write_session() as session:
        active = session.scalar(select(func.count()).select_from(UserToken).where(
            UserToken.user_name == user.name, UserToken.revoked_at.is_(None)))
        if active >= MAX_ACTIVE_PER_USER:
            raise AccessDenied(f"You have {active} active API tokens, the most allowed; revoke one first.")
        row = UserToken(user_name=user.name, label=label, token_hash=digest(token), created_at=utcnow())
        session.add(row)
        session.flush()
        session.add(AuditEntry(at=utcnow(), actor=user.name, action="token-create", job_id=None,
                               detail={"token_id": row.id, "label": label}))
        token_id = row.id
    return token_id, token


def list_tokens(user: User) -> list[dict[str, Any]]:
    """`user`'s tokens, newest first: id, label, created_at, last_used_at, revoked_at, active."""
    if not user.logged_in:
        return []
    with read_session() as session:
        rows = session.scalars(select(UserToken).where(UserToken.user_name == user.name)
                               .order_by(UserToken.id.desc())).all()
    return [{"id": r.id, "label": r.label, "created_at": r.created_at, "last_used_at": r.last_used_at,
             "revoked_at": r.revoked_at, "active": r.revoked_at is None} for r in rows]


def revoke(user: User, token_id: int) -> bool:
    """Revoke one of `user`'s tokens (requests with it are refused at once); False if it was revoked
    already. Raises KeyError when `user` has no token with this id (another user's included)."""
    with write_session() as session:
        row = session.get(UserToken, token_id, with_for_update=True)
        if row is None or not user.logged_in or row.user_name != user.name:
            raise KeyError(f"You have no API token {token_id}.")
        if row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        session.add(AuditEntry(at=utcnow(), actor=user.name, action="token-revoke", job_id=None,
                               detail={"token_id": row.id, "label": row.label}))
    return True


def authenticate(token: str) -> str:
    """The name of the user holding `token`; raises TokenInvalid or TokenRevoked."""
    wanted = digest(token)
    with read_session() as session:
        row = session.execute(select(UserToken.id, UserToken.user_name, UserToken.label, UserToken.token_hash,
                                     UserToken.revoked_at, UserToken.last_used_at)
                              .where(UserToken.token_hash == wanted)).first()
    if row is None or not hmac.compare_digest(row.token_hash, wanted):
        raise TokenInvalid("invalid token")
    if row.revoked_at is not None:
        raise TokenRevoked(f"API token {row.label!r} was revoked")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        with write_session() as session:
            stored = session.get(UserToken, row.id)
            if stored is not None:
                stored.last_used_at = now
    return row.user_name
