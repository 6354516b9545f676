"""Sweeps: shipped files resolve, the queue runs each trial once, resumes, retries dead workers, PostgreSQL."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import lightning as L
import optuna
import pytest
from optuna.trial import TrialState

from lit3d.config import ConfigError, load_config
from lit3d.report import main as report_main
from lit3d.sweep import check_configs, main, queue_points, sweep
from lit3d.sweeps.space import grid_points, point_key
from lit3d.sweeps.spec import load_sweep, params_of
from lit3d.sweeps.storage import claim_next, db_lock, make_storage, storage_url, top_up
from lit3d.sweeps.worker import trial_config

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"
SMOKE = [str(SWEEPS / "vit_grid.yaml"), "variant=smoke"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def smoke_cfg(tmp: Path, *args: str):
    return load_sweep(SMOKE[0], [*SMOKE[1:], f"output_dir={tmp / 'sweep'}", f"cache_dir={tmp / 'cache'}", *args])


class FakeFit:
    """Stands in for lit3d.fit.fit: records calls, returns a value from the config, optionally misbehaves."""

    def __init__(self, raise_on: dict[int, BaseException] | None = None):
        self.calls: list[str] = []
        self.raise_on = raise_on or {}

    def __call__(self, cfg, callbacks=None) -> dict[str, float]:
        self.calls.append(cfg.run_dir)
        if len(self.calls) in self.raise_on:
            raise self.raise_on[len(self.calls)]
        return {"val/l2_mean": cfg.student.patch_size + cfg.student.latent_dim / 100, "test/l2_mean": 1.0}


class FakeEvaluate:
    """Stands in for lit3d.evaluate.evaluate_run: records its calls, scores a run by its trial number."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[Path, list, object]] = []
        self.fail = fail

    def __call__(self, run_dir, overrides, options) -> dict[str, float]:
        self.calls.append((Path(run_dir), overrides, options))
        if self.fail:
            raise ValueError("label cache has no 'val' frames")
        return {"loc/acc_5cm5deg": int(Path(run_dir).name[-4:]) / 10, "eval/split": options.split}


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


# --- files and schema ------------------------------------------------------------------------------------------
def test_every_experiment_file_resolves():
    names = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert {"smoke", "vanilla_cnn", "mobilenetv3_frozen", "mobilenetv3_unfrozen", "vit_best", "sevenscenes",
            "twelvescenes"} <= set(names)
    for name in names:
        assert load_config([f"experiment={name}"]).experiment == name
    best = load_config(["experiment=vit_best"])
    assert (best.trainer.max_epochs, best.student.latent_dim, best.student.depth, best.student.num_heads) == (200, 256, 6, 4)


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
@pytest.mark.parametrize("variant", ["", "smoke"])
def test_shipped_sweeps_resolve(name, variant):
    cfg = load_sweep(SWEEPS / f"{name}.yaml", [f"variant={variant}"] if variant else [])
    base = check_configs(cfg)  # every grid point's config resolves
    if variant == "smoke":
        assert base.data.format == "synthetic" and base.data.num_frames <= 16 and base.trainer.max_epochs <= 2
        assert not getattr(base.student, "pretrained", False)
        assert cfg.name == f"{name}-smoke"


def test_trial_configs_keep_every_value_as_written(tmp_path):
    # an empty string is not null, a name with a comma is one list item, 1e-5 is a float: as when loaded directly
    spec = tmp_path / "s.yaml"
    spec.write_text('experiment: smoke\nbase:\n  data.intrinsics: ""\n  "data.test_frames": ["a,b", c]\n'
                    'sampler: {name: grid}\nspace:\n  optim.weight_decay: [1.0e-5]\n')
    cfg = load_sweep(spec)
    got = trial_config(cfg, {"optim.weight_decay": 1.0e-5})
    want = load_config(["experiment=smoke", "data.intrinsics=''", "data.test_frames=['a,b',c]",
                        "optim.weight_decay=0.00001"])
    assert (got.data.intrinsics, got.data.test_frames, got.optim.weight_decay) == ("", ["a,b", "c"], 1.0e-5)
    assert got == want
    # the same keys on the command line: as load_config reads them there
    args = ["data.intrinsics=", "data.test_frames=['a,b',c]", "data.val_block=[frame-000100,frame-000199]",
            "data.stride=2"]
    got = trial_config(load_sweep(spec, args), {"optim.weight_decay": 1.0e-5})
    assert got == load_config(["experiment=smoke", *args, "optim.weight_decay=0.00001"])
    assert got.data.val_block == ["frame-000100", "frame-000199"] and got.data.stride == 2


def test_paper_grid():
    cfg = load_sweep(SWEEPS / "vit_grid.yaml")
    points = queue_points(cfg)
    assert len(points) == 54 and len({point_key(p) for p in points}) == 54
    assert {p["student.patch_size"] for p in points} == {16, 32, 64}
    assert load_sweep(SWEEPS / "vit_tpe.yaml").space["optim.lr"]["log"]


def test_overrides_go_to_sweep_or_base(tmp_path):
    cfg = smoke_cfg(tmp_path, "n_trials=2", "trainer.max_epochs=3", "storage.retries=0", "sampler.seed=5")
    assert (cfg.n_trials, cfg.storage.retries, cfg.sampler.seed) == (2, 0, 5)
    assert cfg.base["trainer.max_epochs"] == 3 and len(queue_points(cfg)) == 2
    assert check_configs(cfg).trainer.max_epochs == 3


@pytest.mark.parametrize("args, message", [
    (["sampler.nme=tpe"], "valid keys of sampler"),
    (["bogus=1"], "unknown config key 'bogus'"),  # not a sweep key: a base config key, checked by load_config
    (["variant=nope"], "no variant 'nope'"),
    (["space.student.depth.type=bogus"], "type 'bogus'"),
    (["sampler.name=tpe", "n_trials=0"], "n_trials must be > 0"),
    (["objective.metric=loc/acc_5cm5deg"], "comes from lit3d evaluate, which this sweep does not run"),
    (["evaluate.split=tst"], "evaluate.split='tst' is not one of train, val, test"),
    (["evaluate.split=val", "evaluate.tta_reduc=mean"], "unknown sweep key 'evaluate.tta_reduc'; valid keys of "
                                                       "evaluate: tta, "),
    (["evaluate.split=val", "evaluate.tta_reduce=mode"], "invalid value for 'tta_reduce': 'mode'"),
])
def test_bad_sweeps_are_config_errors(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        check_configs(smoke_cfg(tmp_path, *args))


def test_grid_points_and_space_types():
    space = params_of(load_sweep(SWEEPS / "vit_tpe.yaml", ["variant=smoke", "sampler.name=grid",
                                                           "space.optim.lr.type=categorical",
                                                           "space.optim.lr.choices=[0.001]"]))
    points = grid_points(space)
    assert len(points) == 2 * 2 * 1 * 2 and points[0] == {"student.patch_size": 8, "student.depth": 1,
                                                          "student.num_heads": 2, "student.latent_dim": 16,
                                                          "optim.lr": 0.001}


# --- queue, resume, failures (fake fit: milliseconds per trial) -------------------------------------------------
def test_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path):
    cfg = smoke_cfg(tmp_path)
    first = FakeFit(raise_on={2: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        sweep(cfg, first)
    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg))
    assert states(study) == ["COMPLETE", "FAIL", "WAITING", "WAITING", "WAITING"]  # the last: trial 1 again
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"

    second = FakeFit()
    study = sweep(cfg, second)
    assert len(second.calls) == 3 and first.calls[0] not in second.calls
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(point_key(t.params) for t in done) == sorted(point_key(p) for p in queue_points(cfg))
    assert study.trials[4].system_attrs["retry_history"] == [1]
    assert all(t.user_attrs["run_dir"].endswith(f"trial-{t.number:04d}") for t in done)
    assert study.best_trial.params["student.patch_size"] == 8

    third = FakeFit()
    sweep(cfg, third)
    assert third.calls == [] and len(study.get_trials()) == 5


def test_failing_trial_is_recorded_and_skipped(tmp_path):
    cfg = smoke_cfg(tmp_path)
    fit = FakeFit(raise_on={1: ValueError("boom")})
    study = sweep(cfg, fit)
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["fail_reason"] == "ValueError: boom"
    rerun = FakeFit()
    sweep(cfg, rerun)
    assert rerun.calls == []  # a failed trial is skipped, not retried: it would fail again


def test_trials_are_evaluated_and_ranked_by_localization(tmp_path):
    cfg = smoke_cfg(tmp_path, "evaluate.split=val", "evaluate.tta=false", "objective.metric=loc/acc_5cm5deg",
                    "objective.direction=maximize")
    fit, evaluate = FakeFit(), FakeEvaluate()
    study = sweep(cfg, fit, evaluate)
    assert [Path(run).name for run, _, _ in evaluate.calls] == [Path(run).name for run in fit.calls]
    assert all(o.split == "val" and not o.tta and not o.exports for _, _, o in evaluate.calls)
    assert [t.value for t in study.trials] == [0.0, 0.1, 0.2, 0.3]  # the evaluation's value, not val/l2_mean
    assert study.best_trial.number == 3
    assert all(t.user_attrs["eval/split"] == "val" and "test/l2_mean" in t.user_attrs for t in study.trials)
    with pytest.raises(ConfigError, match="exists with another objective"):  # ranked by another evaluation now
        sweep(smoke_cfg(tmp_path, "evaluate.split=val", "objective.metric=loc/acc_5cm5deg",
                        "objective.direction=maximize"), FakeFit(), FakeEvaluate())
    # a worker on another machine (its device, no figures) resumes it
    sweep(smoke_cfg(tmp_path, "evaluate.split=val", "evaluate.tta=false", "objective.metric=loc/acc_5cm5deg",
                    "objective.direction=maximize", "evaluate.device=cpu", "evaluate.figure_frames=0"),
          FakeFit(), FakeEvaluate())


def test_an_evaluation_records_beside_an_unchanged_objective_and_its_failure_fails_the_trial(tmp_path):
    study = sweep(smoke_cfg(tmp_path, "evaluate.split=test", "n_trials=1"), FakeFit(), FakeEvaluate())
    assert study.trials[0].value == 8.16 and study.trials[0].user_attrs["loc/acc_5cm5deg"] == 0.0  # val/l2_mean
    plain = FakeEvaluate()
    sweep(smoke_cfg(tmp_path / "plain", "n_trials=1"), FakeFit(), plain)
    assert plain.calls == []  # evaluate.split='' (the default): no evaluation
    failing = sweep(smoke_cfg(tmp_path / "failing", "evaluate.split=val", "n_trials=1"), FakeFit(),
                    FakeEvaluate(fail=True))
    trial = failing.trials[0]
    assert trial.state == TrialState.FAIL and "no 'val' frames" in trial.user_attrs["fail_reason"]
    assert trial.user_attrs["test/l2_mean"] == 1.0  # what fit measured is kept


def test_tpe_budget_counts_over_reruns(tmp_path):
    cfg = load_sweep(SWEEPS / "vit_tpe.yaml", ["variant=smoke", f"output_dir={tmp_path}", "n_trials=2"])
    fit = FakeFit()
    study = sweep(cfg, fit)
    assert states(study) == ["COMPLETE", "COMPLETE"] and study.trials[0].params != study.trials[1].params
    cfg.n_trials = 3
    sweep(cfg, fit)
    assert len(fit.calls) == 3 and states(study) == ["COMPLETE"] * 3


def test_changed_search_space_is_refused(tmp_path):
    sweep(smoke_cfg(tmp_path), FakeFit())
    with pytest.raises(ConfigError, match="exists with another space"):
        sweep(smoke_cfg(tmp_path, "space.student.depth=[1,2]"), FakeFit())


@pytest.mark.parametrize("retries, expected_calls", [(1, 3), (0, 2)])
def test_trial_of_a_dead_worker_is_retried_or_skipped(tmp_path, retries, expected_calls):
    cfg = smoke_cfg(tmp_path, "storage.heartbeat_interval=1", "storage.grace_period=1", f"storage.retries={retries}")
    sweep(smoke_cfg(tmp_path, "n_trials=1"), FakeFit())  # creates the study; trial 0 done
    # a worker that claimed trial 1, beat once and died
    url = storage_url(cfg)
    storage = make_storage(url, cfg.storage)
    with db_lock(url):
        study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True)
        top_up(study, cfg, queue_points(cfg))
        trial_id = claim_next(study, storage)
    storage.record_heartbeat(trial_id)
    fit = FakeFit()
    t0 = time.monotonic()
    study = sweep(cfg, fit)  # runs trials 2, 3, then waits for trial 1 until its heartbeat is stale
    assert time.monotonic() - t0 < 60
    assert states(study)[1] == "FAIL"
    assert len(fit.calls) == expected_calls
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == (4 if retries else 3)


# --- real training ----------------------------------------------------------------------------------------------
class InterruptSecondRun:
    """lit3d.fit.fit, but Ctrl-C during the second run's training (Lightning turns it into SystemExit)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cfg, callbacks=None):
        from lit3d.fit import fit

        self.calls += 1
        if self.calls == 2:
            callbacks = [*(callbacks or []), _CtrlC()]
        return fit(cfg, callbacks=callbacks)


class _CtrlC(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_smoke_vit_grid_runs_interrupted_and_resumed(tmp_path):
    args = [*SMOKE, f"output_dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}"]
    cfg = load_sweep(args[0], args[1:])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            sweep(cfg, InterruptSecondRun())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    first = sorted(p.name for p in (tmp_path / "sweep").glob("trial-*"))
    assert first == ["trial-0000", "trial-0001"]
    mtime = (tmp_path / "sweep" / "trial-0000" / "metrics.json").stat().st_mtime

    assert main(args) == 0  # the command line resumes
    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg))
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert (tmp_path / "sweep" / "trial-0000" / "metrics.json").stat().st_mtime == mtime
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run = Path(t.user_attrs["run_dir"])
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
        assert t.value == pytest.approx(t.user_attrs["val/l2_mean"])  # one epoch: best = last validation
        assert "test/l2_mean" in t.user_attrs and "model/params" in t.user_attrs
    assert main(args) == 0 and len(study.get_trials()) == 5  # finished: nothing left to run


@pytest.mark.slow
def test_seed_sweep_records_each_trials_localization_for_the_report(tmp_path):
    args = [str(SWEEPS / "seeds.yaml"), "variant=smoke", f"output_dir={tmp_path / 'sweep'}",
            f"cache_dir={tmp_path / 'cache'}", "evaluate.tta=false"]
    assert main(args) == 0
    cfg = load_sweep(args[0], args[1:])
    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg))
    assert states(study) == ["COMPLETE", "COMPLETE"]
    for t in study.trials:
        saved = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert saved["eval/split"] == "test" and saved["eval/tta_views"] == 1.0
        assert saved["eval/n_frames"] == 4.0  # the smoke scene's test path
        assert t.user_attrs["loc/acc_5cm5deg"] == saved["loc/acc_5cm5deg"]
        assert t.user_attrs["eval/student_vs_gt/l2_mean"] == saved["eval/student_vs_gt/l2_mean"]
    assert report_main([str(tmp_path / "sweep"), "metrics=[loc/acc_5cm5deg]", f"out={tmp_path / 'report'}"]) == 0
    with open(tmp_path / "report" / "report.csv", newline="") as f:
        (row,) = csv.DictReader(f)  # one scene, its two seeds
    assert row["n_runs"] == "2" and row["loc/acc_5cm5deg n"] == "2"
    want = [t.user_attrs["loc/acc_5cm5deg"] for t in study.trials]
    assert float(row["loc/acc_5cm5deg"]) == pytest.approx(sum(want) / 2)


@pytest.mark.slow
def test_postgres_two_workers_share_one_study(tmp_path):
    url = os.environ.get("LIT3D_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("LIT3D_TEST_POSTGRES_URL is not set (.ci/run starts a throwaway PostgreSQL server and sets it)")
    from lit3d.cache import build_labels

    name = f"test-{uuid.uuid4().hex[:8]}"
    common = [*SMOKE, f"storage.url={url}", f"name={name}", f"cache_dir={tmp_path / 'cache'}"]
    cfg = load_sweep(common[0], common[1:])
    build_labels(check_configs(cfg))  # labels first: the workers should share them, not race to build them
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "lit3d.sweep", *common, f"output_dir={tmp_path / f'w{i}'}"],
                                cwd=tmp_path, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    try:
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.kill()
        for f in logs:
            f.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))
    study = optuna.load_study(study_name=name, storage=url)
    try:
        trials = study.get_trials()
        assert states(study) == ["COMPLETE"] * 4
        assert sorted(point_key(t.params) for t in trials) == sorted(point_key(p) for p in queue_points(cfg))
        dirs = [p.name for i in range(2) for p in (tmp_path / f"w{i}").glob("trial-*")]
        assert sorted(dirs) == [f"trial-{n:04d}" for n in range(4)]  # every trial ran once, in one worker
    finally:
        optuna.delete_study(study_name=name, storage=url)
