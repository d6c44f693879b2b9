"""The view cache (ui.view_cache) and the results version it keys on (db.results_version): every
writer of results bumps the version, cached views are recomputed exactly when it (or the pending
dense baselines) changed, concurrent misses compute once, and downloads are built on request."""
from __future__ import annotations

import threading
import time

import pytest

from backend.config import validate_config
from backend.result import RunResult, ScoreRecord
from db import results_version
from db.session import dispose_engines, read_session
from jobs import access, queue
from ui import view_cache as vc
from ui.view_cache import ViewCache

ADMIN = access.User(name="admin", is_admin=True)


def seed(method: str, sparsity: float, value: float, tasks=("synthetic-mc",)) -> int:
    config = validate_config({"model": "builtin:tiny-llama", "tasks": list(tasks),
                              "pruning": {"method": method, "sparsity": sparsity}})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("test-worker")
    assert claimed is not None and claimed.id == job.id
    result = RunResult(scores=[ScoreRecord(t, "acc", value, 0.01, True, True, "k") for t in tasks], samples=[],
                       efficiency={}, prune_report={"method": method}, manifest={})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


def version() -> int:
    with read_session() as session:
        return results_version.current(session)


@pytest.fixture(autouse=True)
def fresh_cache():
    vc.view_cache.clear()
    yield
    vc.view_cache.clear()


def test_every_writer_of_results_bumps_the_version(tmp_path):
    from jobs import bundle
    from jobs.rescore import rescore

    assert version() == 0
    job = seed("dense", 0.0, 0.8)
    assert version() == 1
    access.hide_run(ADMIN, job, "checking")
    access.unhide_run(ADMIN, job)
    assert version() == 3
    rescore(job)
    assert version() == 4
    bundle.export_bundle(tmp_path / "runs.jsonl.gz")
    access.delete_run(ADMIN, job, "re-import it")
    assert version() == 5
    assert bundle.import_bundle(tmp_path / "runs.jsonl.gz")["imported"] == 1
    assert version() == 6
    assert bundle.import_bundle(tmp_path / "runs.jsonl.gz")["imported"] == 0  # nothing changed: no bump
    assert version() == 6


def test_a_failed_completion_leaves_the_version_alone():
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("w")
    assert not queue.complete(job.id, claimed.attempts + 1, RunResult([], [], {}, {}, {}))  # a lost claim
    queue.fail(job.id, claimed.attempts, "RuntimeError", "boom")
    assert version() == 0


def _rows(table: dict) -> list[int]:
    return [row[table["headers"].index("job_id")] for row in table["data"]]


def _refresh(**widgets):
    import gradio as gr

    from ui import board as svc
    from ui.tabs.leaderboard import refresh_for

    values = {"model": svc.ALL, "paradigm": svc.ALL, "families": [], "sparsity_min": 0.0, "sparsity_max": 1.0,
              "calibration": svc.ALL, "recovery": "any", "search": "", "view": "raw", "sort_by": svc.PINNED_ORDER,
              "order": "best first", "columns": [], **widgets}
    return refresh_for(gr.Dataframe(interactive=False, render=False))(*values.values())


def test_leaderboard_answers_from_the_cache_until_a_result_is_committed(monkeypatch):
    from ui import board as svc

    calls = []
    real = svc.board_view
    monkeypatch.setattr(svc, "board_view", lambda *a, **k: calls.append(a) or real(*a, **k))
    dense = seed("dense", 0.0, 0.8)
    first = _refresh()[0]
    assert _rows(first) == [dense] and len(calls) == 1
    assert _refresh()[0] == first and len(calls) == 1  # the same state: no recomputation
    _refresh(view="delta")
    assert len(calls) == 2  # other widget values: another entry

    pruned = seed("magnitude", 0.5, 0.4)  # as a worker in another process would: only the database knows
    assert _rows(_refresh()[0]) == [dense, pruned] and len(calls) == 3
    access.hide_run(ADMIN, pruned, "hidden")
    assert _rows(_refresh()[0]) == [dense]


def test_the_cached_table_is_what_gradio_sends_and_stays_unchanged():
    import gradio as gr

    from ui import board as svc

    seed("dense", 0.0, 0.8)
    seed("magnitude", 0.5, 0.4)
    table, summary, legend, exports, sort, columns, link = _refresh(view="delta")
    fresh = gr.Dataframe(interactive=False).postprocess(svc.board_view(view="delta").table).model_dump()
    assert table == fresh
    assert table["metadata"]["styling"] and "2 run(s)" in summary
    assert 'href="export/leaderboard.csv?' in exports and "view=delta" in exports
    sent = gr.Dataframe(interactive=False).postprocess(table).model_dump()
    assert sent == fresh and _refresh(view="delta")[0] == fresh  # sending it did not alter the cached value


def test_a_queued_dense_baseline_shows_in_the_flag_at_once():
    seed("magnitude", 0.5, 0.4)
    flag = _refresh()[0]
    assert "no dense baseline for this model and paradigm" in str(flag["data"])
    job, _ = queue.submit(validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}))
    assert f"job {job.id} is queued" in str(_refresh()[0]["data"])
    queue.claim_next("w")
    assert f"job {job.id} is running" in str(_refresh()[0]["data"])


def test_another_database_never_gets_this_ones_views(tmp_path, monkeypatch):
    """Both databases are at version 1: only their deployment ids tell them apart."""
    first = seed("dense", 0.0, 0.8)
    assert _rows(_refresh()[0]) == [first]
    monkeypatch.setenv("PRUNEBOARD_HOME", str(tmp_path / "other"))
    dispose_engines()
    second = seed("magnitude", 0.5, 0.4)
    assert version() == 1
    table = _refresh()[0]
    assert _rows(table) == [second] and "magnitude" in str(table["data"])


def test_plots_and_findings_are_served_from_the_cache(monkeypatch):
    import gradio as gr
    from gradio.components.plot import PlotData

    from ui import board as svc
    from ui import services
    from ui.tabs import findings, plots

    seed("dense", 0.0, 0.8)
    seed("magnitude", 0.5, 0.4)
    drawn, judged = [], []
    real_figures, real_findings = svc.plot_figures, services.findings_html
    monkeypatch.setattr(svc, "plot_figures", lambda *a: drawn.append(a) or real_figures(*a))
    monkeypatch.setattr(services, "findings_html", lambda *a: judged.append(a) or real_findings(*a))
    draw = plots.figures_for(gr.Plot(render=False))
    figures = draw("builtin:tiny-llama", "instruct", "average", "speedup_measured", "k")
    assert all(isinstance(f, PlotData) for f in figures[:5]) and "magnitude" in figures[0].plot
    assert draw("builtin:tiny-llama", "instruct", "average", "speedup_measured", "k")[:5] == figures[:5]
    html, _ = findings._view(svc.ALL, svc.ALL, "auto")
    assert findings._view(svc.ALL, svc.ALL, "auto")[0] == html
    assert len(drawn) == 1 and len(judged) == 1
    seed("wanda", 0.3, 0.6)
    draw("builtin:tiny-llama", "instruct", "average", "speedup_measured", "k")
    findings._view(svc.ALL, svc.ALL, "auto")
    assert len(drawn) == 2 and len(judged) == 2


def test_concurrent_misses_compute_once():
    cache = ViewCache(state=lambda: 1)
    computed = []
    barrier = threading.Barrier(8)

    def slow() -> str:
        computed.append(1)
        time.sleep(0.2)
        return "view"

    results = []

    def ask() -> None:
        barrier.wait()
        results.append(cache.get("key", slow))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["view"] * 8 and len(computed) == 1
    assert cache.misses == 1 and cache.hits == 0  # the other seven waited on the one computation


def test_state_changes_recompute_and_errors_are_not_kept():
    state = {"version": 1}
    cache = ViewCache(state=lambda: state["version"])
    values = iter(["a", "b", "c"])
    assert cache.get("k", lambda: next(values)) == "a"
    assert cache.get("k", lambda: next(values)) == "a"
    state["version"] = 2
    assert cache.get("k", lambda: next(values)) == "b"
    with pytest.raises(RuntimeError):
        cache.get("other", lambda: (_ for _ in ()).throw(RuntimeError("database down")))
    assert cache.get("other", lambda: next(values)) == "c"


def test_entries_are_bounded_least_recently_used_first():
    cache = ViewCache(max_entries=2, state=lambda: 0)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)  # a is used again: b is now the least recent
    cache.get("c", lambda: 3)
    assert len(cache) == 2
    assert cache.get("a", lambda: "recomputed") == 1
    assert cache.get("b", lambda: "recomputed") == "recomputed"


def test_download_route_builds_the_shown_table_on_request():
    import io

    import pandas as pd
    from fastapi.testclient import TestClient

    from app import create_app

    dense = seed("dense", 0.0, 0.8)
    pruned = seed("magnitude", 0.5, 0.4)
    client = TestClient(create_app())
    response = client.get("/export/leaderboard.csv", params=[("view", "delta"), ("families", "unstructured")])
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="pruneboard-leaderboard-delta.csv"'
    frame = pd.read_csv(io.StringIO(response.text))
    assert frame["job_id"].tolist() == [pruned] and frame["synthetic-mc"].tolist() == [pytest.approx(-0.4)]
    records = client.get("/export/leaderboard.json").json()
    assert [r["job_id"] for r in records] == [dense, pruned]
    assert client.get("/export/leaderboard.xml").status_code == 404


def test_the_compare_endpoint_serves_a_shared_link_from_the_cache(monkeypatch):
    from backend.result import SampleRecord
    from ui import compare_view
    from ui.tabs.compare import compare_page

    def run(method: str, sparsity: float, correct: list[bool]) -> int:
        config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-arith"],
                                  "pruning": {"method": method, "sparsity": sparsity}})
        job, _ = queue.submit(config)
        claimed = queue.claim_next("w")
        samples = [SampleRecord("synthetic-arith", i, f"q{i}", "a", "a", "a", ok, 3, 1, {"exact_match": float(ok)},
                                finish_reason="stop") for i, ok in enumerate(correct)]
        scores = [ScoreRecord("synthetic-arith", "exact_match", sum(correct) / len(correct), None, True, True, "k")]
        assert queue.complete(job.id, claimed.attempts, RunResult(scores, samples, {}, {}, {}))
        return job.id

    a, b = run("dense", 0.0, [True, True, False]), run("magnitude", 0.5, [True, False, False])
    built = []
    real = compare_view.build_view
    monkeypatch.setattr(compare_view, "build_view", lambda *args: built.append(args) or real(*args))
    page = compare_page(f"{a},{b}", "synthetic-arith", "only-a")
    assert page["runs"] == [a, b] and [s["doc"] for s in page["samples"]] == [1]
    assert "outcome=only-a" in page["link"] and compare_page(f"{a},{b}", "synthetic-arith", "only-a") == page
    assert len(built) == 1
