"""ham_synth: class-conditional generators for dermoscopy, FID in JAX, and a ViT study of what
synthetic data is worth.

Importing it changes nothing in the process: the XLA:CPU default (xla_cpu.py) is applied by the
entry points, `ham-synth` and the tools, before JAX starts its backend."""
