"""per-sample trace fields, compressed traces, trace statistics, scorer version

* samples, sample_checkpoints: answer, finish_reason, thinking_tokens, truncated, repetition;
  samples.output_chars (full length: samples keep previews), sample_checkpoints.reasoning.
* traces: the zlib-compressed full texts of each sample (db.traces).
* jobs.trace_stats_json, scores.scorer_version.

Existing rows keep their full texts in `samples` (they have no trace) and a null scorer version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _trace_columns() -> list[sa.Column]:
    return [
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("thinking_tokens", sa.Integer(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("repetition", sa.Float(), nullable=True),
    ]


def upgrade() -> None:
    for table in ("samples", "sample_checkpoints"):
        for column in _trace_columns():
            op.add_column(table, column)
    op.add_column("samples", sa.Column("output_chars", sa.Integer(), nullable=True))
    op.add_column("sample_checkpoints", sa.Column("reasoning", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("trace_stats_json", sa.JSON(), nullable=True))
    op.add_column("scores", sa.Column("scorer_version", sa.String(32), nullable=True))
    op.create_table(
        "traces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("doc_id", sa.Integer(), nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("prompt_z", sa.LargeBinary(), nullable=False),
        sa.Column("prompt_chars", sa.Integer(), nullable=False),
        sa.Column("output_z", sa.LargeBinary(), nullable=False),
        sa.Column("output_chars", sa.Integer(), nullable=False),
        sa.Column("reasoning_z", sa.LargeBinary(), nullable=True),
        sa.Column("reasoning_start", sa.Integer(), nullable=True),
        sa.Column("reasoning_chars", sa.Integer(), nullable=True),
        sa.Column("answer_z", sa.LargeBinary(), nullable=True),
        sa.Column("answer_start", sa.Integer(), nullable=True),
        sa.Column("answer_chars", sa.Integer(), nullable=True),
        sa.Column("stored_bytes", sa.Integer(), nullable=False),
        sa.Column("truncated_for_storage", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("job_id", "task", "doc_id", name="uq_traces_job_task_doc"),
    )


def downgrade() -> None:
    op.drop_table("traces")
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("scorer_version")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trace_stats_json")
    with op.batch_alter_table("sample_checkpoints") as batch:
        batch.drop_column("reasoning")
        for column in _trace_columns():
            batch.drop_column(column.name)
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("output_chars")
        for column in _trace_columns():
            batch.drop_column(column.name)
