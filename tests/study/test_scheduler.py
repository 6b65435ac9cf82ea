"""Runs side by side with a fake launcher: one run per slot, dependencies first, a failure stops
only its dependents, and a rerun finishes what is left."""

import pytest
from conftest import REPO

from ham_synth import config_lib
from ham_synth.study import markers, runner, scheduler
from ham_synth.study import plan as plan_lib


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", str(tmp_path / "cache"))


class FakeLauncher:
    """Each run takes `polls` polls and exits 0, or 1 for the runs in `fail`; records which runs
    were running together and in which order they finished."""

    def __init__(self, fail=(), polls=2):
        self.fail, self.polls = set(fail), polls
        self.running, self.finished, self.most, self.slots = set(), [], 0, {}
        self.terminated = []

    def __call__(self, run, slot):
        assert slot not in self.slots.values(), "one run per slot"
        self.running.add(run.name)
        self.slots[run.name] = slot
        self.most = max(self.most, len(self.running))
        launcher, left = self, [self.polls]

        class Handle:
            def terminate(self):
                launcher.terminated.append(run.name)

            def wait(self, timeout=None):
                return 0

            def poll(self):
                left[0] -= 1
                if left[0]:
                    return None
                launcher.running.discard(run.name)
                del launcher.slots[run.name]
                launcher.finished.append(run.name)
                return 1 if run.name in launcher.fail else 0

        return Handle()


def study(parallel_runs=3):
    return config_lib.with_values(
        config_lib.load_config("configs/study.py:smoke"), {"study.parallel_runs": parallel_runs}
    )


def test_runs_side_by_side_after_their_dependencies(tmp_path):
    launcher = FakeLauncher()
    reports = []
    made = runner.run_study(
        study(), tmp_path, launcher=launcher, poll_seconds=0,
        executor=lambda run, *_: reports.append(run.name),
    )  # fmt: skip
    plan = plan_lib.make_plan(study(), tmp_path)
    assert launcher.most == 3
    assert reports == ["report"], "the report is made in this process, last"
    assert sorted(r.name for r in made) == sorted(r.name for r in plan)
    order = launcher.finished
    for run in plan[:-1]:
        for dep in run.deps:
            assert order.index(dep) < order.index(run.name), (dep, run.name)
    assert all(runner.status(tmp_path, r) == runner.DONE for r in plan)


def test_a_failure_stops_its_dependents_only_and_a_rerun_finishes(tmp_path):
    launcher = FakeLauncher(fail={"generators/gan"})
    with pytest.raises(runner.RunFailed, match=r"generators/gan \(exit 1; log .*generators/gan"):
        runner.run_study(study(), tmp_path, launcher=launcher, poll_seconds=0,
                         executor=lambda *_: None)  # fmt: skip
    plan = plan_lib.make_plan(study(), tmp_path)
    runs = {r.name: r for r in plan}
    states = {r.name: runner.status(tmp_path, r) for r in plan}
    finished = markers.finished(tmp_path)  # What reports read: finished runs only, timed.
    assert sorted(finished) == sorted(n for n, s in states.items() if s == runner.DONE)
    assert all(m["seconds"] >= 0 and m["key"] == runs[n].key for n, m in finished.items())
    assert states["generators/gan"] == runner.RESUME
    assert states["synthetic/gan"] == states["classifiers/real+gan/seed_0"] == runner.NEW
    assert states["classifiers/real+vae/seed_1"] == states["memorization/ddpm"] == runner.DONE
    assert states["report"] == runner.NEW

    again = FakeLauncher()
    runner.run_study(study(2), tmp_path, launcher=again, poll_seconds=0, executor=lambda *_: None)
    assert sorted(again.finished) == sorted(
        n for n, s in states.items() if s != runner.DONE and n != "report"
    )
    assert again.most == 2


@pytest.mark.slow
def test_subprocess_launcher_runs_the_command_into_a_log(tmp_path):
    run = plan_lib.Run(
        "synthetic/x", "synthetic", "sample", {"workdir": "$W/nowhere", "num_per_class": 1}
    )
    handle = scheduler.subprocess_launcher(tmp_path)(run, 1)
    assert handle.wait(timeout=300) == 2  # A user error: no such run.
    log = (tmp_path / "logs" / "synthetic" / "x.log").read_text()
    assert f"No {tmp_path}/nowhere/config.json" in log


def test_an_interrupted_study_stops_its_runs(tmp_path):
    launcher = FakeLauncher(polls=10**6)  # Never finish.

    def interrupt(run, slot):
        if launcher.running and len(launcher.running) == 2:
            raise KeyboardInterrupt
        return launcher(run, slot)

    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study(), tmp_path, launcher=interrupt, poll_seconds=0,
                         executor=lambda *_: None)  # fmt: skip
    assert sorted(launcher.terminated) == sorted(launcher.running)
    assert len(launcher.terminated) == 2
