"""Model registry: `get_model(name, **kwargs)`. Models are architecture only; losses live in
tasks/."""

from ham_synth.models import gan_nets, unet, vae_nets, vit

_MODELS = {
    "discriminator": gan_nets.Discriminator,
    "generator": gan_nets.Generator,
    "unet": unet.UNet,
    "vae": vae_nets.VAE,
    "vit": vit.ViT,
}


def get_model(name: str, **kwargs):
    if name not in _MODELS:
        raise KeyError(f"Unknown model {name!r}; choose one of {sorted(_MODELS)}.")
    return _MODELS[name](**kwargs)
