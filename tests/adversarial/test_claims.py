"""The run_key claim (repro.grid.store.claim) against a real SQLite store, every interleaving.

Two "launchers" are two claims on one key written by this process; their owner identity is this
(live) process, so each sees the other as a live rival.  The orders below are the cases of the
claim's proof: the other claim written before / after this one's read, sorting first / last.
"""

from __future__ import annotations

import time

from repro import schema
from repro import tracking
from repro.grid import store
from repro.tracking import experiment_id, init_store


def _claim_run(uri: str, key: str, start_ms: int, token: str | None = None) -> str:
    c = tracking.client(uri)
    tags = {schema.T_RUN_KEY: key, store.T_WORKER: store.process_identity(),
            store.T_HEARTBEAT: f"{time.time():.0f}"}
    if token is not None:
        tags[schema.T_CREATE_TOKEN] = token
    return c.create_run(experiment_id(uri), start_time=start_ms, tags=tags).info.run_id


def _alive(uri: str, run_id: str) -> bool:
    return tracking.client(uri).get_run(run_id).info.lifecycle_stage == "active"


def test_claim_orders(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    now = int(time.time() * 1000)

    # Uncontended: wins, nothing deleted.
    a = _claim_run(uri, "k-alone", now)
    assert store.claim(uri, {"k-alone": a}, settle_s=0) == {}
    assert _alive(uri, a)

    # A rival that sorts first: this claim withdraws at once (no wait) and is deleted.
    first = _claim_run(uri, "k-first", now - 1000)
    late = _claim_run(uri, "k-first", now)
    waits: list[float] = []
    lost = store.claim(uri, {"k-first": late}, settle_s=5, sleep=waits.append)
    assert "claimed it first" in lost["k-first"] and waits == []
    assert not _alive(uri, late) and _alive(uri, first)

    # A rival that sorts last and withdraws while this claim waits: this claim wins.
    mine = _claim_run(uri, "k-withdraws", now - 1000)
    rival = _claim_run(uri, "k-withdraws", now)
    lost = store.claim(uri, {"k-withdraws": mine}, settle_s=0,
                       sleep=lambda _s: tracking.client(uri).delete_run(rival))
    assert lost == {} and _alive(uri, mine)

    # A rival that sorts last but stays (it may not have seen this claim): this claim withdraws,
    # even though clocks say it came first — clock order alone is never trusted.
    mine = _claim_run(uri, "k-stays", now - 1000)
    rival = _claim_run(uri, "k-stays", now)
    lost = store.claim(uri, {"k-stays": mine}, settle_s=0, sleep=lambda _s: None)
    assert "at the same time" in lost["k-stays"]
    assert not _alive(uri, mine) and _alive(uri, rival)

    # A finished run of the key: lost, whatever the order.
    done = _claim_run(uri, "k-done", now - 5000)
    tracking.client(uri).set_terminated(done, status=schema.FINISHED)
    mine = _claim_run(uri, "k-done", now)
    assert "finished it" in store.claim(uri, {"k-done": mine}, settle_s=0)["k-done"]

    # A rival whose owner is dead (a stale claim) does not block.
    dead = tracking.client(uri).create_run(experiment_id(uri), start_time=now - 9000, tags={
        schema.T_RUN_KEY: "k-stale", store.T_WORKER: f"{store.process_identity().rsplit(':', 2)[0]}:999999999:1"})
    mine = _claim_run(uri, "k-stale", now)
    assert store.claim(uri, {"k-stale": mine}, settle_s=0) == {}
    assert _alive(uri, dead.info.run_id)  # left to the launcher's reaper, not deleted by a claim

    # A twin of this claim (its own create request, retried by MLflow, committed twice) sorts first
    # but is no rival: it is deleted and this claim wins, with no wait.
    twin = _claim_run(uri, "k-twin", now - 1000, token="t1")
    mine = _claim_run(uri, "k-twin", now, token="t1")
    waits.clear()
    assert store.claim(uri, {"k-twin": mine}, settle_s=5, sleep=waits.append) == {} and waits == []
    assert _alive(uri, mine) and not _alive(uri, twin)


def test_two_claimants_interleaved_on_two_keys_each_win_one(tmp_path):
    """A sorts first on k1, B on k2 (as two launchers' ensembles interleave): both claim at once;
    each loser withdraws at once, so each winner sees its rival gone and trains — nobody waits
    in vain and no key is left untrained."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    now = int(time.time() * 1000)
    a = {"k1": _claim_run(uri, "k1", now), "k2": _claim_run(uri, "k2", now + 10)}
    b = {"k1": _claim_run(uri, "k1", now + 10), "k2": _claim_run(uri, "k2", now)}
    lost: dict[str, dict[str, str]] = {}
    barrier = threading.Barrier(2)

    def run(name: str, mine: dict[str, str]) -> None:
        barrier.wait()
        lost[name] = store.claim(uri, mine, settle_s=1.0)

    threads = [threading.Thread(target=run, args=("a", a)), threading.Thread(target=run, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(lost["a"]) == {"k2"} and set(lost["b"]) == {"k1"}, lost
    assert _alive(uri, a["k1"]) and _alive(uri, b["k2"])
    assert not _alive(uri, a["k2"]) and not _alive(uri, b["k1"])
