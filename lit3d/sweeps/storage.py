"""Where a study lives and how workers share it: Optuna RDB storage with heartbeats, a lock, a trial queue.

Every trial to run is queued up front as a WAITING trial (a grid point with fixed parameters, or an empty one
that the sampler fills in when it starts). Workers claim queued trials under a database-wide lock, so with any
number of workers each queued trial runs once, and ``n_trials`` counts over all of them. A claimed trial
records heartbeats; one whose worker died goes FAIL after the grace period and Optuna's retry callback queues a
copy with the same parameters (up to ``storage.retries`` times, then it stays FAIL: skipped, and reported).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState

from lit3d.config import ConfigError
from lit3d.sweeps.space import point_key
from lit3d.sweeps.spec import StorageConfig, SweepConfig, is_evaluation_metric

log = logging.getLogger(__name__)

# optuna >= 4.9 renamed the callback (and its RDBStorage argument); older versions only have the first name
RetryCallback = (getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
                 or optuna.storages.RetryFailedTrialCallback)
_RETRY_ARG = ("heartbeat_stale_trial_callback"
              if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
              else "failed_trial_callback")
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"lit3d.sweep").digest()[:8], "big", signed=True)

SPEC_ATTR, BASE_ATTR = "lit3d:sweep", "lit3d:base"
MACHINE_KEYS = ("run_dir", "cache_dir", "data.root", "trainer.accelerator", "trainer.devices", "trainer.num_nodes",
                "trainer.strategy", "trainer.enable_progress_bar", "loader.num_workers", "loader.pin_memory")
"""Base config keys that may differ between workers of one study (paths and hardware)."""


def storage_url(cfg: SweepConfig) -> str:
    """``storage.url``, or the SQLite file ``<output_dir>/study.db``.

    A bare ``postgresql://`` gets the psycopg2 driver where psycopg (3), SQLAlchemy 2.1's default, is missing.
    """
    if not cfg.storage.url:
        return f"sqlite:///{(Path(cfg.output_dir) / 'study.db').resolve()}"
    u = sqlalchemy.engine.make_url(cfg.storage.url)
    if u.drivername == "postgresql" and not importlib.util.find_spec("psycopg") and importlib.util.find_spec("psycopg2"):
        return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return cfg.storage.url


def redact(url: str) -> str:
    """The URL without its password (for logs and files)."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (heartbeats and the retry callback have carried it for years)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def make_storage(url: str, cfg: StorageConfig) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats and the retry policy of ``cfg``."""
    sqlite = url.startswith("sqlite")
    # SQLite: wait for another worker's write instead of failing at once; servers: survive dropped connections
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    with _quiet():
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period or None, **{_RETRY_ARG: RetryCallback(max_retry=cfg.retries)})


@contextmanager
def db_lock(url: str) -> Iterator[None]:
    """Serialise schema creation, queue top-ups and trial claims among all lit3d workers of one database.

    SQLite: a lock file next to the database. PostgreSQL / MySQL: a session-level advisory lock, released by the
    server if the worker dies. Other databases: no lock (claims still rely on Optuna's row update).
    """
    u = sqlalchemy.engine.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        with FileLock(f"{u.database}.lock"):
            yield
        return
    if backend not in ("postgresql", "mysql"):
        log.warning("no lock for %s databases: parallel workers may race when the study is set up", backend)
        yield
        return
    lock, unlock = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if backend == "postgresql"
                    else ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
    key = _LOCK_KEY if backend == "postgresql" else "lit3d.sweep"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(lock), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(unlock), {"k": key})
    finally:
        engine.dispose()


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that a later trial retries (so they no longer hold a place in the queue)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def top_up(study: optuna.Study, cfg: SweepConfig, points: list[dict[str, Any]] | None) -> int:
    """Queue the trials that the study still lacks; returns how many were added.

    ``points``: the grid (each point once, in order), or None: ``n_trials`` trials whose parameters the sampler
    draws when they start. Re-running with a larger ``n_trials`` adds the difference.
    """
    trials = study.get_trials(deepcopy=False)
    old = retried(trials)
    live = [t for t in trials if t.number not in old]
    if points is not None:
        have = {point_key(t.system_attrs.get("fixed_params") or t.params) for t in live}
        todo = [p for p in points if point_key(p) not in have]
    else:
        todo = [{}] * max(cfg.n_trials - len(live), 0)
    for params in todo:
        study.enqueue_trial(params)
    return len(todo)


NOT_RANKING_EVALUATION_KEYS = ("device", "exports", "export_atol", "figure_frames")
"""``evaluate.*`` keys that leave the objective's value unchanged: workers may differ in them."""


def check_spec(study: optuna.Study, cfg: SweepConfig, base: dict[str, Any]) -> None:
    """Record what the study searches on first use; later, refuse a different search, warn on other configs."""
    spec = {"space": cfg.space, "objective": {"metric": cfg.objective.metric, "direction": cfg.objective.direction,
                                              "reduce": cfg.objective.reduce}, "sampler": cfg.sampler.name}
    if is_evaluation_metric(cfg.objective.metric):  # then how trials are evaluated is part of what they are ranked by
        spec["objective"]["evaluate"] = {k: v for k, v in dataclasses.asdict(cfg.evaluate).items()
                                         if k not in NOT_RANKING_EVALUATION_KEYS}
    attrs = study.user_attrs
    if SPEC_ATTR not in attrs:
        study.set_user_attr(SPEC_ATTR, spec)
        study.set_user_attr(BASE_ATTR, base)
        return
    if attrs[SPEC_ATTR] != spec:
        diff = sorted(k for k in spec if attrs[SPEC_ATTR].get(k) != spec[k])
        raise ConfigError(f"study {cfg.name!r} exists with another {', '.join(diff)}; resume it with the same sweep, "
                          f"or start a new study with name=NEW_NAME")
    old = attrs.get(BASE_ATTR, {})
    diff = sorted(k for k in set(old) | set(base) if old.get(k) != base.get(k) and k not in MACHINE_KEYS)
    if diff:
        log.warning("study %s was started with other values of %s; new trials use this worker's values",
                    cfg.name, ", ".join(diff))


def claim_next(study: optuna.Study, storage: optuna.storages.RDBStorage) -> int | None:
    """Atomically move the oldest queued trial to RUNNING and return its id; None if nothing is queued.

    Call under :func:`db_lock`. Unlike ``Study.ask``, it never creates a trial, so the queue is the budget.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                # beat at once: a trial without any heartbeat would never be found stale if this worker died
                storage.record_heartbeat(trial_id)
                return trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_stale(study: optuna.Study) -> None:
    """Mark trials of dead workers FAIL (their retries are queued by the storage's callback), and say so."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    for t in trials:
        if t.number in running and t.state == TrialState.FAIL and not t.user_attrs.get("fail_reason"):
            log.warning("trial %d: no heartbeat for the grace period (worker %s died?): failed, %s", t.number,
                        t.user_attrs.get("worker", "?"), "queued again" if t.number in again else "retries used up")


def requeue(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Queue a copy of a failed trial with the same parameters (used for interrupted trials: not their fault)."""
    with _quiet():
        RetryCallback(max_retry=None)(study, storage.get_trial(trial_id))


class Heartbeat:
    """Records the trial's heartbeat now and every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a missed beat is survivable; the grace period covers a few
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, e)

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
