"""facts known at submission become columns

* jobs: family, uses_calibration, calibration_source, calibration_data, recovery;
* scores: category, test_time_scaling, output_type.

Readers (leaderboard, findings, plots) used to rebuild each run's method parameters and parse its
config to learn these on every read. New rows get them from `jobs.facts` when they are written;
existing rows are filled here from a frozen copy of the registries and of
`backend.config.describe_calibration` as they were at this revision (the database package never
imports `backend`), so a later change of a method or task never changes what this revision wrote.
Methods and tasks unknown to this copy are left NULL ("other" to the readers). Downgrade drops the
columns.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FAMILY = {
    "dense": "dense", "magnitude": "unstructured", "wanda": "unstructured", "sparsegpt": "unstructured",
    "shortgpt": "depth", "sleb": "depth", "shortened-ppl": "depth", "shortened-taylor": "depth",
    "llm-pruner": "width", "slicegpt": "width", "flap": "width",
    "skipgpt-style": "dynamic", "dllm-style": "dynamic", "mod-style": "dynamic",
}
CALIBRATED = {"wanda", "sparsegpt", "shortgpt", "sleb", "shortened-ppl", "shortened-taylor", "llm-pruner",
              "slicegpt", "flap", "skipgpt-style", "dllm-style", "mod-style"}
"""Methods that always read calibration data (magnitude does with a non-uniform allocation)."""
CATEGORY = {
    "aime24": "reasoning", "aime25": "reasoning", "amc23": "reasoning", "gpqa-diamond": "reasoning",
    "gsm8k": "reasoning", "jeebench": "reasoning", "livecodebench": "reasoning", "math500": "reasoning",
    "synthetic-arith": "reasoning",
    "arc-challenge": "classification", "arc-easy": "classification", "boolq": "classification",
    "hellaswag": "classification", "openbookqa": "classification", "piqa": "classification",
    "synthetic-mc": "classification", "winogrande": "classification",
    "humaneval": "generation", "humaneval-plus": "generation", "ifeval": "generation", "popqa": "generation",
    "truthfulqa-mc2": "generation",
    "wikitext2-ppl": "perplexity",
}
TEST_TIME_SCALING = {"aime24", "aime25", "amc23", "gpqa-diamond", "jeebench", "math500"}
NOT_GENERATED = {"arc-challenge": "loglikelihood", "arc-easy": "loglikelihood", "boolq": "loglikelihood",
                 "hellaswag": "loglikelihood", "openbookqa": "loglikelihood", "piqa": "loglikelihood",
                 "synthetic-mc": "loglikelihood", "winogrande": "loglikelihood", "truthfulqa-mc2": "loglikelihood",
                 "wikitext2-ppl": "perplexity"}
"""Output types of the tasks that do not generate (the others in `CATEGORY` do)."""
DEFAULT_CALIBRATION_LABEL = "text wikitext2/valid.txt 32x256 seed 0 (default)"
"""What a calibrated config without a calibration section used (defaults version 2)."""
SECTION_DEFAULTS = {"source": "synthetic", "path": None, "task": None, "split": "train", "num_samples": 8,
                    "seq_len": 128, "seed": 0}
"""CalibrationConfig's own defaults (fields a stored section leaves out)."""


def run_facts(document: dict[str, Any]) -> dict[str, Any]:
    pruning = document.get("pruning") or {}
    method = pruning.get("method", "dense")
    params = pruning.get("params") or {}
    uses = method in CALIBRATED or (method == "magnitude" and params.get("allocation", "uniform") != "uniform")
    section = document.get("calibration")
    source = data = None
    if uses:
        if section is None:
            source, data = "text", DEFAULT_CALIBRATION_LABEL
        else:
            cfg = {**SECTION_DEFAULTS, **section}
            source = str(cfg["source"])
            what = {"text": cfg["path"], "task-aligned": f"{cfg['task']} {cfg['split']}",
                    "self-generated": f"{cfg['task']} {cfg['split']}"}.get(source)
            data = " ".join(str(x) for x in (source, what, f"{cfg['num_samples']}x{cfg['seq_len']}",
                                             f"seed {cfg['seed']}") if x)
    recovery = document.get("recovery")
    return {
        "family": FAMILY.get(method), "uses_calibration": uses if method in FAMILY else None,
        "calibration_source": source, "calibration_data": data,
        "recovery": isinstance(recovery, dict) and recovery.get("enabled", True) is not False,
    }


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("family", sa.String(32), nullable=True))
        batch.add_column(sa.Column("uses_calibration", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("calibration_source", sa.String(32), nullable=True))
        batch.add_column(sa.Column("calibration_data", sa.String(400), nullable=True))
        batch.add_column(sa.Column("recovery", sa.Boolean(), nullable=True))
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("category", sa.String(32), nullable=True))
        batch.add_column(sa.Column("test_time_scaling", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("output_type", sa.String(16), nullable=True))

    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("config_json", sa.Text),
                    sa.column("family", sa.String), sa.column("uses_calibration", sa.Boolean),
                    sa.column("calibration_source", sa.String), sa.column("calibration_data", sa.String),
                    sa.column("recovery", sa.Boolean))
    for job_id, config_json in connection.execute(sa.select(jobs.c.id, jobs.c.config_json)).all():
        try:
            document = json.loads(config_json or "{}")
        except ValueError:
            continue
        if isinstance(document, dict):
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(**run_facts(document)))
    scores = sa.table("scores", sa.column("task", sa.String), sa.column("category", sa.String),
                      sa.column("test_time_scaling", sa.Boolean), sa.column("output_type", sa.String))
    for task, category in CATEGORY.items():
        connection.execute(scores.update().where(scores.c.task == task)
                           .values(category=category, test_time_scaling=task in TEST_TIME_SCALING,
                                   output_type=NOT_GENERATED.get(task, "generate")))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("output_type")
        batch.drop_column("test_time_scaling")
        batch.drop_column("category")
    with op.batch_alter_table("jobs") as batch:
        for name in ("recovery", "calibration_data", "calibration_source", "uses_calibration", "family"):
            batch.drop_column(name)
