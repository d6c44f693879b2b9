"""job resources: what a claim filters on

* jobs.required_device: resources.device when not "any" (cpu | cuda).
* jobs.min_accelerator_memory_gb: resources.min_accelerator_memory_gb.
* jobs.model_source: builtin | local | hub (which workers can load the model).

NULL in all three (every row written before this revision): any worker takes the job.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("required_device", sa.String(8), nullable=True))
        batch.add_column(sa.Column("min_accelerator_memory_gb", sa.Float(), nullable=True))
        batch.add_column(sa.Column("model_source", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model_source")
        batch.drop_column("min_accelerator_memory_gb")
        batch.drop_column("required_device")
