"""`ham-synth sample`: PNGs per class, the manifest, and the folder source reading them back."""

import csv
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from ham_synth import main, predict, synthesize, tasks, train, workdir
from ham_synth.data import sources
from ham_synth.tasks import base, ddpm, vae


@pytest.fixture(scope="module")
def ddpm_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddpm")
    # One device and no sample grid: no test here reads either (sampling runs on the full mesh).
    overrides = {"train.num_devices": 1, "evals.samples.every_steps": -1}
    train.train_and_evaluate(load_config("ddpm.py:smoke", **overrides), workdir)
    return workdir


@pytest.mark.slow
def test_ddpm_samples_land_per_class_with_a_manifest(ddpm_workdir):
    out = synthesize.run(
        str(ddpm_workdir),
        num_per_class=3,
        sampler="dpmpp_2m",
        steps=4,
        guidance=1.5,
        classes="3,7",
        seed=5,
        sample_batch_size=4,
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["3", "7"]
    with Image.open(next((out / "7").glob("*.png"))) as png:
        assert png.text == {"synthetic": "true", "generator": "ddpm", "run": str(ddpm_workdir),
                            "step": "6", "seed": "5", "sampler": "dpmpp_2m", "steps": "4",
                            "guidance": "1.5", "eta": "0.0", "clip_denoised": "True",
                            "compute_dtype": "float32", "class": "7"}  # fmt: skip
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {r["class"] for r in rows} == {"3", "7"}
    row = rows[0]
    assert (row["family"], row["checkpoint_step"], row["sampler"], row["steps"]) == (
        "ddpm",
        "6",
        "dpmpp_2m",
        "4",
    )
    assert (row["guidance"], row["seed"], row["synthetic"]) == ("1.5", "5", "true")
    image = Image.open(out / row["file"])
    assert image.size == (8, 8) and image.mode == "RGB"

    # The output is a `folder` data source, with labels by class name.
    data = load_config(
        "ddpm.py:smoke",
        **{
            "data.name": "folder",
            "data.path": str(out),
            "data.split": "all",
            "data.num_classes": 2,
        },
    ).data
    source = sources.get_source(data)
    assert len(source) == 6 and source.class_names == ("3", "7")
    np.testing.assert_array_equal(source[0]["image"], np.asarray(image))


@pytest.mark.slow
def test_same_seed_same_images_and_existing_output_is_kept(ddpm_workdir, tmp_path):
    kwargs = dict(num_per_class=1, steps=3, classes="0", sample_batch_size=8)
    first = synthesize.run(str(ddpm_workdir), out_dir=str(tmp_path / "a"), **kwargs)
    second = synthesize.run(str(ddpm_workdir), out_dir=str(tmp_path / "b"), **kwargs)
    a, b = (np.asarray(Image.open(d / "0" / "0_000000.png")) for d in (first, second))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="finished sample"):
        synthesize.run(str(ddpm_workdir), out_dir=str(first), **kwargs)
    with pytest.raises(ValueError, match="Unknown classes"):
        synthesize.run(
            str(ddpm_workdir), out_dir=str(tmp_path / "c"), num_per_class=1, classes="nv"
        )


def _pixels(folder):
    """{path in folder: uint8 pixels} of every PNG of a sample."""
    return {p.relative_to(folder): np.asarray(Image.open(p)) for p in folder.glob("*/*.png")}


@pytest.mark.slow
def test_an_unfinished_sample_resumes_to_what_an_uninterrupted_one_writes(ddpm_workdir, tmp_path):
    # 10 images in batches of 8: indices 0-7, then 8-9.
    kwargs = dict(num_per_class=5, steps=3, classes="0,1", sample_batch_size=8)
    whole = synthesize.run(str(ddpm_workdir), out_dir=str(tmp_path / "whole"), **kwargs)
    partial = tmp_path / "partial"
    shutil.copytree(whole, partial)
    # Killed in the second batch: no manifest yet, image 9 unwritten, 8 cut short, a temp file.
    (partial / "manifest.csv").unlink()
    (partial / "1/1_000009.png").unlink()
    (partial / "1/1_000008.png").write_bytes((partial / "1/1_000008.png").read_bytes()[:40])
    (partial / "1/1_000007.png.4242.tmp").write_bytes(b"half")
    # A mark on a kept image shows the first batch is kept, not drawn again.
    marked = partial / "0/0_000000.png"
    with Image.open(marked) as png:
        pixels, info = np.asarray(png).copy(), synthesize.png_provenance(png.text)
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(marked, pnginfo=info)

    synthesize.run(str(ddpm_workdir), out_dir=str(partial), **kwargs)

    expected, resumed = _pixels(whole), _pixels(partial)
    assert resumed.keys() == expected.keys()  # And the temp file is gone.
    assert [p.name for p in partial.rglob("*.tmp")] == []
    for name, image in expected.items():
        if partial / name != marked:
            np.testing.assert_array_equal(resumed[name], image, err_msg=str(name))
    np.testing.assert_array_equal(resumed[marked.relative_to(partial)], pixels)
    assert (partial / "manifest.csv").read_text() == (whole / "manifest.csv").read_text()

    # Finished now: refused unless --overwrite, which draws everything again.
    with pytest.raises(FileExistsError, match="finished sample.*--overwrite"):
        synthesize.run(str(ddpm_workdir), out_dir=str(partial), **kwargs)
    synthesize.run(str(ddpm_workdir), out_dir=str(partial), overwrite=True, **kwargs)
    assert _pixels(partial).keys() == expected.keys()
    np.testing.assert_array_equal(_pixels(partial)[marked.relative_to(partial)],
                                  expected[marked.relative_to(partial)])  # fmt: skip

    # An unfinished sample drawn with other settings is not mixed with this one.
    (partial / "manifest.csv").unlink()
    with pytest.raises(FileExistsError, match="other settings.*steps: 3 there, 4 now"):
        synthesize.run(str(ddpm_workdir), out_dir=str(partial), **{**kwargs, "steps": 4})


def test_overwrite_deletes_nothing_until_every_argument_is_checked(ddpm_workdir, tmp_path):
    kwargs = dict(num_per_class=1, classes="0", steps=2, out_dir=str(tmp_path / "s"))
    out = synthesize.run(str(ddpm_workdir), **kwargs)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for bad, message in [({"classes": "nosuch"}, "Unknown class"),
                         ({"max_draws": 0}, "max_draws=0"),
                         ({"sample_batch_size": 0}, "sample_batch_size=0"),
                         ({"steps": "many"}, "steps takes int values")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            synthesize.run(str(ddpm_workdir), **{**kwargs, **bad}, overwrite=True)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before, bad


def test_a_resume_that_asks_for_fewer_images_leaves_none_of_the_others(ddpm_workdir, tmp_path):
    out = tmp_path / "s"
    synthesize.run(str(ddpm_workdir), num_per_class="3=3,7=2", steps=2, out_dir=str(out))
    (out / "manifest.csv").unlink()  # As if killed before the manifest.
    synthesize.run(str(ddpm_workdir), num_per_class="7=1", steps=2, out_dir=str(out))
    # The folder source reads every PNG: the killed run's others must not stay.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["7/7_000000.png"]
    assert sorted(p.name for p in out.iterdir()) == ["7", "manifest.csv"]


def test_a_folder_with_other_files_is_refused_naming_one(ddpm_workdir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"did not write \(notes.txt\)"):
        synthesize.run(str(ddpm_workdir), num_per_class=1, out_dir=str(tmp_path / "mine"))
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


def test_vae_samples_through_the_same_contract(vae_run, tmp_path):
    workdir = vae_run
    out = synthesize.run(str(workdir), num_per_class=2, out_dir=str(tmp_path / "plain"))
    assert len(list(out.glob("*/*.png"))) == 20
    with open(out / "manifest.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["family"], row["compute_dtype"]) == ("vae", "float32")
    assert list(row)[-1] == "compute_dtype"  # The VAE's one setting, after the shared columns.
    # The near-copy screen sees each image's class: a smoke VAE's blurs are no copies.
    screened = synthesize.run(str(workdir), num_per_class=2, exclude_near_copies=True,
                              out_dir=str(tmp_path / "screened"))  # fmt: skip
    assert len(list(screened.glob("*/*.png"))) == 20
    summary = json.loads((screened / synthesize.SCREENING).read_text())  # The screen ran.
    assert len(summary) == 10 and all(s["wanted"] == s["kept"] == 2 <= s["drawn"]
                                      for s in summary.values())  # fmt: skip
    with pytest.raises(ValueError, match=r"sampler takes no \[.sampler.\]"):
        synthesize.run(str(workdir), num_per_class=1, sampler="ddim", out_dir=str(tmp_path / "x"))


def test_a_new_sampler_setting_needs_only_its_family(vae_run, tmp_path, monkeypatch):
    """A toy family: the VAE with one more keyword on its sample function. The setting goes from
    the command line's --sample.KEY=VALUE to the images, the manifest and the PNGs' provenance
    with no change outside the family."""

    def make_task(config):
        task = vae.make_task(config)
        sample = task.predict_fns["sample"]

        def brighter_sample(variables, labels, rng, *, compute_dtype="float32", brightness=0.0):
            images = sample(variables, labels, rng, compute_dtype=compute_dtype)
            return jnp.clip(images + brightness, -1, 1)

        return dataclasses.replace(task, predict_fns={"sample": brighter_sample})

    monkeypatch.setitem(tasks._TASKS, "vae", make_task)  # Sampling builds the task again.
    workdir_path = vae_run
    settings, rest = main.split_sample_settings(["--sample.brightness=0.5", "--seed=3"])
    assert (settings, rest) == ({"brightness": "0.5"}, ["--seed=3"])
    plain = synthesize.run(str(workdir_path), num_per_class="1=2", out_dir=str(tmp_path / "a"))
    bright = synthesize.run(str(workdir_path), num_per_class="1=2", out_dir=str(tmp_path / "b"),
                            **settings)  # fmt: skip
    with open(bright / "manifest.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["brightness"], row["compute_dtype"]) == ("0.5", "float32")
    with Image.open(bright / row["file"]) as png:
        assert png.text["brightness"] == "0.5"
        brighter = np.asarray(png, np.float32)
    darker = np.asarray(Image.open(plain / row["file"]), np.float32)
    assert np.all(brighter >= darker) and brighter.mean() > darker.mean() + 30
    with pytest.raises(ValueError, match=r"brightness='lots': brightness takes float values"):
        synthesize.run(str(workdir_path), num_per_class=1, out_dir=str(tmp_path / "c"),
                       brightness="lots")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--sample.steps"], "write a sampler setting as --sample.KEY=VALUE"),
        (["--sample.=3"], "write a sampler setting as --sample.KEY=VALUE"),
        (["--sample.seed=3"], "seed is a flag of its own; pass --seed=3"),
    ],
)
def test_sampler_settings_on_the_command_line(args, error):
    assert main.split_sample_settings(["--sample.steps=5", "--workdir=w"]) == (
        {"steps": "5"},
        ["--workdir=w"],
    )
    with pytest.raises(ValueError, match=error):
        main.split_sample_settings(args)


@pytest.mark.slow
def test_new_sampler_settings_never_rebuild_the_task(ddpm_workdir, tmp_path, monkeypatch):
    builds = []

    def counting_make_task(config):
        builds.append(config.task)
        return ddpm.make_task(config)

    monkeypatch.setitem(tasks._TASKS, "ddpm", counting_make_task)
    run = workdir.load(ddpm_workdir)
    kwargs = dict(num_per_class=2, classes="1", seed=3)
    a = synthesize.write_samples(run, out_dir=tmp_path / "a", settings={"guidance": 0.0}, **kwargs)
    b = synthesize.write_samples(
        run, out_dir=tmp_path / "b", settings={"guidance": 4.0, "steps": 3}, **kwargs
    )
    assert builds == ["ddpm"]
    first, second = (np.asarray(Image.open(d / "1" / "1_000000.png"), np.float32) for d in (a, b))
    assert np.abs(first - second).mean() > 1.0  # The settings took effect.
    with open(b / "manifest.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["guidance"], row["steps"], row["sampler"]) == ("4.0", "3", "ddim")
    with pytest.raises(ValueError, match=r"steps='3.5': steps takes int values \(default 5\)"):
        synthesize.write_samples(run, 1, tmp_path / "c", settings={"steps": "3.5"})


@pytest.mark.slow
def test_gan_samples_through_the_same_contract_with_truncation(tmp_path):
    workdir_path = tmp_path / "gan"
    config = load_config("gan.py:smoke", **{"evals.samples.every_steps": 6})
    train.train_and_evaluate(config, workdir_path)
    assert (workdir_path / "samples" / "step_0000006.png").exists()  # The samples evaluator.
    out = synthesize.run(str(workdir_path), num_per_class=2, truncation=0.5)
    assert len(list(out.glob("*/*.png"))) == 20
    with open(out / "manifest.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["family"], row["truncation"]) == ("gan", "0.5")
    accepted = r"\(it takes \['batch_norm', 'compute_dtype', 'truncation'\]\)"
    with pytest.raises(ValueError, match=r"takes no \['guidance'\] " + accepted):
        synthesize.run(
            str(workdir_path), num_per_class=1, guidance=2.0, out_dir=str(tmp_path / "x")
        )
    # Truncation to a tiny range pulls every z towards 0: the images of a class nearly agree.
    run = workdir.load(workdir_path)
    sample = run.task.predict_fns["sample"]
    sample = jax.jit(sample, static_argnames=tuple(base.predict_settings(sample)))
    variables = {"params": run.state.ema_params, **run.state.model_state}
    labels = np.zeros(8, np.int32)
    tight = np.asarray(sample(variables, labels, jax.random.key(0), truncation=1e-3))
    loose = np.asarray(sample(variables, labels, jax.random.key(0)))
    assert tight.std(axis=0).mean() < 0.1 * loose.std(axis=0).mean()


def test_counts_per_class_name(ddpm_workdir, tmp_path):
    names = [str(d) for d in range(10)]
    assert synthesize.parse_counts(2, names, "3,7") == {"3": 2, "7": 2}
    assert synthesize.parse_counts("3=1, 7=4", names) == {"3": 1, "7": 4}
    for bad, message in [("x=1", "Unknown classes"), ("3=two", "name=count"), ("3=0", "at least")]:
        with pytest.raises(ValueError, match=message):
            synthesize.parse_counts(bad, names)
    with pytest.raises(ValueError, match="drop --classes"):
        synthesize.parse_counts("3=1", names, "3")
    out = synthesize.run(
        str(ddpm_workdir), num_per_class="7=3,3=1", steps=2, out_dir=str(tmp_path / "s")
    )
    with open(out / "manifest.csv") as f:
        classes = [row["class"] for row in csv.DictReader(f)]
    assert classes == ["7", "7", "7", "3"]


def test_screened_out_images_are_drawn_again_or_left_out(ddpm_workdir, tmp_path):
    restored = workdir.load(ddpm_workdir)
    calls = []

    def first_draw_only(images, labels):  # Drops everything the first time, nothing after.
        calls.append(len(images))
        return np.full(len(images), len(calls) > 1), {}

    out = synthesize.write_samples(restored, "3=4", tmp_path / "a", settings={"steps": 2},
                                   screen=first_draw_only)  # fmt: skip
    assert calls == [4, 4], "one draw, then one redraw of the four dropped"
    with open(out / "manifest.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [f"3/3_{i:06d}.png" for i in range(4)]
    plain = synthesize.write_samples(restored, "3=4", tmp_path / "b", settings={"steps": 2})
    redrawn = np.asarray(Image.open(out / "3" / "3_000000.png"))
    assert not np.array_equal(redrawn, np.asarray(Image.open(plain / "3" / "3_000000.png")))
    assert not (plain / synthesize.SCREENING).exists()

    def never_the_first(images, labels):
        return np.arange(len(images)) != 0, {}

    out = synthesize.write_samples(restored, "3=2,7=1", tmp_path / "c", settings={"steps": 2},
                                   screen=never_the_first, max_draws=3)  # fmt: skip
    with open(out / "manifest.csv") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    # Image 0 is dropped at every draw (it is first each time): left out, its file removed.
    assert files == ["3/3_000001.png", "7/7_000002.png"]
    assert sorted(p.name for p in out.rglob("*.png")) == ["3_000001.png", "7_000002.png"]
    summary = json.loads((out / synthesize.SCREENING).read_text())
    assert summary == {"3": {"wanted": 2, "drawn": 4, "kept": 1, "acceptance": 0.25},
                       "7": {"wanted": 1, "drawn": 1, "kept": 1, "acceptance": 1.0}}  # fmt: skip


def test_a_screen_that_keeps_no_image_of_a_class_is_named_in_a_warning(ddpm_workdir, tmp_path,
                                                                        caplog):  # fmt: skip
    restored = workdir.load(ddpm_workdir)

    def no_sevens(images, labels):
        return labels != 7, {}

    out = synthesize.write_samples(restored, "3=1,7=2", tmp_path / "s", settings={"steps": 2},
                                   screen=no_sevens, max_draws=2)  # fmt: skip
    assert json.loads((out / synthesize.SCREENING).read_text())["7"]["kept"] == 0
    [warning] = [r.getMessage() for r in caplog.records if "kept no image" in r.getMessage()]
    assert warning.startswith("The screens kept no image of 7 in 2 draws")


@pytest.mark.slow
def test_a_classifier_filter_keeps_confident_images_and_records_their_confidence(vit_run, tmp_path):
    # A generator of the classifier's data (vit.py:smoke: imbalanced digits, HAM's class names);
    # the VAE, whose sampler is one decoder pass.
    generator = tmp_path / "vae"
    overrides = {"data.imbalance": True, "evals.samples.every_steps": -1}  # Its grid is unread.
    train.train_and_evaluate(load_config("vae.py:smoke", **overrides), generator)

    def sample(name, min_confidence):
        return synthesize.run(str(generator), num_per_class="3:df=6,6:vasc=6",
                              out_dir=str(tmp_path / name), filter_workdir=str(vit_run),
                              min_confidence=min_confidence, max_draws=3)  # fmt: skip

    def manifest(out):
        with open(out / "manifest.csv") as f:
            return list(csv.DictReader(f))

    everything = manifest(sample("all", 1e-9))
    assert len(everything) == 12
    # The recorded confidence is `classify`'s probability of the class it was made for.
    predictions = predict.run(str(vit_run), str(tmp_path / "all"), out_csv=str(tmp_path / "p.csv"))
    with open(predictions) as f:
        probs = {r["path"]: r for r in csv.DictReader(f)}
    for row in everything:
        want = float(probs[row["file"]][f"p_{row['class']}"])
        assert float(row["confidence"]) == pytest.approx(want, abs=2e-6)
    threshold = float(np.median([float(r["confidence"]) for r in everything]))
    out = sample("filtered", threshold)
    kept = manifest(out)
    assert kept and all(float(r["confidence"]) >= threshold for r in kept)
    summary = json.loads((out / synthesize.SCREENING).read_text())
    assert sum(c["kept"] for c in summary.values()) == len(kept)
    assert sum(c["drawn"] for c in summary.values()) > 12  # The dropped half was drawn again.
    for name, entry in summary.items():
        assert entry["acceptance"] == pytest.approx(entry["kept"] / entry["drawn"]), name
    with pytest.raises(ValueError, match="--filter_workdir and --min_confidence go together"):
        synthesize.run(str(generator), num_per_class=1, filter_workdir=str(vit_run))
