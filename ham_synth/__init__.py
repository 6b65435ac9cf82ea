"""ham_synth: class-conditional generators for dermoscopy, FID in JAX, and a ViT study of what
synthetic data is worth."""

from ham_synth import xla_cpu

xla_cpu.apply()  # Before any module of ours imports JAX.
