"""personal API tokens of signed-in users

* user_tokens: a user's bearer tokens for the user API (`/api/v1/user/...`, the CLI's `--server`),
  created and revoked in the app; SHA-256 only, with when each was last used.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_user_tokens_hash"),
    )
    op.create_index("ix_user_tokens_user_name", "user_tokens", ["user_name"])


def downgrade() -> None:
    op.drop_index("ix_user_tokens_user_name", table_name="user_tokens")
    op.drop_table("user_tokens")
