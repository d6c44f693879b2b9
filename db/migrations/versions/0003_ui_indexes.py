"""indexes for the leaderboard pivot and trace comparison queries

* jobs (state, model, paradigm, config_hash, id): the latest succeeded job of each config of one
  model and paradigm, read from the index alone.
* scores (job_id, is_primary): the primary scores of the runs on the board (without it SQLite
  scans every primary score through ix_scores_primary_task).

The comparison reads samples through the unique (job_id, task, doc_id) index; it needs no new one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_board", "jobs", ["state", "model", "paradigm", "config_hash", "id"])
    op.create_index("ix_scores_job_primary", "scores", ["job_id", "is_primary"])


def downgrade() -> None:
    op.drop_index("ix_scores_job_primary", table_name="scores")
    op.drop_index("ix_jobs_board", table_name="jobs")
