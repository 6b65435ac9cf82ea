"""ham_synth: class-conditional generators for dermoscopy, FID in JAX, and a ViT study of what
synthetic data is worth."""
