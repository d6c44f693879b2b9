"""`python -m jobs` (installed: `pruneboard`): submit, watch, cancel and retry jobs, rescore finished
runs, run workers, list methods and tasks, prune and publish models, export results, show the findings'
verdicts.

Exit codes: 0 done; 1 the job's state forbids the request (e.g. cancelling a succeeded job);
2 bad input (an invalid config, an unknown job id, bad arguments, a Hub push refused); 3 a server
rejected the token. `submit`, `status` and `cancel` with `--server URL` act on a PruneBoard server as
the user whose API token is in $PRUNEBOARD_TOKEN (`jobs.cli_remote`). Errors are one line on stderr,
logs go to stderr, and stdout carries only the answer. Only `worker` (through the pipeline, when a
job starts) and `prune` (which prunes in-process and saves the model to --out) import torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from typing import Any

from common.vocabulary import PARADIGMS
from db.states import JobState
from jobs.cli_errors import EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_OK, CliError

__all__ = ["main", "build_parser"]

def build_parser() -> argparse.ArgumentParser:
    installed = os.path.basename(sys.argv[0]) == "pruneboard"  # the console command of `pip install .`
    parser = argparse.ArgumentParser(
        prog="pruneboard" if installed else "python -m jobs", description="PruneBoard job queue.",
        epilog="Exit codes: 0 ok, 1 not allowed in the job's state (with --server also: quota used up, server "
               "unreachable), 2 bad input or unknown job, 3 the server rejected the token (or the user).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="validate a YAML/JSON config and queue it")
    submit.add_argument("config", metavar="CONFIG", help="config file (.json is JSON, else YAML); '-' reads stdin")
    submit.add_argument("--json", action="store_true", help='print {"id", "state", "existing"}')
    submit.add_argument("--force", action="store_true", help="queue a new job even if this config ran before")
    submit.add_argument("--submitter", default=None, help="recorded with the job (default: cli:$USER)")
    _server_arguments(submit)

    status = commands.add_parser("status", help="show jobs (newest first) or one job")
    status.add_argument("id", type=int, nargs="?", metavar="ID")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--state", choices=[state.value for state in JobState])
    _server_arguments(status)

    for name, text in (("cancel", "cancel a queued or running job"), ("retry", "queue a failed or cancelled job again")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("id", type=int, metavar="ID")
        sub.add_argument("--json", action="store_true")
        if name == "cancel":
            _server_arguments(sub)

    rescore = commands.add_parser(
        "rescore", help="score a succeeded run's stored outputs again with the current scorers (no model)"
    )
    rescore.add_argument("id", type=int, metavar="RUN_ID")
    rescore.add_argument("--json", action="store_true")

    prune = commands.add_parser(
        "prune", help="prune a config's model and save it (no queue, no evaluation; progress on stderr)"
    )
    prune.add_argument("config", metavar="CONFIG", help="config file (.json is JSON, else YAML); '-' reads stdin")
    prune.add_argument("--out", required=True, metavar="DIR",
                       help="directory for the pruned model (safetensors, config, tokenizer, pruneboard_manifest.json)")
    prune.add_argument("--push-to-hub", metavar="REPO", default=None,
                       help="then push it with a model card (README.md) to this Hub model repo, owner/name "
                            "(token: $HF_TOKEN; checked before pruning)")
    prune.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    worker = commands.add_parser("worker", help="run jobs in this process")
    worker.add_argument("--drain", action="store_true", help="exit once no job is queued")
    worker.add_argument("--id", dest="worker_id", metavar="NAME", help="worker id (default hostname:pid)")
    worker.add_argument("--server", metavar="URL",
                        help="run as a remote worker of this PruneBoard server (worker API; no database access)")
    worker.add_argument("--token-file", metavar="PATH",
                        help="file holding the remote worker's token (default: $PRUNEBOARD_WORKER_TOKEN)")
    worker.add_argument("--token", metavar="TOKEN",
                        help="deprecated: the token on the command line is visible to every local user; "
                             "use $PRUNEBOARD_WORKER_TOKEN or --token-file")
    worker.add_argument("--insecure", action="store_true",
                        help="allow a plain http:// --server that is not on this machine (the token and "
                             "results then travel unencrypted)")
    worker.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                        help="seconds between claims while idle (default 0.3 local, 2 remote)")
    worker.add_argument("--stop-with-parent", action="store_true",
                        help="stop (handing back the running job) when the process that started it is gone; "
                             "the app starts its local workers so, so a killed app leaves none behind")
    worker.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one job at a time in this process; ray: each job a Ray task "
                             "(pip install -r requirements-ray.txt)")
    worker.add_argument("--address", default=None, metavar="ADDR",
                        help="with --executor ray: the Ray cluster ('auto': the running one; default: start one)")
    worker.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="with --executor ray: jobs in flight at once (default: cluster CPUs / --cpus-per-job)")
    worker.add_argument("--cpus-per-job", type=float, default=1.0, metavar="N",
                        help="with --executor ray: num_cpus of each job's task (default 1)")

    token = commands.add_parser("token", help="create, revoke or list remote workers' API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    token_create = token_commands.add_parser("create", help="create a token; prints it once (the last word)")
    token_create.add_argument("name", metavar="NAME")
    token_create.add_argument("--out", metavar="FILE", default=None,
                              help="write the token to this new file (0600) instead of printing it")
    token_revoke = token_commands.add_parser("revoke", help="revoke a token: its worker is refused at once")
    token_revoke.add_argument("name", metavar="NAME")
    token_list = token_commands.add_parser("list", help="list tokens (names and dates, never the tokens)")
    token_list.add_argument("--json", action="store_true")

    preset = commands.add_parser(
        "submit-preset", help="validate every config of a named preset (jobs.presets), then queue them all"
    )
    preset.add_argument("name", metavar="NAME", help="a preset (python -m jobs submit-preset --help lists them)")
    preset.add_argument("--model", action="append", default=[], metavar="PARADIGM=ID",
                        help="replace the preset's model of a paradigm (presets on hub models; repeatable)")
    preset.add_argument("--dry-run", action="store_true",
                        help="list the configs without queueing or checking availability (what a submit would "
                             "lack is listed under \"missing\")")
    preset.add_argument("--json", action="store_true",
                        help='print {"preset", "jobs": [{"id", "state", "existing"}]} (dry run: "configs", "missing", '
                             '"estimated_cpu_seconds": null for models without CPU figures)')
    preset.add_argument("--submitter", default=None, help="recorded with the jobs (default: cli:$USER)")

    admin = commands.add_parser("admin", help="hide, unhide or delete runs; read the audit log (jobs.access)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    for name, text in (("hide", "take a run off the leaderboard and compare views (kept in the database)"),
                       ("unhide", "show a hidden run again"),
                       ("delete", "delete a run with its scores, samples and traces")):
        sub = admin_commands.add_parser(name, help=text)
        sub.add_argument("id", type=int, metavar="JOB")
        sub.add_argument("--reason", required=name != "unhide", default="", help="recorded in the audit log")
        sub.add_argument("--actor", default=None, help="recorded in the audit log (default: cli:$USER)")
    audit = admin_commands.add_parser("audit", help="show the audit log, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--action", default=None, help="only this action (submit, retry, cancel, hide, unhide, delete, "
                                                      "publish, token-create, token-revoke)")
    audit.add_argument("--job", type=int, default=None, metavar="JOB", help="only entries about this job")
    audit.add_argument("--json", action="store_true")

    results = commands.add_parser("results", help="export, import and inspect results bundles (jobs.bundle); "
                                                  "write a run as lm-eval's files (run-files)")
    results_commands = results.add_subparsers(dest="results_command", required=True, metavar="ACTION")
    export = results_commands.add_parser("export", help="write succeeded runs to a bundle file")
    export.add_argument("file", metavar="FILE", help="the bundle to write (.jsonl.gz)")
    chosen = export.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--all", action="store_true", help="every succeeded run (hidden ones with --include-hidden)")
    chosen.add_argument("--job", type=int, action="append", metavar="ID", help="this run (repeatable)")
    export.add_argument("--include-hidden", action="store_true", help="with --all: hidden runs too, marked hidden")
    imported = results_commands.add_parser(
        "import", help='import a bundle; prints {"imported", "skipped"} (runs already present are skipped)')
    imported.add_argument("file", metavar="FILE")
    inspect = results_commands.add_parser("inspect", help="what a bundle holds (format, counts, names)")
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true")
    run_files = results_commands.add_parser(
        "run-files", help="write a succeeded run as lm-eval's files: results JSON and samples_<task> JSONL "
                          "(jobs.run_files); prints their paths")
    run_files.add_argument("id", type=int, metavar="ID")
    run_files.add_argument("dir", metavar="DIR", help="output directory (lm-eval's layout: DIR/<model>/...)")
    run_files.add_argument("--include-hidden", action="store_true", help="allow a hidden run")

    findings = commands.add_parser(
        "findings", help="the study's findings with the verdict the stored results give each (db.findings)")
    findings.add_argument("--model", default=None, help="only runs of this model")
    findings.add_argument("--paradigm", default=None, choices=PARADIGMS, help="only runs of this paradigm")
    findings.add_argument("--pairing", default="auto", metavar="PAIRING",
                          help="how runs of two families pair: auto (each finding's measured cost), params, flops, "
                               "latency (that measured cost for all), or sparsity (nominal)")
    findings.add_argument("--json", action="store_true",
                          help='print a JSON list, one object per finding: {"id", "statement", "verdict", "n", '
                               '"interval", "estimate", "rule", "reason", "pairing", "numbers"}')

    data = commands.add_parser("data", help="get task data from the Hugging Face Hub (backend.taskdata)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_commands.add_parser(
        "fetch", help="download tasks' data into PRUNEBOARD_DATA_DIR, hash-checked, each task all or nothing",
        epilog="Exit codes: 0 ok, 1 a download failed (that task's files unchanged), 2 an unknown task or a gated "
               "one without HF_TOKEN.")
    fetch.add_argument("tasks", nargs="*", metavar="TASK", help="python -m jobs tasks")
    fetch.add_argument("--all", action="store_true", help="every task with a Hub source")
    fetch.add_argument("--force", action="store_true", help="download again tasks whose files are present")
    fetch.add_argument("--json", action="store_true", help='print {"data_dir", "tasks": [...], "failed": {...}}')

    for name, text in (("methods", "list pruning methods"), ("tasks", "list evaluation tasks"),
                       ("references", "list the published results runs are compared with")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--json", action="store_true")

    sandbox = commands.add_parser("sandbox-run", help="run a Python file in the code tasks' jail; prints one JSON "
                                                      "line (exit 3 where the jail cannot be built)")
    sandbox.add_argument("file", metavar="FILE")
    sandbox.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock seconds (default 10)")
    return parser


def _server_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--server", metavar="URL", default=None,
                         help="act on this PruneBoard server (a Space) as the user whose API token is in "
                              "$PRUNEBOARD_TOKEN (made in the app's API tokens tab), under its quotas and rules")
    command.add_argument("--token-file", metavar="PATH", default=None,
                         help="with --server: a file holding the API token instead of $PRUNEBOARD_TOKEN")
    command.add_argument("--insecure", action="store_true",
                         help="with --server: allow plain http:// to another machine (the token travels unencrypted)")
    # Refused, not absent: argparse would otherwise read `--token X` as an abbreviated --token-file.
    command.add_argument("--token", dest="token_on_command_line", default=None, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    handler = {
        "submit": _submit, "status": _status, "cancel": _cancel, "retry": _retry,
        "worker": _worker, "methods": _methods, "tasks": _tasks, "prune": _prune, "rescore": _rescore,
        "submit-preset": _submit_preset, "token": _token, "admin": _admin, "results": _results,
        "references": _references, "findings": _findings, "data": _data, "sandbox-run": _sandbox_run,
    }[args.command]
    try:
        code = handler(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code or EXIT_OK


# --- commands ---------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> None:
    if _server_mode(args):
        from jobs.cli_remote import remote_submit  # the user API's client: submit, status, cancel --server

        answer = remote_submit(args)
    else:
        answer = _submit_here(args)
    if answer["existing"]:
        logging.getLogger(__name__).info("job %d has this config already (%s)", answer["id"], answer["state"])
    if args.json:
        _print_json(answer)
    else:
        print(answer["id"])


def _submit_here(args: argparse.Namespace) -> dict[str, Any]:
    config = _load_config(args.config)  # fully validated before the database is opened
    from backend.config import ConfigError
    from jobs import queue

    submitter = args.submitter or f"cli:{os.environ.get('USER', 'unknown')}"
    try:
        job, existing = queue.submit(config, force=args.force, submitter=submitter)
    except ConfigError as exc:  # e.g. a task whose data this host lacks (backend.taskdata.availability)
        raise CliError(str(exc)) from None
    return {"id": job.id, "state": job.state.value, "existing": existing}


def _server_mode(args: argparse.Namespace) -> bool:
    """Whether the command acts on a server (--server); refuses a token on the command line and the
    options that need a server without one."""
    if args.token_on_command_line is not None:
        raise CliError("--token is refused: a token on the command line is visible to every local user (ps); "
                       "put it in $PRUNEBOARD_TOKEN or a file given with --token-file")
    if args.server is None and (args.token_file or args.insecure):
        raise CliError("--token-file and --insecure need --server")
    return args.server is not None


def _submit_preset(args: argparse.Namespace) -> None:
    from backend.config import ConfigError, canonical_dict
    from jobs.presets import UnknownPreset, missing, preset_configs, submit_preset
    from backend.work import cpu_seconds

    submitter = args.submitter or f"cli:{os.environ.get('USER', 'unknown')}"
    models = {}
    for item in args.model:
        paradigm, _, model = item.partition("=")
        if not paradigm or not model:
            raise CliError(f"--model takes PARADIGM=ID, got {item!r}")
        models[paradigm.strip()] = model.strip()
    try:  # every config is validated (and, to submit, checked to run here) before anything is queued
        configs = preset_configs(args.name, models) if args.dry_run else None
        submitted = [] if args.dry_run else submit_preset(args.name, submitter=submitter, models=models)
    except (UnknownPreset, ConfigError) as exc:
        raise CliError(str(exc)) from None
    stages = [cpu_seconds(c) for c in configs or ()]
    estimate = None if not stages or None in stages else sum(sum(s.values()) for s in stages)
    if configs is not None and args.json:
        _print_json({"preset": args.name, "configs": [canonical_dict(c) for c in configs],
                     "missing": missing(configs),
                     "estimated_cpu_seconds": None if estimate is None else round(estimate)})
    elif configs is not None:
        for c in configs:
            calibration = c.effective_calibration().source if c.pruning.method != "dense" else "-"
            print(f"{c.model}  {c.paradigm:<8}  {c.pruning.method:<14}  {c.pruning.sparsity:.2f}  "
                  f"{calibration:<14}  {','.join(t.name for t in c.tasks)}")
        if estimate is not None:
            # stderr: stdout stays one line per config
            print(f"estimated time on a 2-core CPU: {estimate / 3600:.1f} h", file=sys.stderr)
    elif args.json:
        _print_json({"preset": args.name, "jobs": [
            {"id": job.id, "state": job.state.value, "existing": existing} for job, existing in submitted]})
    else:
        for job, _ in submitted:
            print(job.id)


def _status(args: argparse.Namespace) -> None:
    if _server_mode(args):
        from jobs.cli_remote import remote_status

        data = remote_status(args)
    else:
        data = _status_here(args)
    if args.json:
        _print_json(data)
    elif args.id is not None:
        _print_detail(data["jobs"][0])
    else:
        _print_table(data["jobs"])
        _print_workers(data["workers"])


def _status_here(args: argparse.Namespace) -> dict[str, Any]:
    from db.queries import job_detail, list_jobs
    from db.session import read_session
    from jobs.registry import list_workers
    from jobs.waiting import add_waiting_reasons

    with read_session() as session:
        if args.id is not None:
            detail = job_detail(session, args.id)
            if detail is None:
                raise CliError(f"no job with id {args.id}")
            jobs = [detail]
        else:
            jobs = list_jobs(session, limit=args.limit, state=args.state)
        add_waiting_reasons(session, jobs)
        workers = list_workers(session)
    return {"jobs": jobs, "workers": workers}


def _cancel(args: argparse.Namespace) -> None:
    if _server_mode(args):
        from jobs.cli_remote import remote_cancel

        state = remote_cancel(args)
    else:
        from jobs import queue

        state = _transition(lambda: queue.cancel(args.id))
    _answer(args, {"id": args.id, "state": state.value}, f"job {args.id}: {_cancel_text(state)}")


def _retry(args: argparse.Namespace) -> None:
    from jobs import queue

    job = _transition(lambda: queue.retry(args.id))
    _answer(args, {"id": job.id, "state": job.state.value}, f"job {job.id}: queued again")


def _rescore(args: argparse.Namespace) -> None:
    from jobs.rescore import rescore

    report = _transition(lambda: rescore(args.id))
    if args.json:
        _print_json(report)
        return
    print(f"job {report['id']}: rescored with scorer version {report['scorer_version']}")
    for task in report["tasks"]:
        if not task["rescored"]:
            print(f"  {task['task']}: {task['reason']}")
            continue
        cut = f", {task['truncated_traces']} from traces cut for storage" if task["truncated_traces"] else ""
        print(f"  {task['task']}: {task['samples']} samples, {task['changed']} changed{cut}")
        for score in task["scores"]:
            mark = "*" if score["primary"] else " "
            print(f"    {mark}{score['metric']}: {_fmt(score['old'])} -> {_fmt(score['new'])}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _prune(args: argparse.Namespace) -> None:
    config = _load_config(args.config)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise CliError(f"--out {out} exists and is not an empty directory")
    token = _hub_push_token(args.push_to_hub) if args.push_to_hub else None  # before the model is loaded
    from backend.publish.export import prune_only, save_pruned

    def progress(fraction: float, text: str) -> None:
        print(f"[{fraction * 100:3.0f}%] {text}", file=sys.stderr, flush=True)

    try:
        loaded, report, manifest = prune_only(config, progress)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    saved = save_pruned(loaded, report, manifest, out)
    progress(1.0, f"saved to {saved}")
    if token is not None:
        _push_pruned(saved, manifest, args.push_to_hub, token, args.private)
    print(saved)


def _hub_push_token(repo_id: str) -> str:
    from common import settings
    from backend.publish.hub import check_repo_id

    try:
        check_repo_id(repo_id)
    except ValueError as exc:
        raise CliError(f"--push-to-hub: {exc}") from None
    token = settings.hub_token()
    if not token:
        raise CliError("--push-to-hub needs a Hugging Face token with write access in HF_TOKEN")
    return token


def _push_pruned(saved, manifest: dict[str, Any], repo_id: str, token: str, private: bool) -> None:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from backend.publish.hub import push_model
    from backend.publish.model_card import model_card

    pruning = manifest["config"].get("pruning") or {"method": "dense", "sparsity": 0.0}
    message = f"PruneBoard: {manifest['config']['model']} pruned with {pruning['method']} at {pruning['sparsity']:g}"
    try:
        pushed = push_model(saved, repo_id, token, model_card(manifest, saved, repo_id), private=private, message=message)
    except (HfHubHTTPError, httpx.HTTPError, OSError) as exc:
        raise CliError(f"could not push to {repo_id}: {exc} (the pruned model is saved in {saved})") from None
    print(f"pushed to {pushed.repo_url} ({pushed.commit_url})", file=sys.stderr)


def _worker(args: argparse.Namespace) -> None:
    from jobs.cli_worker import run_worker  # its own module: the worker loop, executors and parent watch

    run_worker(args)


def _sandbox_run(args: argparse.Namespace) -> int:
    from jobs.cli_sandbox import run_sandboxed_file  # the jail's own command: exit codes 0, 2, 3

    return run_sandboxed_file(args)


def _token(args: argparse.Namespace) -> None:
    from jobs import tokens

    if args.token_command == "create":
        if args.out is not None and os.path.lexists(args.out):
            raise CliError(f"--out {args.out} exists; give a new file")
        try:
            token = tokens.create(args.name)
        except (ValueError, FileExistsError) as exc:
            raise CliError(str(exc), EXIT_CONFLICT if isinstance(exc, FileExistsError) else EXIT_BAD_INPUT) from None
        if args.out is None:
            print(f"worker token {args.name} (shown once; stored hashed): {token}")
            return
        from common.private_files import write_private_text

        write_private_text(args.out, token + "\n")
        print(f"worker token {args.name} written to {args.out} (0600; stored hashed)")
    elif args.token_command == "revoke":
        try:
            revoked = tokens.revoke(args.name)
        except KeyError:
            raise CliError(f"no token named {args.name!r}") from None
        print(f"token {args.name}: {'revoked' if revoked else 'already revoked'}")
    else:
        rows = tokens.list_tokens()
        if args.json:
            _print_json({"tokens": rows})
            return
        for row in rows:
            state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
            print(f"{row['name']:<30} created {row['created_at']:%Y-%m-%d %H:%M}  {state}")


def _admin(args: argparse.Namespace) -> None:
    """Operators act as an admin (they have database access anyway)."""
    from jobs import access

    if args.admin_command == "audit":
        entries = access.audit_entries(limit=args.limit, action=args.action, job_id=args.job)
        if args.json:
            _print_json({"entries": entries})
            return
        for e in entries:
            job = "" if e["job_id"] is None else e["job_id"]
            detail = " ".join(f"{k}={v}" for k, v in e["detail"].items())
            print(f"{e['at']:%Y-%m-%d %H:%M:%S}  {e['actor'][:30]:<30}  {e['action']:<7}  {job:>5}  {detail}")
        return
    actor = access.User(name=args.actor or f"cli:{os.environ.get('USER', 'unknown')}", is_admin=True)
    action = {"hide": access.hide_run, "unhide": access.unhide_run, "delete": access.delete_run}[args.admin_command]
    try:
        _transition(lambda: action(actor, args.id, args.reason))
    except ValueError as exc:  # an empty reason (InvalidTransition is handled by _transition)
        raise CliError(str(exc)) from None
    print(f"job {args.id}: {({'hide': 'hidden', 'unhide': 'shown again', 'delete': 'deleted'})[args.admin_command]}")


def _results(args: argparse.Namespace) -> None:
    from jobs import bundle

    if args.results_command == "run-files":
        _run_files(args)
        return
    try:
        if args.results_command == "export":
            counts = bundle.export_bundle(args.file, job_ids=args.job, include_hidden=args.include_hidden)
            print(f"wrote {counts['runs']} run(s), {counts['samples']} sample(s) to {args.file}", file=sys.stderr)
            _print_json(counts)
        elif args.results_command == "import":
            _print_json(bundle.import_bundle(args.file))
        else:
            summary = bundle.inspect_bundle(args.file)
            if args.json:
                _print_json(summary)
            else:
                for key, value in summary.items():
                    print(f"{key:>16}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    except bundle.BundleError as exc:
        raise CliError(f"{args.file}: {exc}") from None


def _run_files(args: argparse.Namespace) -> None:
    from jobs.run_files import RunFilesError, write_run_files

    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        raise CliError(f"{args.dir} exists and is not a directory")
    try:
        paths = write_run_files(args.id, args.dir, include_hidden=args.include_hidden)
    except RunFilesError as exc:
        raise CliError(str(exc)) from None
    for path in paths:
        print(path)


def _references(args: argparse.Namespace) -> None:
    from backend.references import references

    rows = [ref.as_dict() for ref in references()]
    if args.json:
        _print_json({"references": rows})
        return
    for r in rows:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['model'][-36:]:<36} {r['method']:<10} {r['sparsity']:<4g} {params:<36} {r['task']:<14} "
              f"{r['metric']:<11} {r['value']:<9g} {r['source']}")


def _findings(args: argparse.Namespace) -> None:
    from db.findings import findings
    from db.session import read_session

    try:
        with read_session() as session:
            verdicts = findings(session, model=args.model, paradigm=args.paradigm, pairing=args.pairing)
    except ValueError as exc:  # an unknown pairing
        raise CliError(str(exc)) from None
    if args.json:  # a list, as the findings issue specifies (each object names its pairing)
        _print_json([v.as_dict() for v in verdicts])
        return
    for verdict in verdicts:
        shown = verdict.as_dict()
        interval = "-" if shown["interval"] is None else f"[{shown['interval'][0]:.3f}, {shown['interval'][1]:.3f}]"
        print(f"{verdict.verdict:<12}  {verdict.key}  n={shown['n']}  estimate={_fmt(shown['estimate'])}  {interval}")
        print(f"{'':<14}{verdict.reason}")
        print(f"{'':<14}rule: {verdict.rule}")


def _data(args: argparse.Namespace) -> None:
    """`data fetch`: progress on stderr, the outcome per task on stdout; exit 2 for an unknown task or
    a gated one without a token, 1 when a download failed (that task's files unchanged)."""
    from backend.taskdata.fetch import DataFetchError, fetch_tasks

    try:
        report = fetch_tasks(args.tasks, every=args.all, force=args.force,
                             log=lambda text: print(text, file=sys.stderr, flush=True))
    except DataFetchError as exc:
        raise CliError(str(exc), exc.exit_code) from None
    if args.json:
        _print_json(report.as_dict())
    else:
        for outcome in report.outcomes:
            where = f" ({outcome.manifest_path})" if outcome.manifest_path else ""
            print(f"{outcome.task}: {outcome.status}{where}")
    if report.failures:
        failed = ", ".join(report.failures)
        raise CliError(f"not fetched: {failed} (see above; their files are unchanged)", report.exit_code)


def _methods(args: argparse.Namespace) -> None:
    from backend.pruning import list_methods

    methods = [
        {
            "name": m.name,
            "family": m.family,
            "description": m.description,
            "sparsity_meaning": m.sparsity_meaning,
            "needs_calibration": m.needs_calibration,
            "parameters": m.Params.model_json_schema(),
        }
        for m in list_methods()
    ]
    if args.json:
        _print_json({"methods": methods})
        return
    for m in methods:
        params = ", ".join(m["parameters"].get("properties", {})) or "-"
        print(f"{m['name']:<16} {m['family']:<13} params: {params}")
        print(f"{'':<16} {m['description']} (sparsity: {m['sparsity_meaning']})")


def _tasks(args: argparse.Namespace) -> None:
    from common import settings
    from backend.taskdata import get_source
    from backend.tasks import list_tasks
    from backend.tasks.base import fetch_command

    data_dir = settings.data_dir()
    tasks = [
        {
            "name": t.name,
            "category": t.category,
            "output_type": t.output_type,
            "primary_metric": t.primary_metric,
            "higher_is_better": t.higher_is_better,
            "metrics": list(t.metrics),
            "description": t.description,
            "lm_eval_task": t.lm_eval_task,
            "data_files": list(t.data_files),
            "data_paths": [str(data_dir / f) for f in t.data_files],
            "data_schema": t.data_schema,
            "data_present": t.data_present(data_dir),
            "hub_source": source.describe() if (source := get_source(t.name)) else None,
        }
        for t in list_tasks()
    ]
    if args.json:
        _print_json({"data_dir": str(data_dir), "tasks": tasks})
        return
    for t in tasks:
        data = "data ok" if t["data_present"] else f"MISSING {', '.join(t['data_files'])} in {data_dir}"
        if not t["data_present"] and t["hub_source"]:
            data += f' (run "{fetch_command(t["name"])}")'
        arrow = "higher" if t["higher_is_better"] else "lower"
        print(f"{t['name']:<20} {t['category']:<15} {t['output_type']:<14} {t['primary_metric']} ({arrow} is better)  {data}")


# --- helpers ----------------------------------------------------------------------------------


def _load_config(path: str):
    from backend.config import ConfigError, load_config, parse_config_text

    try:
        if path == "-":
            return parse_config_text(sys.stdin.read())
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except RecursionError:
        raise CliError("config is nested too deeply") from None
    except (ValueError, TypeError) as exc:  # anything else a document can provoke in validation
        raise CliError(f"invalid config: {exc}") from None


def _transition(action):
    from jobs.states import InvalidTransition, JobNotFound

    try:
        return action()
    except JobNotFound as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except InvalidTransition as exc:
        raise CliError(str(exc), EXIT_CONFLICT) from None


def _cancel_text(state) -> str:
    return {"cancelled": "cancelled", "running": "cancel requested; its worker stops it within a heartbeat"}.get(
        state.value, state.value
    )


def _answer(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        _print_json(data)
    else:
        print(text)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=None, default=str))


def _print_table(jobs: list[dict[str, Any]]) -> None:
    header = f"{'ID':>5}  {'STATE':<9}  {'PROG':>4}  {'STAGE':<10}  {'MODEL':<28}  {'METHOD':<12}  {'SPARS':>5}  {'TRY':>3}  ERROR"
    print(header)
    for j in jobs:
        note = f"{j['error_type']}: {j['error_message']}"[:60] if j["error_type"] else ""
        if j.get("waiting_reason"):  # in full: it says what to change
            note = f"waiting: {j['waiting_reason']}"
        print(
            f"{j['id']:>5}  {j['state']:<9}  {j['progress'] * 100:>3.0f}%  {(j['stage'] or '')[:10]:<10}  "
            f"{j['model'][-28:]:<28}  {j['method'][:12]:<12}  {j['sparsity']:>5.2f}  {j['attempts']:>3}  {note}"
        )


def _print_workers(workers: list[dict[str, Any]]) -> None:
    if not workers:
        return
    print()
    print(f"{'WORKER':<40}  {'STATUS':<7}  {'JOB':>5}  LAST HEARTBEAT")
    for w in workers:
        job = "" if w["current_job"] is None else w["current_job"]
        beat = w["last_heartbeat_at"]  # a datetime, or its str() from a server (--server)
        beat = datetime.fromisoformat(beat) if isinstance(beat, str) else beat
        print(f"{w['id'][-40:]:<40}  {w['status']:<7}  {job:>5}  {beat:%Y-%m-%d %H:%M:%S} "
              f"({w['seconds_since_heartbeat']:.0f} s ago)")


def _print_detail(job: dict[str, Any]) -> None:
    for key in ("id", "state", "progress", "stage", "stage_text", "model", "paradigm", "method", "sparsity",
                "attempts", "requeues", "worker_id", "created_at", "started_at", "finished_at",
                "error_type", "error_message", "waiting_reason"):
        if job.get(key) not in (None, ""):
            print(f"{key:>14}: {job[key]}")
    for score in job["scores"]:
        mark = "*" if score["primary"] else " "
        print(f"{'score':>14}: {mark}{score['task']} {score['metric']} = {score['value']}")
    if job.get("log_tail"):
        print("      log tail:")
        for line in job["log_tail"].splitlines()[-20:]:
            print(f"    {line}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (callers in-process may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:  # leave an embedding application's (or pytest's) logging alone
        from jobs.logs import formatter

        handler = _StderrHandler()
        handler.setFormatter(formatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
