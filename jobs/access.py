"""Who may do what on a shared deployment (a Hugging Face Space): the rules the UI applies to a user.

* Submitting (and retrying) needs a logged-in user when `settings.require_login()` (always on a
  Space); otherwise anonymous visitors submit as "web", as on a local install.
* A logged-in user who is not an admin has quotas: at most `settings.max_queued_per_user()` jobs
  queued or running at once, and `settings.max_submissions_per_day()` submissions and retries in
  the last 24 hours (counted in the audit log). A submission that returns an existing live job costs
  nothing; a dense baseline queued with it is submitted by "system" (shared, no one may cancel it
  but admins) and counts against the quotas of the user whose submission queued it (audit action
  "baseline").
* Every user who is not an admin submits within `jobs.limits`: a default and a maximum wall time,
  a maximum estimated work, and no `keep_model`.
* Reading a job: hidden runs exist for admins only (`visible_job_detail`); a failed job's log tail
  (paths, host names) is shown to those who may manage the job (its submitter and admins, anyone
  where login is not required). Job ids from the UI go through `job_id_from` (out-of-range ids are
  no job).
* Cancel and retry: admins (`settings.admins()`) act on any job, a logged-in user on their own jobs,
  an anonymous visitor on any job only when login is not required.
* Publishing a run's pruned model to the Hub (with the deployment's token): as cancel and retry,
  but a hidden run only by admins; each publication by a logged-in user is audited.
* Admins hide, unhide and delete runs; every such action, submission, retry and cancel by a
  logged-in user is a row of `audit_log`. A hidden run leaves the leaderboard (which then shows the
  latest visible run of that config, if any), the compare picker and non-admins' queue
  (`db.queries.list_jobs(include_hidden=False)`); it stays in the database and `unhide_run` restores it.

The CLI (`python -m jobs`) is for operators with database access and calls `jobs.queue` directly.
Checks and the submission that follows are serialised per process, so one app process never lets a
user past a quota by submitting twice at once.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select

from common import settings
from backend.config import JobConfig, config_hash
from db import results_version
from db.schema import AuditEntry, Job, utcnow
from db.session import read_session, write_session
from jobs import queue
from jobs.baselines import baseline_needed
from jobs.limits import WorkLimitExceeded, bound
from db.states import ACTIVE_STATES, LIVE_STATES, JobState
from jobs.states import InvalidTransition, JobNotFound

__all__ = [
    "User", "ANONYMOUS", "ANONYMOUS_SUBMITTER", "AccessError", "LoginRequired", "AccessDenied", "QuotaExceeded",
    "LimitExceeded", "submit_as", "submit_many_as", "cancel_as", "retry_as", "can_manage", "quota_status",
    "hide_run", "unhide_run", "delete_run", "audit_entries", "require_publish", "record_publish", "job_id_from",
    "visible_job_detail",
]

ANONYMOUS_SUBMITTER = "web"
"""Recorded as the submitter of jobs submitted without login (login not required)."""
"""A config with a job in one of these states is not queued again by a plain submit."""
_COUNTED_ACTIONS = ("submit", "retry", "baseline")
_MAX_JOB_ID = 2**31 - 1
"""Job ids are INTEGER columns (32-bit on Postgres): anything larger names no job."""
_quota_lock = threading.Lock()


class AccessError(Exception):
    """A request the rules refuse; str() is a sentence to show the user as it is."""


class LoginRequired(AccessError):
    pass


class AccessDenied(AccessError):
    pass


class QuotaExceeded(AccessError):
    pass


class LimitExceeded(AccessError):
    """A config past the bounds of `jobs.limits` (wall time, work, keep_model)."""


@dataclass(frozen=True)
class User:
    """Who makes a request: a Hugging Face username (None: not logged in) and whether they are an admin."""

    name: str | None = None
    is_admin: bool = False

    @classmethod
    def named(cls, name: str | None) -> User:
        """A user by name, an admin when listed in PRUNEBOARD_ADMINS."""
        name = (name or "").strip() or None
        return cls(name=name, is_admin=name is not None and name.casefold() in settings.admins())

    @property
    def logged_in(self) -> bool:
        return self.name is not None

    @property
    def submitter(self) -> str:
        return self.name or ANONYMOUS_SUBMITTER


ANONYMOUS = User()


# --- submitting -------------------------------------------------------------------------------


def submit_as(user: User, config: JobConfig, force: bool = False) -> tuple[Job, bool]:
    """`queue.submit` for `user`, under the login rule and quotas; returns (job, existing)."""
    return submit_many_as(user, [config], force=force)[0]


def submit_many_as(user: User, configs: Iterable[JobConfig], force: bool = False) -> list[tuple[Job, bool]]:
    """Submit several validated configs (a preset) for `user`: the quotas are checked for all of them
    before any is queued. Returns [(job, existing)] in order."""
    _require_login(user, "submit jobs")
    configs = list(configs) if user.is_admin else [_bounded(config) for config in configs]
    with _quota_lock:
        costly = [force or not _has_live_job(config) for config in configs]
        baselines = _baselines_needed(configs)
        _check_quota(user, sum(costly) + len(baselines))
        results = []
        for config, counts in zip(configs, costly):
            baseline = queue.queue_dense_baseline(config) if settings.auto_baselines() else None
            if baseline is not None:  # queued for this user: it counts against their quotas
                _audit(user, "baseline", baseline.id, {"config_hash": baseline.config_hash})
            job, existing = queue.submit(config, force=force, submitter=user.submitter)
            if counts:
                _record_submission(user, job, existing)
            results.append((job, existing))
    return results


def retry_as(user: User, job_id: int) -> Job:
    """`queue.retry` if `user` may manage the job; a user's retry counts against their quotas."""
    job = _job(job_id)
    _require_manage(user, job, "retry")
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        return queue.retry(job_id)  # raises InvalidTransition with its explanation
    with _quota_lock:
        _check_quota(user, 1)
        job = queue.retry(job_id)
        _audit(user, "retry", job_id, None)
    return job


def cancel_as(user: User, job_id: int) -> JobState:
    """`queue.cancel` if `user` may manage the job; returns the job's state."""
    _require_manage(user, _job(job_id), "cancel")
    state = queue.cancel(job_id)
    _audit(user, "cancel", job_id, None)
    return state


def can_manage(user: User, job_id: int) -> bool:
    """Whether `user` may cancel or retry the job (the UI enables its buttons with this)."""
    try:
        _require_manage(user, _job(job_id), "manage")
    except (AccessError, JobNotFound):
        return False
    return True


def quota_status(user: User) -> dict[str, Any]:
    """{"limited", "active", "max_active", "today", "max_per_day"} for a line under the submit button
    (limits of 0 mean none; admins and anonymous visitors are not limited)."""
    limited = user.logged_in and not user.is_admin
    active, today = _usage(user) if user.logged_in else (0, 0)
    return {"limited": limited, "active": active, "max_active": settings.max_queued_per_user(),
            "today": today, "max_per_day": settings.max_submissions_per_day()}


def require_publish(user: User, job: Job) -> None:
    """Raise AccessError unless `user` may push this run's model to the Hub."""
    if job.hidden and not user.is_admin:
        raise AccessDenied(f"Job {job.id} is hidden: only admins can publish it.")
    _require_manage(user, job, "publish")


def record_publish(user: User, job_id: int, repo_id: str) -> None:
    _audit(user, "publish", job_id, {"repo": repo_id})


# --- reading jobs -----------------------------------------------------------------------------


def job_id_from(value: Any) -> int | None:
    """A job id typed or clicked in the UI (an int, float or text): None unless a whole number that
    a job could have (1 .. 2**31 - 1), so huge, fractional and non-finite values name no job."""
    try:
        number = float(value) if not isinstance(value, int) else value
        job_id = int(number)
    except (TypeError, ValueError, OverflowError):
        return None
    return job_id if job_id == number and 1 <= job_id <= _MAX_JOB_ID else None


def visible_job_detail(user: User, job_id: Any) -> dict[str, Any] | None:
    """`db.queries.job_detail` as `user` may read it: None for no such job and for a hidden run
    (admins excepted); `log_tail` None unless `user` may manage the job."""
    from db import queries

    job_id = job_id_from(job_id)
    if job_id is None:
        return None
    with read_session() as session:
        detail = queries.job_detail(session, job_id)
    if detail is None or (detail.get("hidden") and not user.is_admin):
        return None
    if detail.get("log_tail") and not _may_manage(user, detail.get("submitter")):
        detail["log_tail"] = None
    return detail


# --- moderation -------------------------------------------------------------------------------


def hide_run(admin: User, job_id: int, reason: str) -> None:
    """Take a run off the leaderboard, compare views and other users' queue (kept in the database)."""
    _set_hidden(admin, job_id, reason, hidden=True)


def unhide_run(admin: User, job_id: int, reason: str = "") -> None:
    _set_hidden(admin, job_id, reason, hidden=False)


def delete_run(admin: User, job_id: int, reason: str) -> dict[str, Any]:
    """Delete a job with its scores, samples and traces; the audit entry keeps what it was. A running
    job is cancelled first (its worker would otherwise still deliver). Returns that summary."""
    _require_admin(admin, "delete runs")
    reason = _reason(reason)
    with write_session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        if job.state == JobState.RUNNING:
            raise InvalidTransition(f"job {job_id} is running: cancel it first, then delete it")
        summary = {"reason": reason, "state": job.state.value, "model": job.model, "paradigm": job.paradigm,
                   "method": job.method, "sparsity": job.sparsity, "config_hash": job.config_hash,
                   "submitter": job.submitter}
        session.delete(job)  # scores, samples, traces and checkpoints go with it (ON DELETE CASCADE)
        results_version.bump(session)
        session.add(AuditEntry(at=utcnow(), actor=admin.submitter, action="delete", job_id=job_id, detail=summary))
    return summary


def audit_entries(limit: int = 100, action: str | None = None, job_id: int | None = None) -> list[dict[str, Any]]:
    """The newest audit entries first: id, at, actor, action, job_id, detail."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if job_id is not None:
        query = query.where(AuditEntry.job_id == job_id)
    with read_session() as session:
        return [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "job_id": e.job_id,
                 "detail": e.detail or {}} for e in session.scalars(query)]


# --- helpers ----------------------------------------------------------------------------------


def _require_login(user: User, what: str) -> None:
    if not user.logged_in and settings.require_login():
        raise LoginRequired(f"Log in with Hugging Face to {what}.")


def _require_admin(user: User, what: str) -> None:
    if not user.is_admin:
        raise AccessDenied(f"Only admins can {what}.")


def _may_manage(user: User, submitter: str | None) -> bool:
    if user.is_admin:
        return True
    if not user.logged_in:
        return not settings.require_login()  # anonymous, login not required: as on a local install
    return submitter == user.name


def _require_manage(user: User, job: Job, verb: str) -> None:
    if _may_manage(user, job.submitter):
        return
    if not user.logged_in:
        _require_login(user, f"{verb} jobs")
    if job.submitter != user.name:
        owner = "system (an automatic baseline)" if job.submitter == "system" else "another user"
        raise AccessDenied(f"Job {job.id} was submitted by {owner}: only its submitter or an admin can {verb} it.")


def _check_quota(user: User, new_jobs: int) -> None:
    if new_jobs == 0 or not user.logged_in or user.is_admin:
        return
    active, today = _usage(user)
    max_active, max_daily = settings.max_queued_per_user(), settings.max_submissions_per_day()
    if max_active and active + new_jobs > max_active:
        raise QuotaExceeded(
            f"You have {active} job(s) queued or running and may have at most {max_active}"
            + (f"; this would add {new_jobs}" if new_jobs > 1 else "")
            + ". Wait for some to finish, or cancel one."
        )
    if max_daily and today + new_jobs > max_daily:
        raise QuotaExceeded(
            f"You submitted {today} job(s) in the last 24 hours; the limit is {max_daily} a day"
            + (f" and this would add {new_jobs}" if new_jobs > 1 else "") + ". Try again later."
        )


def _usage(user: User) -> tuple[int, int]:
    """(jobs of the user queued or running, the baselines their submissions queued included;
    submissions, retries and such baselines in the last 24 hours)."""
    since = utcnow() - timedelta(days=1)
    theirs = select(AuditEntry.job_id).where(AuditEntry.actor == user.name, AuditEntry.action == "baseline")
    with read_session() as session:
        active = session.scalar(
            select(func.count()).select_from(Job).where(
                or_(Job.submitter == user.name, Job.id.in_(theirs)), Job.state.in_(ACTIVE_STATES)))
        today = session.scalar(
            select(func.count()).select_from(AuditEntry).where(
                AuditEntry.actor == user.name, AuditEntry.action.in_(_COUNTED_ACTIONS), AuditEntry.at >= since))
    return int(active or 0), int(today or 0)


def _bounded(config: JobConfig) -> JobConfig:
    try:
        return bound(config)
    except WorkLimitExceeded as exc:
        raise LimitExceeded(str(exc)) from None


def _baselines_needed(configs: list[JobConfig]) -> set[str]:
    """Hashes of the dense baselines submitting `configs` would queue (one per distinct baseline)."""
    if not settings.auto_baselines():
        return set()
    return {config_hash(b) for b in map(baseline_needed, configs) if b is not None}


def _has_live_job(config: JobConfig) -> bool:
    """Whether a plain submit would return an existing job instead of queueing work."""
    with read_session() as session:
        return session.scalar(
            select(Job.id).where(Job.config_hash == config_hash(config), Job.state.in_(LIVE_STATES)).limit(1)
        ) is not None


def _record_submission(user: User, job: Job, existing: bool) -> None:
    """Audit a submission that queued work; a failed job queued again now belongs to who queued it."""
    with write_session() as session:
        if existing:
            stored = session.get(Job, job.id)
            if stored is not None:
                stored.submitter = user.submitter
        session.add(AuditEntry(at=utcnow(), actor=user.submitter, action="submit", job_id=job.id,
                               detail={"config_hash": job.config_hash, "requeued": existing}))
    job.submitter = user.submitter


def _audit(user: User, action: str, job_id: int | None, detail: dict[str, Any] | None) -> None:
    if not user.logged_in:
        return  # anonymous actions (login not required) have no one to record
    with write_session() as session:
        session.add(AuditEntry(at=utcnow(), actor=user.submitter, action=action, job_id=job_id, detail=detail))


def _set_hidden(admin: User, job_id: int, reason: str, hidden: bool) -> None:
    _require_admin(admin, "hide or unhide runs")
    reason = _reason(reason) if hidden else (reason or "").strip()
    with write_session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        job.hidden = hidden
        results_version.bump(session)
        session.add(AuditEntry(at=utcnow(), actor=admin.submitter, action="hide" if hidden else "unhide",
                               job_id=job_id, detail={"reason": reason}))


def _reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise ValueError("give a reason (it is recorded in the audit log)")
    return text[:1000]


def _job(job_id: int) -> Job:
    return queue.get_job(int(job_id))
