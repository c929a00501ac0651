"""The example workflows' paper settings sample on the official notebooks' noise schedules.

The notebooks use diffusers 0.23: stage 2 `EulerDiscreteScheduler.from_config(<SD1.5's scheduler
config>)`, stage 1 `DDIMScheduler(..., steps_offset=1)`. ComfyUI names a sampler and a scheduler
instead; here the host's own `calculate_sigmas` is compared with the real diffusers schedulers
(diffusers is a test requirement), and the choice in cli/workflows.py must be the closest one.
"""
import math

import pytest
import torch

from cli import workflows

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (written by diffusers 0.6: no
# timestep_spacing key, so EulerDiscreteScheduler.from_config keeps its own default, "linspace")
SD15_SCHEDULER_FILE = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                       "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                       "trained_betas": None, "clip_sample": False}
STAGE1_DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # test_demo_stage1.ipynb


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers (requirements-test.txt) not installed")


@pytest.fixture(scope="module")
def sd15_sampling(comfy):
    import comfy.model_sampling
    import comfy.supported_models
    config = comfy.supported_models.SD15({})
    return comfy.model_sampling.ModelSamplingDiscrete(config)


def comfy_sigmas(sampling, scheduler, steps):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(sampling, scheduler, steps).double()


def rel_err(a, b):
    a, b = a[:-1], b[:-1]  # both end at sigma 0
    return float(((a - b).abs() / b).max())


def test_stage2_euler_is_comfyui_euler_normal(diffusers, sd15_sampling):
    pndm = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER_FILE)
    euler = diffusers.EulerDiscreteScheduler.from_config(pndm.config)
    assert euler.config.timestep_spacing == "linspace"  # not PNDM's "leading": diffusers keeps its own default
    steps = workflows.PAPER_STAGE2["steps"]
    euler.set_timesteps(steps)
    ref = euler.sigmas.double()
    assert len(ref) == steps + 1 and float(ref[-1]) == 0.0
    errors = {name: rel_err(comfy_sigmas(sd15_sampling, name, steps), ref)
              for name in ("normal", "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform")
              if len(comfy_sigmas(sd15_sampling, name, steps)) == len(ref)}
    chosen = workflows.PAPER_STAGE2["scheduler"]
    assert workflows.PAPER_STAGE2["sampler_name"] == "euler"  # k-diffusion Euler = diffusers' Euler step
    assert min(errors, key=errors.get) == chosen, errors
    # same timesteps (999 -> 0, evenly spaced); diffusers interpolates sigma, ComfyUI log sigma
    # between integer timesteps: 3e-5 apart at most (the next best, karras, is 79 % off)
    assert errors[chosen] < 1e-4, errors
    assert workflows.PAPER_STAGE2["cfg"] == 7.5


def test_stage1_ddim_is_comfyui_ddim_ddim_uniform(diffusers, sd15_sampling):
    ddim = diffusers.DDIMScheduler(**STAGE1_DDIM)
    steps = workflows.PAPER_STAGE1["steps"]
    ddim.set_timesteps(steps)
    t = ddim.timesteps.long()
    assert t[0] == 981 and t[-1] == 1  # "leading" spacing, steps_offset 1
    alphas = ddim.alphas_cumprod.double()
    ref = ((1 - alphas[t]) / alphas[t]).sqrt()
    assert workflows.PAPER_STAGE1["sampler_name"] == "ddim" and workflows.PAPER_STAGE1["scheduler"] == "ddim_uniform"
    got = comfy_sigmas(sd15_sampling, workflows.PAPER_STAGE1["scheduler"], steps)
    assert len(got) == steps + 1
    torch.testing.assert_close(got[:-1], ref, rtol=1e-4, atol=0)
    # the last DDIM step lands on alphas_cumprod[0] (set_alpha_to_one=False): sigma 0.029, where
    # ComfyUI ends at 0 (the residual noise is below one 8-bit level after decoding)
    assert float(got[-1]) == 0.0 and math.isclose(float(((1 - alphas[0]) / alphas[0]).sqrt()), 0.0292, abs_tol=1e-3)
    assert workflows.PAPER_STAGE1["cfg"] == 7.5


def test_comfyui_ddim_sampler_is_eta0_ddim():
    """ComfyUI's "ddim" sampler is Euler on those sigmas: in k-diffusion's x/sqrt(alpha) space a
    deterministic DDIM step x0 + sigma_next * eps equals the Euler step x + (sigma_next - sigma) * eps."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    alpha, alpha_next = 0.3, 0.6
    sigma, sigma_next = math.sqrt((1 - alpha) / alpha), math.sqrt((1 - alpha_next) / alpha_next)
    x_t = math.sqrt(alpha) * x0 + math.sqrt(1 - alpha) * eps                        # DDPM space
    ddim_next = math.sqrt(alpha_next) * x0 + math.sqrt(1 - alpha_next) * eps        # eta = 0
    x = x_t / math.sqrt(alpha)                                                      # k-diffusion space
    euler_next = x + (sigma_next - sigma) * (x - x0) / sigma
    torch.testing.assert_close(euler_next * math.sqrt(alpha_next), ddim_next)
