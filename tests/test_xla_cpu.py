"""The project's XLA:CPU default: convolutions leave YNNPACK, reductions stay on it."""

import functools
import importlib.metadata
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from ham_synth import xla_cpu

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU only")

SET = f"{xla_cpu.FLAG}={xla_cpu.VALUE}"
measured_jaxlib_only = pytest.mark.skipif(
    not importlib.metadata.version("jaxlib").startswith(xla_cpu.MEASURED_ON),
    reason="the default is set on measured jaxlibs only",
)


def test_the_flag_is_added_on_measured_jaxlibs_only_and_never_over_the_users():
    assert xla_cpu.default_flags("0.10.2", "") == SET
    assert xla_cpu.default_flags("0.10.2", "--xla_force_host_platform_device_count=8") == (
        f"--xla_force_host_platform_device_count=8 {SET}"
    )
    assert xla_cpu.default_flags("0.11.0", "--a") == "--a"  # Unknown flags abort XLA.
    mine = f"{xla_cpu.FLAG}="
    assert xla_cpu.default_flags("0.10.2", mine) == mine
    assert xla_cpu.default_flags("0.10.2", "--a", opt_out="0") == "--a"


def _conv_weight_grad_hlo() -> str:
    """The compiled weight gradient of a 3x3 conv (x and the output's cotangent as arguments)."""
    x = jnp.ones((4, 16, 16, 32))  # Smaller convs stay on XLA's own path either way.
    w = jnp.ones((3, 3, 32, 32))

    def weight_grad(x, g):
        conv = functools.partial(
            lax.conv_general_dilated,
            x,
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.vjp(conv, w)[1](g)[0]

    return jax.jit(weight_grad).lower(x, x).compile().as_text()


def _column_sum_hlo() -> str:
    return (
        jax.jit(lambda x: jnp.sum(x, axis=(0, 1, 2)))
        .lower(jnp.ones((4, 16, 16, 32)))
        .compile()
        .as_text()
    )


@measured_jaxlib_only
def test_this_process_compiles_convolutions_without_ynnpack_and_reductions_with_it():
    assert SET in os.environ["XLA_FLAGS"]
    assert "ynn_fusion" not in _conv_weight_grad_hlo()
    assert "ynn_fusion" in _column_sum_hlo()


@measured_jaxlib_only
def test_without_the_default_xla_puts_the_convolution_in_ynnpack():
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_xla_cpu as t; "
        "print('ynn_fusion' in t._conv_weight_grad_hlo())"
    )
    env = dict(os.environ, XLA_FLAGS="", **{xla_cpu.OPT_OUT: "0"})
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.stdout.strip() == "True"
