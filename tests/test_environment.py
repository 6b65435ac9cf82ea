"""environment.describe: what a run records about where it ran."""

import os

import jax

from ham_synth import environment
from ham_synth.models import layers


def test_the_record_names_the_backend_and_the_ham_synth_switches_set(monkeypatch):
    for name in [k for k in os.environ if k.startswith("HAM_SYNTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(layers.CUDNN_OPT_OUT, "0")
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", "/tmp/cache")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    record = environment.describe()
    assert record["backend"] == jax.default_backend()
    assert record["global_devices"] == jax.device_count()
    assert record["settings"] == {"HAM_SYNTH_CACHE_DIR": "/tmp/cache", layers.CUDNN_OPT_OUT: "0"}
    assert record["packages"]["jax"] == jax.__version__
