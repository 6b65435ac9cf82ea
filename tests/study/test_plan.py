"""The study's plan and runner: stage order, sample counts, keys that follow the dependency map,
skip / resume / rerun-on-change with a fake executor, --only, the workdir lock, and commands that
parse back to the configs the study runs."""

import types

import numpy as np
import pytest
from absl import flags
from conftest import REPO
from ml_collections import config_flags

from ham_synth import config_lib, fileio, main
from ham_synth.study import markers, runner
from ham_synth.study import plan as plan_lib


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # The study config names configs/*.py relative to the repo.
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", str(tmp_path / "cache"))  # No Inception weights.


def real_alpha(study):
    return config_lib.load_config(study.classifier.config).data.balance_alpha


def smoke(**values):
    return config_lib.with_values(
        config_lib.load_config(str(REPO / "configs" / "study.py") + ":smoke"), values
    )


def test_plan_orders_stages_and_counts_what_the_policy_draws(tmp_path):
    study = smoke()
    plan = plan_lib.make_plan(study, tmp_path)
    assert [r.stage for r in plan] == sorted((r.stage for r in plan), key=plan_lib.STAGES.index), (
        "stages in order"
    )
    names = [r.name for r in plan]
    assert names[:6] == [
        "generators/ddpm", "generators/gan", "generators/vae",
        "synthetic/ddpm", "synthetic/gan", "synthetic/vae",
    ]  # fmt: skip
    assert plan_lib.conditions(plan) == ["real", "real+ddpm", "real+gan", "real+vae",
                                         "real+vae:filtered", "synthetic_vae",
                                         "pretrain_vae"]  # fmt: skip
    # The filtered set: sampled after the real-only seed-0 ViT, which filters it.
    assert names[8] == "synthetic/vae:filtered"
    refiltered = next(r for r in plan if r.name == "synthetic/vae:filtered")
    assert refiltered.deps == ("generators/vae", "classifiers/real/seed_0")
    assert refiltered.flags["filter_workdir"] == "$W/classifiers/real/seed_0"
    assert refiltered.flags["min_confidence"] == study.synthetic.filter.min_confidence
    assert names[9:15] == [f"realism/{g}/{k}" for g in ("ddpm", "gan", "vae")
                           for k in ("classifier", "recognised")]  # fmt: skip
    assert names[-4:-1] == [f"memorization/{g}" for g in ("ddpm", "gan", "vae")]
    assert names[-1] == "report" and len(plan) == 6 + 2 + 1 + 6 + 5 * 2 + 2 * 2 + 3 + 1
    # Pre-training: the set alone, then real data from its last checkpoint, at real's budget.
    pre = next(r for r in plan if r.name == "pretraining/vae/seed_1")
    tuned = next(r for r in plan if r.name == "classifiers/pretrain_vae/seed_1")
    assert pre.deps == ("synthetic/vae",) and pre.overrides["data.synthetic.policy"] == "only"
    assert tuned.deps == ("pretraining/vae/seed_1",)
    assert "data.synthetic.dirs" not in tuned.overrides
    assert tuned.overrides["init_from"] == "$W/pretraining/vae/seed_1"
    total = plan_lib.classifier_config(study).train.total_steps
    steps = [pre.overrides["train.total_steps"], tuned.overrides["train.total_steps"]]
    assert sum(steps) == total and steps[0] == round(total * study.conditions.pretrain_fraction)
    assert tuned.resolved_config(tmp_path).data.balance_alpha == real_alpha(study)
    filtered_run = next(r for r in plan if r.name == "classifiers/real+vae:filtered/seed_0")
    assert filtered_run.overrides["data.synthetic.dirs"] == "$W/synthetic/vae:filtered"
    assert filtered_run.overrides["data.synthetic.per_class"] == 0  # All that passed.
    assert plan_lib.controls(plan)["real+vae:filtered"] == "real"
    off = plan_lib.make_plan(smoke(**{"synthetic.filter.min_confidence": 0.0}), tmp_path)
    assert not any(r.name.endswith(plan_lib.FILTERED) for r in off)
    with pytest.raises(ValueError, match=r"synthetic.filter.generators names \['zz'\]"):
        plan_lib.make_plan(smoke(**{"synthetic.filter.generators": "zz"}), tmp_path)
    with pytest.raises(ValueError, match="synthetic.filter with policy 'balance'"):
        plan_lib.make_plan(smoke(**{"synthetic.policy": "balance"}), tmp_path)

    class_names, real = plan_lib.real_train_counts(study)
    assert real.tolist() == [7, 11, 24, 2, 24, 146, 3]  # Imbalanced digits' train split.
    # per_class=30 of every class but the largest (ratio); at least 10 (TSTR) of each.
    expected = np.where(real < real.max(), 30, 10)
    sample = next(r for r in plan if r.name == "synthetic/vae")
    counts = dict(pair.split("=") for pair in sample.flags["num_per_class"].split(","))
    assert [int(counts[c]) for c in class_names] == expected.tolist()
    assert sample.deps == ("generators/vae",)
    mixed = next(r for r in plan if r.name == "classifiers/real+gan/seed_1")
    assert mixed.deps == ("synthetic/gan",)
    assert mixed.overrides["seed"] == 1
    assert mixed.overrides["data.synthetic.dirs"] == "$W/synthetic/gan"
    assert mixed.overrides["data.synthetic.policy"] == "ratio"
    # Only the classes sampled for mixing; the largest one's TSTR images stay out.
    assert mixed.overrides["data.synthetic.classes"] == ",".join(
        c for c in class_names if c != "5:nv"
    )
    only = next(r for r in plan if r.name == "classifiers/synthetic_vae/seed_0")
    assert only.overrides["data.synthetic.policy"] == "only"
    real_run = next(r for r in plan if r.name == "classifiers/real/seed_0")
    assert real_run.deps == () and "data.synthetic.dirs" not in real_run.overrides
    # Seeds but 0 take classifier.other_seeds (no attention maps: the report shows seed 0's).
    assert "evals.attention.every_steps" not in real_run.overrides
    assert mixed.overrides["evals.attention.every_steps"] == -1
    # Matched controls: the ratio mix keeps the real-only runs' class-balanced draws.
    alpha = config_lib.load_config(study.classifier.config).data.balance_alpha
    assert alpha > 0
    assert mixed.resolved_config(tmp_path).data.balance_alpha == alpha
    assert real_run.resolved_config(tmp_path).data.balance_alpha == alpha
    assert plan_lib.controls(plan) == {
        **{f"real+{g}": "real" for g in ("ddpm", "gan", "vae")},
        "real+vae:filtered": "real",
        "pretrain_vae": "real",
    }
    # A count policy mixes with uniform real draws: the study adds real-only runs drawn so and
    # compares with them.
    no_filter = {"synthetic.filter.min_confidence": 0.0}  # balance refuses filtered sets.
    topped = plan_lib.make_plan(smoke(**{"synthetic.policy": "balance", **no_filter}), tmp_path)
    assert plan_lib.conditions(topped)[:2] == ["real", plan_lib.UNIFORM]
    mixed_controls = {c: k for c, k in plan_lib.controls(topped).items() if c.startswith("real+")}
    assert set(mixed_controls.values()) == {plan_lib.UNIFORM}
    for name in ("classifiers/real+gan/seed_1", f"classifiers/{plan_lib.UNIFORM}/seed_1"):
        run = next(r for r in topped if r.name == name)
        assert run.resolved_config(tmp_path).data.balance_alpha == 0, name
    with pytest.raises(ValueError, match=r"synthetic.classes names \['zz'\]; the data's classes"):
        plan_lib.make_plan(smoke(**{"synthetic.classes": "3:df,zz"}), tmp_path)
    scored = next(r for r in plan if r.name == "realism/gan/classifier")
    assert scored.deps == ("synthetic/gan", "classifiers/real/seed_0")
    assert scored.flags["features"] == "classifier"
    assert scored.overrides["data.split"] == "test"


def keys(plan):
    return {r.name: r.key for r in plan}


def test_keys_follow_the_dependency_map(tmp_path):
    base = keys(plan_lib.make_plan(smoke(), tmp_path))
    assert base == keys(plan_lib.make_plan(smoke(), tmp_path / "moved")), "W-independent"
    changed = keys(
        plan_lib.make_plan(
            smoke(**{"generators.vae.config": "configs/vae.py:quickstart"}), tmp_path
        )
    )
    differ = sorted(n for n in base if base[n] != changed[n])
    assert differ == [
        "classifiers/pretrain_vae/seed_0", "classifiers/pretrain_vae/seed_1",
        "classifiers/real+vae/seed_0", "classifiers/real+vae/seed_1",
        "classifiers/real+vae:filtered/seed_0", "classifiers/real+vae:filtered/seed_1",
        "classifiers/synthetic_vae/seed_0", "classifiers/synthetic_vae/seed_1",
        "generators/vae", "memorization/vae", "pretraining/vae/seed_0", "pretraining/vae/seed_1",
        "realism/vae/classifier", "realism/vae/recognised", "report", "synthetic/vae",
        "synthetic/vae:filtered",
    ]  # fmt: skip
    # The mixing policy touches the sets' sizes and the mixed classifiers, not the generators.
    changed = keys(plan_lib.make_plan(smoke(**{"synthetic.per_class": 40}), tmp_path))
    differ = {n for n in base if base[n] != changed[n]}
    assert not any(n.startswith(("generators/", "classifiers/real/")) for n in differ)
    assert {"synthetic/vae", "classifiers/real+gan/seed_0", "report"} <= differ
    # The classifier's recipe touches every classifier, no generator or set.
    changed = keys(
        plan_lib.make_plan(smoke(**{"classifier.config": "configs/vit.py:smoke,derma28"}), tmp_path)
    )
    differ = {n for n in base if base[n] != changed[n]}
    classifier_side = ("classifiers/", "pretraining/", "realism/", "memorization/")
    # The filtered set too: the real-only ViT filters it.
    expected = {"report", "synthetic/vae:filtered"}
    assert differ == {n for n in base if n.startswith(classifier_side)} | expected


class FakeExecutor:
    """Records the runs it makes; writes a file into each run's folder; can fail on one run."""

    def __init__(self, fail_on: str = ""):
        self.made, self.fail_on = [], fail_on

    def __call__(self, run, root, study, plan):
        del study, plan
        (root / run.name).mkdir(parents=True, exist_ok=True)
        (root / run.name / "output").write_text(run.key)
        if run.name == self.fail_on:
            raise KeyboardInterrupt  # A kill in the middle of the run.
        self.made.append(run.name)


def test_skip_resume_and_rerun_only_what_changed(tmp_path):
    study = smoke()
    first = FakeExecutor(fail_on="classifiers/real/seed_1")
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, tmp_path, executor=first)
    plan = plan_lib.make_plan(study, tmp_path)
    assert first.made == [r.name for r in plan[:7]]
    assert runner.status(tmp_path, plan[7]) == runner.RESUME  # Killed mid-run.

    second = FakeExecutor()
    runner.run_study(study, tmp_path, executor=second)
    assert second.made == [r.name for r in plan[7:]], "resumes at the killed run, skips the rest"
    assert all(runner.status(tmp_path, r) == runner.DONE for r in plan)

    third = FakeExecutor()
    runner.run_study(study, tmp_path, executor=third)
    assert third.made == []

    (tmp_path / "generators/vae/stale").write_text("from the old config")
    old_key = markers.read(tmp_path, "generators/vae")["key"]
    changed = smoke(**{"generators.vae.config": "configs/vae.py:quickstart"})
    # Finished work is never redone unasked: the error names what changed and the way on.
    with pytest.raises(runner.StudyError) as refused:
        runner.run_study(changed, tmp_path, executor=FakeExecutor())
    message = str(refused.value)
    assert "16 run(s) of this workdir ran with other inputs" in message
    assert (
        "generators/vae: --config=configs/vae.py:smoke -> --config=configs/vae.py:quickstart"
        in (message)
    )
    assert "synthetic/vae: a run it reads changed" in message and "--rerun_changed" in message
    fourth = FakeExecutor()
    runner.run_study(changed, tmp_path, executor=fourth, rerun_changed=True)
    assert fourth.made == [
        "generators/vae", "synthetic/vae", "synthetic/vae:filtered", "realism/vae/classifier",
        "realism/vae/recognised", "classifiers/real+vae/seed_0", "classifiers/real+vae/seed_1",
        "classifiers/real+vae:filtered/seed_0", "classifiers/real+vae:filtered/seed_1",
        "classifiers/synthetic_vae/seed_0", "classifiers/synthetic_vae/seed_1",
        "pretraining/vae/seed_0", "classifiers/pretrain_vae/seed_0",
        "pretraining/vae/seed_1", "classifiers/pretrain_vae/seed_1",
        "memorization/vae", "report",
    ]  # fmt: skip
    assert not (tmp_path / "generators/vae/stale").exists(), "a changed run starts afresh"
    kept = tmp_path / runner.REPLACED / "generators/vae" / old_key / "stale"
    assert kept.read_text() == "from the old config", "and the earlier one is kept"


def test_only_needs_finished_dependencies(tmp_path, capsys):
    with pytest.raises(ValueError, match="not done.*synthetic/"):
        runner.run_study(smoke(), tmp_path, only="conditions", executor=FakeExecutor())
    with pytest.raises(ValueError, match="stages are"):
        runner.run_study(smoke(), tmp_path, only="classifiers", executor=FakeExecutor())
    fake = FakeExecutor()
    runner.run_study(smoke(), tmp_path, only="generators,synthetic", executor=fake)
    assert fake.made == [
        f"{s}/{g}" for s in ("generators", "synthetic") for g in ("ddpm", "gan", "vae")
    ]
    fake = FakeExecutor()
    assert runner.run_study(smoke(), tmp_path, dry_run=True, executor=fake) == []
    plan_text = capsys.readouterr().out
    assert "generators/vae" in plan_text and " done " in plan_text and " new " in plan_text
    assert fake.made == []


def test_second_writer_fails_clearly(tmp_path):
    lock = tmp_path / runner.LOCK
    with (
        fileio.exclusive_lock(lock, "study"),
        pytest.raises(FileExistsError, match=f"Another study is writing {tmp_path} .*pid"),
        fileio.exclusive_lock(lock, "study"),
    ):
        pass
    with fileio.exclusive_lock(lock, "study"):  # Released on exit.
        pass


def test_commands_parse_back_to_the_configs_the_study_runs(tmp_path):
    for run in plan_lib.make_plan(smoke(), tmp_path):
        if run.verb not in ("train", "evaluate", "memorization"):
            continue
        argv = run.command(tmp_path)[1:]  # As main.py hands absl "ham-synth train ...".
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
        for name in run.flags:
            flags.DEFINE_string(name, None, "", flag_values=values)
        values(argv)
        assert values.config.to_dict() == run.resolved_config(tmp_path).to_dict(), run.name
        assert values.workdir == str(tmp_path / run.name)


def test_sample_commands_use_the_sample_verbs_flags_and_settings(tmp_path):
    """A `sample` run's command, as printed by --dry_run, is one the CLI takes: its flags are the
    verb's, and its sampler settings (`--sample.KEY=VALUE`) are the study's generator block."""
    study = smoke()
    verb = main.VERBS["sample"]
    given = {}
    for run in plan_lib.make_plan(study, tmp_path):
        if run.verb != "sample":
            continue
        settings, rest = main.split_sample_settings(run.command(tmp_path)[2:])
        generator = run.flags["workdir"].split("/")[-1].split("@")[0]
        given[generator] = settings
        names = {arg.removeprefix("--").partition("=")[0] for arg in rest}
        assert names <= {*verb.required, *verb.optional}, run.name
    assert given == {
        "ddpm": {"guidance": "2.0", "steps": "3"}, "gan": {"truncation": "0.0"}, "vae": {}
    }  # fmt: skip


def test_a_training_run_stopped_early_is_not_done(tmp_path, monkeypatch):
    """SIGTERM makes training checkpoint and return early; the study must not mark it done."""
    study = smoke()
    run = next(r for r in plan_lib.make_plan(study, tmp_path) if r.verb == "train")

    def stopped(config, workdir, allow_config_change):
        del workdir, allow_config_change
        return types.SimpleNamespace(step=np.int32(config.train.total_steps - 1))

    monkeypatch.setattr(runner.train, "train_and_evaluate", stopped)
    with pytest.raises(runner.train.TrainingStopped, match="rerun the same command to resume"):
        runner.execute(run, tmp_path, study, [])


def test_a_sweep_shares_the_runs_its_points_have_in_common(tmp_path):
    study = smoke(sweep="synthetic.per_class=20,30")
    plan = plan_lib.make_plan(study, tmp_path)
    by_name = {r.name: r for r in plan}
    points = ("synthetic.per_class=20", "synthetic.per_class=30")
    for shared in ("generators/vae", "classifiers/real/seed_1"):
        assert by_name[shared].points == points
    for label in points:
        own = by_name[f"points/{label}/synthetic/vae"]
        assert own.points == (label,) and own.base_name == "synthetic/vae"
        assert own.flags["out_dir"] == f"$W/points/{label}/synthetic/vae"
        assert own.flags["workdir"] == "$W/generators/vae", "reads the shared generator"
        mixed = by_name[f"points/{label}/classifiers/real+gan/seed_0"]
        assert mixed.overrides["data.synthetic.dirs"] == f"$W/points/{label}/synthetic/gan"
        assert mixed.overrides["data.synthetic.per_class"] == int(label[-2:])
        assert mixed.deps == (f"points/{label}/synthetic/gan",)
        audit = by_name[f"points/{label}/memorization/ddpm"]
        assert audit.flags["classifier_workdir"] == "$W/classifiers/real/seed_0"
    # The points' own plans: everything but the report, once each.
    assert len(plan) - 1 == len({r.name for r in plan}) - 1
    single = plan_lib.make_plan(smoke(), tmp_path)
    assert len(plan) == len(single) + sum(
        1 for r in single
        if r.stage in ("synthetic", "filtered", "realism", "conditions", "memorization")
        and not r.name.startswith("classifiers/real/")
    )  # fmt: skip
    two = plan_lib.make_plan(
        smoke(sweep="synthetic.per_class=20,30;seeds.classifiers=1,2"), tmp_path
    )
    label = "synthetic.per_class=20__seeds.classifiers=1"
    mixed = next(r for r in two if r.name == f"points/{label}/classifiers/real+vae/seed_0")
    assert mixed.overrides["data.synthetic.dirs"] == f"$W/points/{label}/synthetic/vae"
    with pytest.raises(ValueError, match="is not a field of the config"):
        plan_lib.make_plan(smoke(sweep="synthetic.per_klass=1,2"), tmp_path)
    with pytest.raises(ValueError, match="'ture' is not true or false"):
        plan_lib.make_plan(smoke(sweep="conditions.real_plus_all=ture"), tmp_path)
    with pytest.raises(ValueError, match="is a ConfigDict; sweep a number"):
        plan_lib.make_plan(smoke(sweep="synthetic=1,2"), tmp_path)


def test_one_run_by_name(tmp_path):
    fake = FakeExecutor()
    with pytest.raises(ValueError, match="not done.*generators/vae"):
        runner.run_study(smoke(), tmp_path, run_name="synthetic/vae", executor=fake)
    runner.run_study(smoke(), tmp_path, run_name="generators/vae", executor=fake)
    runner.run_study(smoke(), tmp_path, run_name="synthetic/vae", executor=fake)
    assert fake.made == ["generators/vae", "synthetic/vae"]
    with pytest.raises(ValueError, match="not a run of this study"):
        runner.run_study(smoke(), tmp_path, run_name="synthetic/nope", executor=fake)


def test_eta_is_the_mean_run_time_of_each_stage_and_names_its_guesses(tmp_path):
    plan = plan_lib.make_plan(smoke(), tmp_path)
    pending = [r for r in plan if r.stage in ("generators", "real")]  # 3 + 2 runs
    assert runner._eta({}, pending) == "ETA unknown until a run finishes"
    assert runner._eta({"generators": [60.0, 120.0]}, pending) == (
        "ETA 7.5 min (guessing real from the runs so far)"
    )
    timed = {"generators": [60.0], "real": [30.0, 90.0]}
    assert runner._eta(timed, pending) == "ETA 5.0 min"


def test_generator_seeds_pair_with_classifier_seeds(tmp_path):
    study = smoke(**{"seeds.classifiers": 3, "seeds.generators": 2})
    plan = {r.name: r for r in plan_lib.make_plan(study, tmp_path)}
    assert plan["generators/vae@1"].overrides["seed"] == 1
    assert "seed" not in plan["generators/vae"].overrides
    assert plan["synthetic/vae@1"].flags["seed"] == 1
    assert plan["synthetic/vae@1"].deps == ("generators/vae@1",)
    assert plan["synthetic/vae@1:filtered"].flags["workdir"] == "$W/generators/vae@1"
    # Classifier seed s reads generator seed s mod 2.
    for seed, made in enumerate(("vae", "vae@1", "vae")):
        mixed = plan[f"classifiers/real+vae/seed_{seed}"]
        assert mixed.overrides["data.synthetic.dirs"] == f"$W/synthetic/{made}"
        assert mixed.deps == (f"synthetic/{made}",)
        filtered = plan[f"classifiers/real+vae:filtered/seed_{seed}"]
        assert filtered.overrides["data.synthetic.dirs"] == f"$W/synthetic/{made}:filtered"
        assert plan[f"pretraining/vae/seed_{seed}"].deps == (f"synthetic/{made}",)
    # Realism and memorization read the seed-0 sets.
    assert "realism/vae@1/classifier" not in plan and "memorization/vae@1" not in plan
    with pytest.raises(ValueError, match=r"seeds.generators=4; give 1 to seeds.classifiers \(3\)"):
        plan_lib.make_plan(smoke(**{"seeds.classifiers": 3, "seeds.generators": 4}), tmp_path)


def test_extra_doses_add_real_plus_set_conditions_at_other_ratios(tmp_path):
    study = smoke(**{"conditions.dose.generators": "gan", "conditions.dose.ratios": "0.1,0.5"})
    plan = {r.name: r for r in plan_lib.make_plan(study, tmp_path)}
    for ratio in (0.1, 0.5):
        run = plan[f"classifiers/real+gan:ratio={ratio:g}/seed_1"]
        assert run.overrides["data.synthetic.ratio"] == ratio
        assert run.overrides["data.synthetic.dirs"] == "$W/synthetic/gan"
        assert run.control == "real"
    assert plan["classifiers/real+gan/seed_1"].overrides["data.synthetic.ratio"] == 0.25
    assert plan_lib.doses(smoke()) == []
    with pytest.raises(ValueError, match="extra doses are ratios in"):
        plan_lib.make_plan(
            smoke(**{"conditions.dose.generators": "gan", "conditions.dose.ratios": "0.1",
                     "synthetic.policy": "balance", "synthetic.filter.min_confidence": 0.0}),
            tmp_path,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"conditions.dose.ratios='0.1,half'"):
        plan_lib.doses(smoke(**{"conditions.dose.generators": "gan",
                                "conditions.dose.ratios": "0.1,half"}))  # fmt: skip
