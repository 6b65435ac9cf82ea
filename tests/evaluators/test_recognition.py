"""The recognised share against counts by hand."""

import pytest

from ham_synth.evaluators import recognition


def test_recognised_share_per_class_balanced_and_against_the_ceiling():
    conditioned = ["df"] * 4 + ["vasc"] * 2
    predicted = ["df", "df", "df", "nv", "vasc", "akiec"]
    ceiling = {"akiec": 0.9, "df": 0.5, "nv": 0.95, "vasc": 1.0}
    result = recognition.recognised_share(conditioned, predicted, ceiling)
    assert result["per_class"] == {
        "df": {"share": 0.75, "ceiling": 0.5, "ratio": 1.5, "n": 4},
        "vasc": {"share": 0.5, "ceiling": 1.0, "ratio": 0.5, "n": 2},
    }
    # Means over the generated classes, not over images: 4/6 would weight df twice.
    assert result["balanced"] == pytest.approx(0.625)
    assert result["ceiling_balanced"] == pytest.approx(0.75)
    assert result["ratio_balanced"] == pytest.approx(0.625 / 0.75)
    assert result["chance"] == pytest.approx(0.25)
    rows = recognition.markdown_rows(result, prefix=["gan"])
    assert rows[0] == "| gan | df | 4 | 0.750 | 0.500 | 1.500 |"
    assert rows[-1] == "| gan | balanced (chance 0.250) | 6 | 0.625 | 0.750 | 0.833 |"
    assert len(recognition.markdown_header(["generator"])[1].split("---")) == 7


def test_a_class_without_real_test_images_has_no_ceiling():
    result = recognition.recognised_share(
        ["df", "mel"], ["df", "nv"], {"df": 0.5, "mel": None, "nv": 1.0}
    )
    assert result["per_class"]["mel"] == {"share": 0.0, "ceiling": None, "ratio": None, "n": 1}
    assert result["ceiling_balanced"] == pytest.approx(0.5)  # df's alone.
    # The ratio sets df's share (1.0) against df's ceiling (0.5); mel, with no ceiling, is on
    # neither side (the share over both classes, 0.5, would read 1.0).
    assert result["balanced"] == pytest.approx(0.5)
    assert result["ratio_balanced"] == pytest.approx(2.0)
    assert result["chance"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 conditioned classes for 1 labels"):
        recognition.recognised_share(["df", "df"], ["df"], {"df": 1.0})
