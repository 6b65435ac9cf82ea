"""Every variant of every config in configs/ loads, and the recipes' documented relations hold."""

import re

import pytest
from conftest import REPO, load_config

from ham_synth.data import pipeline


def _variants(file: str) -> list[str]:
    """The variant words a config accepts, as its parse_arg error lists them."""
    with pytest.raises(ValueError, match="choose from") as error:
        load_config(f"{file}:no_such_variant")
    return re.findall(r"'(\w+)'", str(error.value).split("choose from")[1])


CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("file", CONFIGS)
def test_every_variant_loads(file):
    variants = _variants(file)
    assert "smoke" in variants
    for variant in variants:
        config = load_config(f"{file}:{variant}")
        # A recipe's augmentation and evaluation preprocessing parse and give the model one
        # size here (the trainer's own check raises on a typo or a mismatch), not after its
        # data is read. study.py's runs name their configs; it has no images of its own.
        if "augment" in config.get("data", {}):
            pipeline.check_augment_size(config.data)


def test_a_variant_value_is_yes_or_no_and_a_typo_is_refused():
    assert (
        load_config("vae.py:smoke,ham64=no").data.image_size
        == load_config("vae.py:smoke").data.image_size
    )
    assert load_config("vae.py:ham64=yes").data.image_size == 64
    with pytest.raises(ValueError, match=r"ham64='ture' .* use one of \['0', '1', 'false'"):
        load_config("vae.py:smoke,ham64=ture")  # Read as False before: a silent smoke run.


def test_the_derma28_study_trains_the_study_recipe_at_its_own_length():
    study = load_config("study.py:derma28")
    recipe = load_config("vit.py:derma28_study")
    assert study.classifier.config == "configs/vit.py:derma28_study"
    assert study.classifier.overrides.train.total_steps == recipe.train.total_steps
    assert study.classifier.overrides.optim.warmup_steps == recipe.optim.warmup_steps
