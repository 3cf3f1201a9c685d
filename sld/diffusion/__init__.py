"""Stage 3 of SLD: diffusion over segment latents.

``objective`` (the losses), ``sampling`` (diffusers schedulers, guidance), ``data`` (documents as
latent blocks and their cache), ``validation`` (loss at fixed noise, scored samples) and
``trainer`` (``train_diffusion``: the whole stage-3 run).
"""
