"""What MLflow knows about a grid's runs: states, stale RUNNING runs, liveness and heartbeats.

A run stays ``RUNNING`` in MLflow when the process that trained it dies (kill -9, OOM killer,
lost node).  Such a run is *stale*; the launcher marks it ``KILLED`` (with a
``failure_reason``) and runs its key again.  How staleness is decided (:func:`stale_reason`):

- every worker tags the RUNNING runs it owns with ``grid.worker`` = ``host:pid:start`` (the
  process's start time in clock ticks, so a reused pid is not mistaken for it) and refreshes
  ``grid.heartbeat`` (unix seconds) every few seconds;
- every launcher tags its parent run the same way (``grid.launcher``, ``grid.heartbeat``);
- on the same host a run is stale as soon as its worker (or, before the worker's first beat,
  its launcher) is gone; on another host when its heartbeat is older than ``stale_after``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from repro import schema
from repro.tracking import client, retrying, search_runs, set_tags, sqlite_path

T_WORKER = schema.T_GRID_WORKER
T_LAUNCHER = schema.T_GRID_LAUNCHER
T_HEARTBEAT = schema.T_GRID_HEARTBEAT
T_EXECUTOR = schema.T_GRID_EXECUTOR

#: A RUNNING run whose owner cannot be checked directly is stale after this long without a beat.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 20.0



def prepare_sqlite(uri: str) -> None:
    """Put a SQLite store in WAL mode (readers never block the writer; persists in the file)."""
    path = sqlite_path(uri)
    if path is None:
        return
    import sqlite3

    with sqlite3.connect(path, timeout=60) as con:
        con.execute("PRAGMA journal_mode=WAL")


#: Bytes kept free beside a SQLite store while a grid runs (see :class:`SpaceReserve`): closing an
#: invocation's runs takes a few small transactions, far less than this.
RESERVE_BYTES = 256 * 1024


class SpaceReserve:
    """A file of zeros beside a SQLite store, given back when the disk fills (best effort).

    On a full disk SQLite cannot write even the few rows that mark an invocation's runs KILLED,
    so they would stay RUNNING until the next invocation reaps them.  Holding a little space in
    reserve, and freeing it first when the disk fills, lets the launcher close them itself.  No-op
    for other stores, and when the space cannot be reserved (then the next invocation closes the
    runs, as before).
    """

    def __init__(self, uri: str, size: int = RESERVE_BYTES) -> None:
        db = sqlite_path(uri)  # one file per launcher: concurrent launchers share a store
        self.path = db.with_name(f"{db.name}.reserve-{socket.gethostname()}-{os.getpid()}") if db else None
        self.size = size

    def hold(self) -> "SpaceReserve":
        """Take the space (quietly nothing if it cannot be had), after dropping the reserves of
        this host's launchers that died without giving theirs back (kill -9)."""
        if self.path is not None:
            prefix = self.path.name.rsplit("-", 1)[0] + "-"
            for old in self.path.parent.glob(prefix + "*"):
                pid = old.name[len(prefix):]
                if pid.isdigit() and not _start_ticks(int(pid)):
                    old.unlink(missing_ok=True)
            try:
                with self.path.open("wb") as f:
                    f.write(bytes(self.size))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                self.release()
        return self

    def release(self) -> None:
        """Give the space back (idempotent)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# --- process identity and liveness ------------------------------------------------------------

def _start_ticks(pid: int) -> str:
    """Start time of a live process from /proc/<pid>/stat, or "" if it is gone.

    A zombie (state Z) or dead (X) process counts as gone: a worker killed together with its
    launcher stays a zombie until PID 1 reaps it, which in containers may be never.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Fields after the ')' that closes the command name: state is field 3, starttime field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def identity_alive(identity: str) -> bool | None:
    """True / False for a process on this host; None when it lives on another host (or is unparsable)."""
    try:
        host, pid_s, start = identity.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if Path("/proc").is_dir():
        now = _start_ticks(pid)
        return bool(now) and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- states -------------------------------------------------------------------------------------

@dataclass
class KeyState:
    """Everything MLflow holds for one run_key."""

    run_key: str
    runs: list[Any] = field(default_factory=list)  # mlflow.entities.Run

    @property
    def finished(self) -> Any | None:
        done = [r for r in self.runs if r.info.status == schema.FINISHED]
        return max(done, key=lambda r: r.info.start_time or 0) if done else None

    @property
    def running(self) -> list[Any]:
        return [r for r in self.runs if r.info.status == schema.RUNNING]

    @property
    def last_failure(self) -> Any | None:
        bad = [r for r in self.runs if r.info.status in (schema.FAILED, schema.KILLED)]
        return max(bad, key=lambda r: r.info.start_time or 0) if bad else None

    @property
    def status(self) -> str:
        """FINISHED, RUNNING, FAILED, KILLED or MISSING (newest state wins after FINISHED)."""
        if self.finished is not None:
            return schema.FINISHED
        if self.running:
            return schema.RUNNING
        bad = self.last_failure
        return bad.info.status if bad is not None else "MISSING"


def key_states(uri: str, keys: Iterable[str]) -> dict[str, KeyState]:
    """run_key -> :class:`KeyState` for ``keys`` (every key present, possibly with no runs)."""
    wanted = list(dict.fromkeys(keys))
    states = {k: KeyState(k) for k in wanted}
    if not wanted:
        return states
    for run in search_runs(uri, f"tags.{schema.T_RUN_KEY} != ''"):
        key = run.data.tags.get(schema.T_RUN_KEY)
        if key in states:
            states[key].runs.append(run)
    return states


def stale_reason(run: Any, parent: Any | None, *, now: float | None = None,
                 stale_after: float = STALE_AFTER_S) -> str | None:
    """Why a RUNNING run is stale (its owner is gone), or None while it may still be alive."""
    if run.info.status != schema.RUNNING:
        return None
    now = time.time() if now is None else now
    tags = run.data.tags

    def beat_age(t: Mapping[str, str]) -> float | None:
        try:
            return now - float(t[T_HEARTBEAT])
        except (KeyError, ValueError):
            return None

    worker = tags.get(T_WORKER)
    if worker:
        alive = identity_alive(worker)
        if alive is not None:
            return None if alive else f"its worker {worker} is gone"
        age = beat_age(tags)
        if age is not None and age > stale_after:
            return f"no heartbeat from its worker {worker} for {age:.0f} s"
        return None
    if parent is not None:
        if parent.info.status != schema.RUNNING:
            return f"its grid invocation (run {parent.info.run_id}) ended {parent.info.status}"
        # A run no worker has taken yet lives as long as its launcher: its process on this host,
        # else its heartbeat.  SLURM's too: a dead launcher's array task may still start later,
        # and then finds its key claimed by whoever re-ran it (store.claim).
        return launcher_gone(parent, now=now, stale_after=stale_after)
    started = (run.info.start_time or 0) / 1000.0
    if now - started > stale_after:
        return f"RUNNING for {now - started:.0f} s with no owner to check"
    return None


def parents_of(uri: str, runs: Iterable[Any]) -> dict[str, Any]:
    """parent run id -> parent Run for the given child runs (missing parents are left out)."""
    c = client(uri)
    out: dict[str, Any] = {}
    for run in runs:
        pid = run.data.tags.get(schema.T_PARENT_RUN_ID)
        if pid and pid not in out:
            try:
                out[pid] = retrying(lambda: c.get_run(pid))
            except Exception:  # noqa: BLE001 - a deleted parent is simply unknown
                pass
    return out


def mark_killed(uri: str, run_id: str, reason: str) -> None:
    """End a RUNNING run as KILLED with a ``failure_reason`` (no-op when it already ended)."""
    c = client(uri)
    run = retrying(lambda: c.get_run(run_id))
    if run.info.status != schema.RUNNING:
        return
    retrying(lambda: c.set_tag(run_id, schema.T_FAILURE_REASON, reason[:4000]))
    retrying(lambda: c.set_terminated(run_id, status=schema.KILLED))


def reap_stale(uri: str, states: Mapping[str, KeyState], *, stale_after: float = STALE_AFTER_S) -> dict[str, str]:
    """Mark stale RUNNING runs KILLED; returns {run id: reason} of those reaped."""
    running = [r for s in states.values() for r in s.running]
    if not running:
        return {}
    parents = parents_of(uri, running)
    reaped: dict[str, str] = {}
    now = time.time()
    for run in running:
        reason = stale_reason(run, parents.get(run.data.tags.get(schema.T_PARENT_RUN_ID, "")), now=now,
                              stale_after=stale_after)
        if reason:
            mark_killed(uri, run.info.run_id, f"stale RUNNING run: {reason}")
            reaped[run.info.run_id] = reason
    return reaped


def launcher_gone(parent: Any, *, now: float | None = None, stale_after: float = STALE_AFTER_S) -> str | None:
    """Why a RUNNING grid parent run's launcher is gone (its process, or its heartbeat), else None."""
    if parent.info.status != schema.RUNNING:
        return None
    now = time.time() if now is None else now
    tags = parent.data.tags
    launcher = tags.get(T_LAUNCHER)
    if launcher:  # a launcher on this host (any executor) is asked directly; elsewhere, its heartbeat
        alive = identity_alive(launcher)
        if alive is not None:
            return None if alive else f"its launcher {launcher} is gone"
    try:
        age = now - float(tags[T_HEARTBEAT])
    except (KeyError, ValueError):
        age = now - (parent.info.start_time or 0) / 1000.0
    return f"no heartbeat from its launcher for {age:.0f} s" if age > stale_after else None


def beat(uri: str, parent_run_id: str) -> None:
    """Tell the store this launcher is alive: its parent run's heartbeat tag, now (a missed beat
    is harmless: the next one comes)."""
    try:
        retrying(lambda: client(uri).set_tag(parent_run_id, T_HEARTBEAT, f"{time.time():.0f}"))
    except Exception:  # noqa: BLE001 - a store that is briefly away must not stop the grid
        pass


class Beating:
    """Beat for a launcher that blocks while it waits (SLURM's ``job.result()``): a daemon thread
    sets the parent run's heartbeat every ``every`` seconds until the ``with`` block ends, so a
    later invocation can tell a live SLURM launcher from a dead one by the heartbeat's age."""

    def __init__(self, uri: str, parent_run_id: str, every: float) -> None:
        self.uri, self.parent_run_id, self.every = uri, parent_run_id, max(every, 0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repro-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            beat(self.uri, self.parent_run_id)

    def __enter__(self) -> "Beating":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def reap_dead_parents(uri: str, grid: str, *, stale_after: float = STALE_AFTER_S) -> dict[str, str]:
    """Close the RUNNING parent runs of ``grid`` whose launcher died as KILLED; {run id: reason}."""
    flt = (f"attributes.status = 'RUNNING' and tags.`{schema.T_ROLE}` = '{schema.ROLE_GRID}' "
           f"and tags.`{schema.T_GRID}` = '{grid}'")
    reaped = {}
    now = time.time()
    for parent in search_runs(uri, flt):
        reason = launcher_gone(parent, now=now, stale_after=stale_after)
        if reason:
            mark_killed(uri, parent.info.run_id, f"grid invocation ended without closing: {reason}")
            reaped[parent.info.run_id] = reason
    return reaped


# --- claims: at most one live run per run_key across launchers and hosts --------------------------

#: How long a contended claim waits for its rival to withdraw before it reads the store again.
CLAIM_SETTLE_S = 2.0


def runs_of_key(uri: str, run_key: str) -> list[Any]:
    """Every (not deleted) run tagged with ``run_key``."""
    return search_runs(uri, f"tags.`{schema.T_RUN_KEY}` = '{run_key}'")


def live_rivals(uri: str, runs: Iterable[Any], *, exclude: str | None = None,
                stale_after: float = STALE_AFTER_S) -> list[Any]:
    """The RUNNING runs among ``runs`` (other than ``exclude``) whose owner is alive."""
    running = [r for r in runs if r.info.status == schema.RUNNING and r.info.run_id != exclude]
    if not running:
        return []
    parents = parents_of(uri, running)
    now = time.time()
    return [r for r in running
            if stale_reason(r, parents.get(r.data.tags.get(schema.T_PARENT_RUN_ID, "")), now=now,
                            stale_after=stale_after) is None]


@dataclass(frozen=True)
class Standing:
    """Where one run_key stands for a launcher deciding what to do with it.

    ``finished`` (a FINISHED run exists), ``live`` (a RUNNING run whose owner is alive: another
    invocation trains it), ``failed`` (its newest run FAILED and nothing is live) or ``gone``
    (no live run and no failure to report: killed, stale, withdrawn or never started).
    """

    kind: str
    run: Any | None = None  # the finished run, the live rival, or the newest (failed) run

    @property
    def reason(self) -> str:
        return (self.run.data.tags.get(schema.T_FAILURE_REASON, "(no reason recorded)") if self.run is not None
                else "(no reason recorded)")


def standing(uri: str, runs: Iterable[Any], *, stale_after: float = STALE_AFTER_S) -> Standing:
    """Classify a key's ``runs`` (:class:`Standing`); reads the owners' liveness from ``uri``."""
    runs = list(runs)
    done = [r for r in runs if r.info.status == schema.FINISHED]
    if done:
        return Standing("finished", max(done, key=lambda r: r.info.start_time or 0))
    live = live_rivals(uri, runs, stale_after=stale_after)
    if live:
        return Standing("live", live[0])
    newest = max(runs, key=lambda r: r.info.start_time or 0, default=None)
    if newest is not None and newest.info.status == schema.FAILED:
        return Standing("failed", newest)
    return Standing("gone", newest)


def kill_orphans(uri: str, parent_run_id: str, keys: Iterable[str], reason: str) -> list[str]:
    """Mark the RUNNING runs of ``keys`` under ``parent_run_id`` KILLED (their worker died)."""
    wanted = set(keys)
    flt = f"attributes.status = 'RUNNING' and tags.`{schema.T_PARENT_RUN_ID}` = '{parent_run_id}'"
    out = []
    for run in search_runs(uri, flt):
        if run.data.tags.get(schema.T_RUN_KEY) in wanted:
            mark_killed(uri, run.info.run_id, reason)
            out.append(run.info.run_id)
    return out


def _claim_order(run: Any) -> tuple[int, str]:
    return (run.info.start_time or 0, run.info.run_id)


def _withdraw(uri: str, run_id: str) -> None:
    """Delete a claim that lost: it never trained, so it must not show up as a run at all."""
    c = client(uri)
    retrying(lambda: c.delete_run(run_id))


def _without_twins(uri: str, runs: list[Any], mine: str) -> list[Any]:
    """``runs`` less (and with deleted) the twins of run ``mine``: runs its own create request made
    when MLflow retried it (same :data:`schema.T_CREATE_TOKEN`), e.g. one the server committed only
    after the retry had been answered -- never a rival, though it sorts like one."""
    me = next((r for r in runs if r.info.run_id == mine), None)
    token = me.data.tags.get(schema.T_CREATE_TOKEN) if me is not None else None
    if not token:
        return runs
    twins = {r.info.run_id for r in runs if r.info.run_id != mine and r.data.tags.get(schema.T_CREATE_TOKEN) == token}
    for run_id in twins:
        _withdraw(uri, run_id)
    return [r for r in runs if r.info.run_id not in twins]


def claim(uri: str, mine: Mapping[str, str], *, settle_s: float = CLAIM_SETTLE_S,
          stale_after: float = STALE_AFTER_S, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Decide which of this process's freshly created RUNNING runs it may train.

    ``mine`` maps run_key -> the run id this process has just created for it (its claim).
    Returns {run_key: reason} for the claims it lost; those runs are deleted here, each as soon
    as it is lost.  Nothing but the store is shared, and the order between claims never relies on
    clocks agreeing across hosts (liveness still reads heartbeats, :func:`stale_reason`):

    1. the claim (a RUNNING run under a live owner) is written *before* the store is read;
    2. a FINISHED run of the key, or no rival claim, settles it (lost / won);
    3. a rival that sorts first (start time, then run id) wins; this claim withdraws;
    4. when every rival sorts after this claim, it waits ``settle_s`` (at least twice its own
       reading time) for them to withdraw and reads again: any rival still there may not have
       seen this claim, so this one withdraws too (both may withdraw; the caller tries again).

    Two claims can both go on only if each read missed the other's write, and each write came
    before its own read — a cycle, so at most one live run per key trains (a claim that finds
    a rival withdraws unless that rival is seen to withdraw first).
    """
    lost: dict[str, str] = {}
    contended: list[str] = []
    started = time.monotonic()
    for key, run_id in mine.items():
        runs = runs_of_key(uri, key)
        done = [r for r in runs if r.info.status == schema.FINISHED]
        if done:
            lost[key] = f"run {done[0].info.run_id} of another invocation finished it"
        else:
            runs = _without_twins(uri, runs, run_id)
            rivals = live_rivals(uri, runs, exclude=run_id, stale_after=stale_after)
            if not rivals:
                continue
            me = next((r for r in runs if r.info.run_id == run_id), None)
            first = min(rivals, key=_claim_order)
            if me is not None and _claim_order(me) < _claim_order(first):
                contended.append(key)
                continue
            lost[key] = f"run {first.info.run_id} of another invocation claimed it first"
        _withdraw(uri, run_id)  # at once: a rival that sorts first is waiting for it to go
    if contended:
        # The rival reads and withdraws in a loop like the one above; give it at least twice as
        # long as this one took, so that a slow store does not make both sides withdraw.
        sleep(max(settle_s, 2.0 * (time.monotonic() - started)))
        for key in contended:
            runs = _without_twins(uri, runs_of_key(uri, key), mine[key])
            other = [r for r in runs if r.info.status == schema.FINISHED and r.info.run_id != mine[key]]
            other += live_rivals(uri, runs, exclude=mine[key], stale_after=stale_after)
            if other:
                lost[key] = f"run {other[0].info.run_id} of another invocation claimed it at the same time"
                _withdraw(uri, mine[key])
    return lost


def beat_runs(uri: str, parent_run_id: str | None, keys: Iterable[str], identity: str) -> int:
    """Tag the RUNNING runs of ``keys`` under ``parent_run_id`` with this worker and a fresh heartbeat."""
    wanted = set(keys)
    flt = "attributes.status = 'RUNNING'"
    if parent_run_id:
        flt += f" and tags.`{schema.T_PARENT_RUN_ID}` = '{parent_run_id}'"
    n = 0
    now = f"{time.time():.0f}"
    for run in search_runs(uri, flt):
        if run.data.tags.get(schema.T_RUN_KEY) in wanted:
            tags = {T_HEARTBEAT: now}
            if run.data.tags.get(T_WORKER) != identity:
                tags[T_WORKER] = identity
            set_tags(uri, run.info.run_id, tags)
            n += 1
    return n
