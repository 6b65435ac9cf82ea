"""The project's XLA:CPU default, set in XLA_FLAGS before JAX starts its backend.

jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK by default. YNNPACK is fast for
reductions, but slow for a convolution's weight gradient (3.5x slower than XLA's Eigen path for a
3x3 conv, 64 channels, 32x32, batch 32). Taking convolutions, and nothing else, away from YNNPACK
made the DDPM train step 1.9x faster and Inception features 2x faster on 2 cores
(docs/benchmarks.md, "What was found on XLA:CPU"). Unknown XLA flags abort the process, so the
flag is set only on the jaxlib minor versions where it was measured.

The entry points call `apply()` first (main.run, the tools, the tests' conftest); importing
ham_synth as a library leaves XLA_FLAGS alone.
"""

import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"
MEASURED_ON = ("0.10.",)  # jaxlib version prefixes whose XLA knows FLAG and was measured.
OPT_OUT = "HAM_SYNTH_XLA_CPU_DEFAULTS"  # Set to 0 to leave XLA_FLAGS as it is.


def default_flags(jaxlib_version: str, xla_flags: str, opt_out: str = "") -> str:
    """XLA_FLAGS with FLAG=VALUE appended, or unchanged: on another jaxlib, when the user's
    XLA_FLAGS already sets FLAG, or when opted out."""
    if opt_out == "0" or FLAG in xla_flags or not jaxlib_version.startswith(MEASURED_ON):
        return xla_flags
    return f"{xla_flags} {FLAG}={VALUE}".strip()


def apply(environ=os.environ) -> None:
    """Sets the default in `environ`. It takes effect only if JAX's CPU backend has not started."""
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    flags = default_flags(version, environ.get("XLA_FLAGS", ""), environ.get(OPT_OUT, ""))
    if flags:
        environ["XLA_FLAGS"] = flags
