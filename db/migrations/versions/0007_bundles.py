"""results bundles: where a run came from

* jobs.origin_id: the run's id where it was produced ("<deployment id>/<job id>"), set on runs
  imported from a results bundle; NULL for runs produced here (their origin id is this
  deployment's id and their own id). Import skips origin ids already present.
* jobs.imported_at: when the run was imported (NULL: produced here).
* jobs.provenance_json: for imported runs, the commit and deployment that produced them and the
  bundle they came from.
* deployment: one row, this database's random id (created with it), which names the origin of
  every run produced here, and when the shipped results snapshot was imported into it (once).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("origin_id", sa.String(120), nullable=True))
        batch.add_column(sa.Column("imported_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("provenance_json", sa.JSON(), nullable=True))
        batch.create_index("ix_jobs_origin_id", ["origin_id"])
    deployment = op.create_table(
        "deployment",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("seeded_at", sa.DateTime(), nullable=True),
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    op.bulk_insert(deployment, [{"id": str(uuid.uuid4()), "created_at": now}])


def downgrade() -> None:
    op.drop_table("deployment")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_origin_id")
        batch.drop_column("provenance_json")
        batch.drop_column("imported_at")
        batch.drop_column("origin_id")
