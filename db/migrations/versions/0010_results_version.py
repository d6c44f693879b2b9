"""results version: one counter that every change to the stored results bumps

* results_version: one row (id 1) whose `version` goes up by one in the same transaction as every
  change to what the leaderboard, plots, findings and compare views show (a job completes, a
  bundle is imported, a run is hidden, unhidden, deleted or rescored). The app caches those views
  per version, so a result committed by any worker in any process shows on the next request.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "results_version",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    op.bulk_insert(table, [{"id": 1, "version": 0, "changed_at": now}])


def downgrade() -> None:
    op.drop_table("results_version")
