"""The CUDA check: every method as a job on a GPU, the `gpu` tests, one JSON report.

Run by `bench/gpu_check.sh` (which first installs what the image lacks from carried wheels). In a
scratch home under `--out`:

1. jobs: each config of `bench/gpu_jobs.check_jobs()` (every registered method on the tiny models,
   plus Wanda 2:4, Wanda + LoRA and tiny-qwen3 thinking) is written to a file and queued with
   `python -m jobs submit`, then `python -m jobs worker --drain` runs them all, as a GPU worker
   would; with `--smollm2`, when SmolLM2 is in the model cache, the layer-at-a-time and a few
   structured methods on it too (prune seconds at the study's calibration size, 32 x 512
   synthetic tokens; about 3 more minutes, so not in the 8-minute default);
2. tests: `pytest -m gpu tests/test_gpu.py`;
3. report (`--out`/report.json, also the last line printed): date, machine (GPU, driver, CUDA,
   CPU), versions, per job {name, method, model, state, device, dtype, seconds, prune_seconds,
   scores, error}, the test counts, and `ok`.

The efficiency probe runs short here (`CHECK_PROBE`: 10 iterations, 0.5 s per figure at least):
the check times the path, not the figures. `--allow-cpu` runs it without CUDA (a dry run of the
script itself; the `gpu` tests then skip).

    python bench/gpu_check.py [--out var/gpu-check] [--smollm2] [--allow-cpu] [--no-tests]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECK_PROBE = {"PRUNEBOARD_EFFICIENCY_ITERATIONS": "10", "PRUNEBOARD_EFFICIENCY_MIN_SECONDS": "0.5"}
SMOLLM2 = "builtin:smollm2-135m-instruct"
SMOLLM2_METHODS = {"magnitude": {}, "wanda": {}, "sparsegpt": {}, "wanda-2:4": {"pattern": "2:4"},
                   "shortgpt": {}, "flap": {}, "slicegpt": {}, "llm-pruner": {}}
"""SmolLM2 jobs when its weights are cached: name -> params (sparsity 0.5 for 2:4, else 0.25)."""
JOBS_TIMEOUT_S = 210
SMOLLM2_TIMEOUT_S = 240
TESTS_TIMEOUT_S = 240
"""Step bounds: with the install and start-up, the default check stays within 8 minutes."""


def smollm2_jobs() -> dict[str, dict[str, Any]]:
    """SmolLM2 configs (only when the converted model is in the cache: the check has no network)."""
    from common import settings
    from backend.models.loading import CACHE_MARKER, SMOLLM2_CACHE_NAME
    from bench.gpu_jobs import method_config

    if not (settings.model_cache_dir() / SMOLLM2_CACHE_NAME / CACHE_MARKER).is_file():
        return {}
    jobs = {}
    for name, params in SMOLLM2_METHODS.items():
        method = name.split("-2:4")[0]
        document = method_config(method, model=SMOLLM2, tasks=[{"name": "synthetic-mc", "limit": 20}],
                                 calibration={"source": "synthetic", "num_samples": 32, "seq_len": 512, "seed": 0})
        document["pruning"] = {"method": method, "sparsity": 0.5 if params.get("pattern") == "2:4" else 0.25,
                               "params": params}
        jobs[f"smollm2-{name}"] = document
    return jobs


def run_jobs(jobs: dict[str, dict[str, Any]], home: Path, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Submit every config through the CLI, drain them with one worker, read each job back."""
    configs = home / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    ids = {}
    for name, document in jobs.items():
        path = configs / f"{name.replace(':', '-')}.json"
        path.write_text(json.dumps(document, indent=1))
        submitted = subprocess.run([sys.executable, "-m", "jobs", "submit", str(path), "--json"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, check=True)
        ids[name] = json.loads(submitted.stdout)["id"]
    started = time.perf_counter()
    with (home / "worker.log").open("w") as log:
        subprocess.run([sys.executable, "-m", "jobs", "worker", "--drain", "--id", "gpu-check"], cwd=ROOT, env=env,
                       stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    print(f"{len(jobs)} jobs drained in {time.perf_counter() - started:.0f} s", flush=True)
    return [job_report(name, job_id, jobs[name]) for name, job_id in ids.items()]


def job_report(name: str, job_id: int, document: dict[str, Any]) -> dict[str, Any]:
    from db import queries
    from db.session import read_session

    with read_session() as session:
        detail = queries.job_detail(session, job_id)
    manifest, stages = detail["manifest"] or {}, detail["stage_seconds"] or {}
    efficiency = detail["efficiency"] or {}
    return {
        "name": name, "id": job_id, "method": document["pruning"]["method"], "model": document["model"],
        "state": detail["state"], "device": manifest.get("device"), "dtype": manifest.get("dtype"),
        "seconds": round(sum(stages.values()), 2) if stages else None, "prune_seconds": stages.get("prune"),
        "stage_seconds": stages,
        "scores": {f"{s['task']}/{s['metric']}": s["value"] for s in detail["scores"] if s["primary"]},
        "measured_speedup": efficiency.get("measured_speedup"),
        "error": f"{detail['error_type']}: {detail['error_message']}" if detail["error_type"] else None,
    }


def run_tests(out: Path, env: dict[str, str]) -> dict[str, Any]:
    """`pytest -m gpu tests/test_gpu.py`: counts from its JUnit XML."""
    junit = out / "gpu-tests.xml"
    started = time.perf_counter()
    with (out / "gpu-tests.log").open("w") as log:
        code = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p",
                               "no:cacheprovider", f"--junitxml={junit}"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=TESTS_TIMEOUT_S).returncode
    counts = {"exit_code": code, "seconds": round(time.perf_counter() - started, 1)}
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        counts.update(passed=total - failures - errors - skipped, failed=failures + errors, skipped=skipped)
        counts["failures"] = [case.get("name") for case in suite.iter("testcase")
                              if case.find("failure") is not None or case.find("error") is not None]
    return counts


def machine() -> dict[str, Any]:
    import torch

    from backend.efficiency import _device_name

    info: dict[str, Any] = {"cpu": _device_name(False), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True)
        lines = query.stdout.strip().splitlines() if query.returncode == 0 else []
        info["driver"] = lines[0] if lines else None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "gpu-check")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a dry run of this script)")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2 jobs when it is in the model cache")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device (use --allow-cpu for a dry run)")
    started = time.perf_counter()
    out = args.out.resolve()
    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cache = os.environ.get("PRUNEBOARD_CACHE_DIR") or str(ROOT / "var" / "test-cache")
    env = {**os.environ, **CHECK_PROBE, "PRUNEBOARD_HOME": str(home), "PRUNEBOARD_CACHE_DIR": cache,
           "PRUNEBOARD_AUTO_BASELINES": "0", "PRUNEBOARD_SEED_RESULTS": "0"}
    env.pop("DATABASE_URL", None)
    os.environ.update({k: env[k] for k in ("PRUNEBOARD_HOME", "PRUNEBOARD_CACHE_DIR")})
    os.environ.pop("DATABASE_URL", None)

    from backend.manifest import environment, package_version
    from bench.gpu_jobs import check_jobs

    extra = smollm2_jobs() if args.smollm2 else {}
    jobs = {**check_jobs(), **extra}
    results = run_jobs(jobs, home, env, JOBS_TIMEOUT_S + (SMOLLM2_TIMEOUT_S if extra else 0))
    tests = None if args.no_tests else run_tests(out, env)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {**{key: value for key, value in environment().items() if isinstance(value, str)},
                     **{name: package_version(name) for name in ("accelerate", "peft", "datasets")}},
        "probe": CHECK_PROBE,
        "jobs": results,
        "prune_seconds": {r["name"]: r["prune_seconds"] for r in results},
        "smollm2": ("run" if extra else "skipped: not in the model cache" if args.smollm2 else "not asked (--smollm2)"),
        "tests": tests,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["ok"] = (all(r["state"] == "succeeded" for r in results)
                    and (tests is None or (tests.get("failed") == 0 and tests["exit_code"] == 0)))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    for r in results:
        print(f"{r['name']:>18} {r['state']:>10} {r['device']} {r['dtype']} {r['seconds']} s"
              + (f"  {r['error']}" if r["error"] else ""))
    print(json.dumps({"ok": report["ok"], "jobs": len(results),
                      "succeeded": sum(r["state"] == "succeeded" for r in results), "tests": tests and
                      {k: tests.get(k) for k in ("passed", "failed", "skipped")}, "seconds": report["seconds"],
                      "report": str(out / "report.json")}))


if __name__ == "__main__":
    main()
