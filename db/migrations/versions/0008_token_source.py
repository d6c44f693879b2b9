"""where a worker token came from

* worker_tokens.source: "cli" (`python -m jobs token create`) or "env" (the PRUNEBOARD_WORKER_TOKENS
  secret, registered by app.py on start); NULL for tokens made before this migration. The app revokes
  an "env" token whose name left the secret; CLI tokens are revoked only by `token revoke`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_tokens") as batch:
        batch.add_column(sa.Column("source", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_tokens") as batch:
        batch.drop_column("source")
