"""initial schema: jobs, scores, samples, sample_checkpoints

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")  # db.states.JobState, frozen here


def _sample_columns() -> list[sa.Column]:
    return [
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("doc_id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("extracted", sa.Text(), nullable=True),
        sa.Column("gold", sa.Text(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("metrics_json", sa.JSON(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("paradigm", sa.String(16), nullable=False),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("sparsity", sa.Float(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*JOB_STATES, name="job_state", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("requeues", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(200), nullable=True),
        sa.Column("stage_text", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("manifest_json", sa.JSON(), nullable=True),
        sa.Column("efficiency_json", sa.JSON(), nullable=True),
        sa.Column("prune_report_json", sa.JSON(), nullable=True),
        sa.Column("stage_seconds_json", sa.JSON(), nullable=True),
        sa.Column("submitter", sa.String(200), nullable=True),
    )
    op.create_index("ix_jobs_config_hash", "jobs", ["config_hash"])
    op.create_index("ix_jobs_state_id", "jobs", ["state", "id"])
    op.create_index("ix_jobs_model_paradigm", "jobs", ["model", "paradigm"])

    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("stderr", sa.Float(), nullable=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("comparability_key", sa.String(500), nullable=False),
        sa.UniqueConstraint("job_id", "task", "metric", name="uq_scores_job_task_metric"),
    )
    op.create_index("ix_scores_primary_task", "scores", ["is_primary", "task", "job_id"])

    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        *_sample_columns(),
        sa.UniqueConstraint("job_id", "task", "doc_id", name="uq_samples_job_task_doc"),
    )
    op.create_table(
        "sample_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        *_sample_columns(),
        sa.UniqueConstraint("job_id", "task", "doc_id", name="uq_sample_checkpoints_job_task_doc"),
    )


def downgrade() -> None:
    op.drop_table("sample_checkpoints")
    op.drop_table("samples")
    op.drop_index("ix_scores_primary_task", table_name="scores")
    op.drop_table("scores")
    op.drop_index("ix_jobs_model_paradigm", table_name="jobs")
    op.drop_index("ix_jobs_state_id", table_name="jobs")
    op.drop_index("ix_jobs_config_hash", table_name="jobs")
    op.drop_table("jobs")
