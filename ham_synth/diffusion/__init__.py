"""Gaussian diffusion: noise schedules and the forward process (schedule.py), and samplers
(samplers.py) that run a trained denoiser backwards."""
