"""One restore path: a run from its workdir alone, warm starts from another run, and the order
in which a run's weights are chosen."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from ham_synth import config_lib, evaluators, grids, parallel, run_config, tasks, train, workdir
from ham_synth.data import sources


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _write_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


@pytest.mark.slow
def test_load_restores_a_run_whose_data_is_gone_and_reproduces_its_final_grid(tmp_path):
    data = _write_folder(tmp_path / "data")
    config = load_config(
        "vae.py:smoke", **{"data.name": "folder", "data.path": str(data), "data.split": "all"}
    )
    train.train_and_evaluate(config, tmp_path / "run")
    shutil.rmtree(data)

    run = workdir.load(tmp_path / "run")
    assert run.step == 6 and run.config.data.class_names == "benign,malignant"
    entry = evaluators.from_config(
        run.config, run.task, parallel.make_mesh(), tmp_path / "run", ["samples"]
    )[0]
    images = entry.evaluator.images(run.state)  # Same params, labels and rng as the trainer's.
    grid = grids.make_grid(images, rows=2)

    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_0000006.png"))
    scale = grids.display_scale(8)
    trained = png[:, -grid.shape[1] * scale :][::scale, ::scale]  # Drop the label margin.
    np.testing.assert_array_equal(trained, grid)


def test_step_choices_and_their_errors(vae_run):
    assert workdir.load(vae_run, "3").step == 3
    assert workdir.load(vae_run, 6).step == 6
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at step 4 .* steps \[3, 6\]"):
        workdir.load(vae_run, 4)
    with pytest.raises(ValueError, match="keeps no best checkpoint"):
        workdir.load(vae_run, "best")
    with pytest.raises(ValueError, match="use latest or best or a step number"):
        workdir.load(vae_run, "newest")
    with pytest.raises(FileNotFoundError, match="is .* the --workdir of a `ham-synth train` run"):
        workdir.load(vae_run / "checkpoints")


@pytest.mark.slow
def test_init_from_copies_params_exactly_and_a_resume_never_reapplies_it(vae_run, tmp_path):
    warm = load_config(
        "vae.py:smoke",
        **{
            "init_from": f"{vae_run}:3",
            "train.total_steps": 1,
            "optim.warmup_steps": 0,
            "seed": 7,
        },
    )
    built = workdir.build(warm, parallel.make_mesh())
    state = workdir.initial_state(built, jax.random.key(7), parallel.make_mesh())
    at_3 = workdir.load(vae_run, 3).state
    for field in ("params", "ema_params", "model_state"):
        for a, b in zip(_leaves(getattr(at_3, field)), _leaves(getattr(state, field)), strict=True):
            np.testing.assert_array_equal(b, a)
    assert int(state.step) == 0  # A new run: its own step count and optimizer state.
    at_6 = workdir.load(vae_run, 6).state
    assert not np.array_equal(_leaves(at_3.params)[0], _leaves(at_6.params)[0])

    # Trained for a step, then resumed with a different init_from: the checkpoint wins.
    train.train_and_evaluate(warm, tmp_path / "warm")
    resumed = workdir.load(tmp_path / "warm").state
    again = load_config(
        "vae.py:smoke",
        **{"init_from": "/nonexistent", "train.total_steps": 1, "optim.warmup_steps": 0, "seed": 7},
    )
    state = train.train_and_evaluate(again, tmp_path / "warm")
    for a, b in zip(_leaves(resumed), _leaves(state), strict=True):
        np.testing.assert_array_equal(b, a)


@pytest.mark.slow
def test_init_from_a_different_architecture_names_the_parameter(vae_run, tmp_path):
    wider = load_config(
        "vae.py:smoke",
        **{"init_from": str(vae_run), "model.latent_dim": 6},
    )
    with pytest.raises(
        ValueError,
        match=r"params there vs here: .*kernel has shape .*, expected .*same architecture",
    ):
        train.train_and_evaluate(wider, tmp_path / "wider")


def test_init_from_and_external_weights_together_are_refused(tmp_path):
    overrides = {"init_from": str(tmp_path), "model.init_from_npz": "augreg.npz"}
    with pytest.raises(
        ValueError, match=r"reads \(model.init_from_npz\) both name initial weights; keep one"
    ):
        train.train_and_evaluate(load_config("vit.py:smoke", **overrides), tmp_path / "w")


def test_a_resume_may_change_the_familys_step_0_fields_and_no_others():
    config = load_config("vit.py:smoke", **{"data.num_classes": 7})
    init_fields = tasks.get_task("classify")(config).init_fields
    assert init_fields == ("model.init_from_npz",)
    assert run_config.is_resumable("model.init_from_npz", init_fields)
    assert not run_config.is_resumable("model.init_from_npz")  # A field of no other family.
    assert not run_config.is_resumable("model.width", init_fields)
    assert run_config.is_resumable("optim.gen.schedule_steps")
    assert run_config.is_resumable("evals.x")


def test_fixed_splits_refuse_fractions():
    data = load_config("vae.py:smoke", **{"data.name": "ham10000", "data.val_fraction": 0.2}).data
    with pytest.raises(
        ValueError, match="data.val_fraction=0.2: 'ham10000' has a fixed split.*--val_fraction"
    ):
        sources.get_source(data)


def test_a_config_json_without_todays_shared_fields_is_refused_naming_them(tmp_path):
    fields = json.loads(load_config("vae.py:smoke").to_json_best_effort())
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert config_lib.load_workdir_config(tmp_path).to_dict() == fields
    del fields["data"]["class_shares"], fields["train"]["grad_accum_steps"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=r"lacks data.class_shares, train.grad_accum_steps: an"):
        config_lib.load_workdir_config(tmp_path)
