"""worker tokens and worker registry

* worker_tokens: remote workers' bearer tokens (SHA-256 only), created and revoked from the CLI.
* workers: every worker the queue has seen, its last heartbeat and current job (`jobs status`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("name", name="uq_worker_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_worker_tokens_hash"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("token_name", sa.String(100), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("current_job_id", sa.Integer(), nullable=True),
        sa.Column("device_json", sa.JSON(), nullable=True),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("worker_tokens")
