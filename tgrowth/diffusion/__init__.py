"""Guided diffusion: noise schedule, UNet, DDIM sampler, guidance callbacks (pure torch) and Lightning modules."""
