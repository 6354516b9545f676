"""One sweep worker: claim queued trials one at a time, run ``fit`` for each, record what came out."""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import lightning as L
import optuna
from optuna.trial import TrialState

from lit3d.config import FitConfig, load_config
from lit3d.evaluate import evaluate_run
from lit3d.sweeps.space import config_item, make_sampler, suggest
from lit3d.sweeps.spec import ObjectiveConfig, SweepConfig, params_of, prunes
from lit3d.sweeps.storage import Heartbeat, claim_next, db_lock, fail_stale, requeue

log = logging.getLogger(__name__)

FitFn = Callable[..., dict]
EvaluateFn = Callable[..., dict]
"""``(run_dir, overrides, options) -> metrics``, as :func:`lit3d.evaluate.evaluate_run`."""


class ObjectiveMissing(RuntimeError):
    """The run never logged the objective metric."""


class ValidationHistory(L.Callback):
    """The ``val*`` metrics of every validation (sanity checks excluded), for the objective and the user attrs."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.history.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")})


def objective_value(obj: ObjectiveConfig, metrics: dict[str, Any], history: list[dict[str, float]]) -> float:
    """The trial's value: ``metrics[obj.metric]`` (fit's result), else the best or last validation value."""
    if obj.metric in metrics:
        return float(metrics[obj.metric])
    values = [h[obj.metric] for h in history if obj.metric in h and not math.isnan(h[obj.metric])]
    if not values:
        raise ObjectiveMissing(f"objective {obj.metric} was never logged: validation runs every "
                               "trainer.check_val_every_n_epoch epochs (and needs val frames); fit returned "
                               + ", ".join(sorted(metrics)))
    if obj.reduce == "last":
        return values[-1]
    return min(values) if obj.direction == "minimize" else max(values)


def base_args(cfg: SweepConfig) -> list[str]:
    """The config items every trial starts from: the experiment, then ``base``."""
    return ([f"experiment={cfg.experiment}"] if cfg.experiment else []) + [config_item(k, v) for k, v in cfg.base.items()]


def trial_config(cfg: SweepConfig, params: dict[str, Any], run_dir: str | Path = "") -> FitConfig:
    items = [config_item(k, v) for k, v in params.items()] + ([f"run_dir={run_dir}"] if run_dir else [])
    return load_config(base_args(cfg) + items)


class Objective:
    """Trial -> parameters -> config -> ``fit`` in ``<output_dir>/trial-NNNN`` (-> ``evaluate`` of the run, with
    ``cfg.evaluate.split``) -> objective value.

    Records as user attributes: run_dir, worker (host:pid), fail_reason, and the final metrics (fit's result,
    the last validation's ``val*`` metrics and the evaluation's).
    """

    def __init__(self, cfg: SweepConfig, fit_fn: FitFn, evaluate_fn: EvaluateFn | None = None):
        self.cfg, self.fit_fn, self.space = cfg, fit_fn, params_of(cfg)
        self.evaluate_fn = evaluate_fn or evaluate_run

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.space)
        run_dir = Path(self.cfg.output_dir).resolve() / f"trial-{trial.number:04d}"
        if run_dir.exists():  # left by a deleted study with the same output_dir: keep it, but not in our way
            stale = run_dir.with_name(f"{run_dir.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
            log.warning("moving the existing %s aside to %s", run_dir, stale)
            run_dir.rename(stale)
        for key, value in {"run_dir": str(run_dir), "worker": f"{socket.gethostname()}:{os.getpid()}",
                           "fail_reason": ""}.items():  # fail_reason: reset what a retried trial inherited
            trial.set_user_attr(key, value)
        fit_cfg = trial_config(self.cfg, params, run_dir)
        history = ValidationHistory()
        callbacks: list[L.Callback] = [history]
        if prunes(self.cfg):
            from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=self.cfg.objective.metric))
        try:
            metrics = self.fit_fn(fit_cfg, callbacks=callbacks)
        except optuna.TrialPruned:
            self._record(trial, history.history[-1] if history.history else {})
            raise
        if self.cfg.evaluate.split:
            self._record(trial, metrics)  # kept should the evaluation fail
            metrics = {**metrics, **self.evaluate_fn(run_dir, [], self.cfg.evaluate)}
        self._record(trial, {**(history.history[-1] if history.history else {}), **metrics})
        return objective_value(self.cfg.objective, metrics, history.history)

    @staticmethod
    def _record(trial: optuna.Trial, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            trial.set_user_attr(key, value)


def run_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int, cfg: SweepConfig,
              objective: Callable[[optuna.Trial], float]) -> TrialState:
    """Run one claimed trial with heartbeats and tell the study how it ended.

    Pruned -> PRUNED. An exception -> FAIL with ``fail_reason`` (not retried: it would fail again). An interrupt
    (Ctrl-C, or Lightning's SystemExit after one) -> FAIL, a copy is queued, and the interrupt goes on.
    """
    number = storage.get_trial(trial_id).number
    study.sampler = make_sampler(cfg.sampler, number)
    trial = optuna.Trial(study, trial_id)
    log.info("trial %d: starting", number)
    value, state = None, TrialState.COMPLETE
    with Heartbeat(storage, trial_id, cfg.storage.heartbeat_interval):
        try:
            value = objective(trial)
        except optuna.TrialPruned as e:
            state = TrialState.PRUNED
            log.info("trial %d pruned: %s", number, e)
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            requeue(study, storage, trial_id)
            log.warning("trial %d interrupted: marked failed and queued again; re-run the command to resume", number)
            raise
        except Exception as e:
            state = TrialState.FAIL
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            log.exception("trial %d failed (skipped, not retried)", number)
    if state == TrialState.COMPLETE:  # a NaN value makes Optuna record FAIL
        frozen = study.tell(trial, value, skip_if_finished=True)
    else:
        frozen = study.tell(trial, state=state, skip_if_finished=True)
    if frozen.state == TrialState.COMPLETE:
        log.info("trial %d: %s = %.6g %s", number, cfg.objective.metric, frozen.value, frozen.params)
    elif state == TrialState.COMPLETE:
        log.warning("trial %d ended %s (objective %s)", number, frozen.state.name, value)
    return frozen.state


def run_worker(study: optuna.Study, storage: optuna.storages.RDBStorage, url: str, cfg: SweepConfig,
               objective: Callable[[optuna.Trial], float]) -> int:
    """Claim and run queued trials until none is left (and, with ``cfg.wait``, none runs elsewhere); returns
    how many this worker ran."""
    ran, waiting_for = 0, []
    while True:
        fail_stale(study)  # also queues the retries of dead workers' trials
        with db_lock(url):
            trial_id = claim_next(study, storage)
        if trial_id is not None:
            run_trial(study, storage, trial_id, cfg, objective)
            ran, waiting_for = ran + 1, []
            continue
        running = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if not running or not cfg.wait:
            return ran
        if running != waiting_for:
            log.info("nothing queued; waiting for trials %s of other workers (retried here if they die)", running)
            waiting_for = running
        time.sleep(min(5.0, cfg.storage.heartbeat_interval))
