"""Evaluation tasks. Each module registers one or more `TaskSpec`s; a spec builds an lm-eval task
config dict that reads local JSONL files (or data it generates itself), so evaluation runs offline.
To add a task: write `backend/tasks/<name>.py` calling `register_task(TaskSpec(...))` and add a test.
"""
from backend.tasks.base import TaskSpec, get_task, list_tasks, register_task

__all__ = ["TaskSpec", "get_task", "list_tasks", "register_task"]
