"""diffusers interoperability (fewstep.nets.diffusers, fewstep.export): one tiny random UNet2DModel, wrapped in
fewstep's preconditioning, sampled from the same noise by fewstep's sampler and by the diffusers scheduler's own
loop on the scheduler's own timesteps (its sigmas passed as fewstep's grid); both must agree to 1e-4 of the
samples' scale. Then the user paths: `fewstep train ddpm --net diffusers`, `fewstep export` into DDPMPipeline /
DDIMPipeline, a diffusers folder as `--teacher` of cd, and the cd run exported into ConsistencyModelPipeline.

Deterministic samplers are compared in float32 (as they run) and float64. Stochastic ones (DDPM, multistep
CM and LCM) run in float64: diffusers draws its noise in the model's dtype and fewstep in float64, and the same
generator gives the same normal numbers only in the same dtype."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed: pip install 'fewstep[diffusers]'")

from fewstep.errors import FewstepError                                                              # noqa: E402
from fewstep.nets.diffusers import DiffusersUNet                                                    # noqa: E402
from fewstep.precond import ConsistencyPrecond, LCMPrecond                                          # noqa: E402
from fewstep.processes import VE, VPDiscrete                                                        # noqa: E402
from fewstep.runs import load_model, load_teacher                                                   # noqa: E402
from fewstep.sampling import (sample_consistency, sample_ddim, sample_ddpm, sample_dpmpp_2m,        # noqa: E402
                              sample_euler, sample_lcm)
from test_user_paths import cli, ok, one_line_error, read_config                                    # noqa: E402

pytestmark = pytest.mark.slow
diffusers.utils.logging.set_verbosity_error()           # its casting notes on .to(float64) are not ours to fix

TOL = 1e-4              # max |fewstep - diffusers| / max |diffusers|
UNET = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"))
SD_BETAS = (1000, 0.00085, 0.012, "scaled-linear")      # LCMScheduler's defaults (Stable Diffusion's)
BOTH = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


CROSS = dict(UNET, _class_name="UNet2DConditionModel", cross_attention_dim=8, mid_block_type="UNetMidBlock2DCrossAttn",
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


def tiny(timesteps, dtype=torch.float64, config=UNET, **options):
    """The one random U-Net of these tests (or its cross-attention twin), with the given timestep convention."""
    torch.manual_seed(0)
    return DiffusersUNet(config=config, timesteps=timesteps, **options).eval().requires_grad_(False).to(dtype)


def noise(dtype):
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


def vp_levels(scheduler, timesteps):
    """The VE noise levels sqrt((1 - abar) / abar) of a DDPM-like scheduler's (0-based) timesteps."""
    abar = scheduler.alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()[timesteps.long()]


def diffusers_loop(scheduler, unet, x, seed=None, **inputs):
    """The scheduler's own loop, as its pipelines write it (inputs: the U-Net's other arguments)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t, **inputs).sample
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def assert_agree(ours, theirs, tol=TOL):
    err = ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()
    assert ours.shape == theirs.shape and err <= tol, f"fewstep and diffusers differ by {err:.3g} of the scale"
    return err

#----------------------------------------------------------------------------
# One model, two samplers, the same noise.


@BOTH
def test_ddim_scheduler_matches_sample_ddim(dtype):
    net = tiny("vp", dtype)
    scheduler = diffusers.DDIMScheduler(clip_sample=False)         # eta = 0; the last step to alpha_bar = 1
    scheduler.set_timesteps(10)
    sigmas = torch.cat([vp_levels(scheduler, scheduler.timesteps), torch.zeros(1, dtype=torch.float64)])
    ours = sample_ddim(VPDiscrete().denoiser(net), noise(dtype) * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(dtype)))


def test_ddpm_scheduler_matches_sample_ddpm():
    net = tiny("vp")
    scheduler = diffusers.DDPMScheduler(clip_sample=False)         # fixed_small variance: DDIM with eta = 1
    scheduler.set_timesteps(10)
    sigmas = torch.cat([vp_levels(scheduler, scheduler.timesteps), torch.zeros(1, dtype=torch.float64)])
    ours = sample_ddpm(VPDiscrete().denoiser(net), noise(torch.float64) * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                       generator=torch.Generator().manual_seed(5))
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(torch.float64), seed=5))


@BOTH
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpmsolver_scheduler_matches_sample_dpmpp_2m(dtype, lower_order_final):
    net = tiny("vp", dtype)
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                      lower_order_final=lower_order_final)
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas.double()                              # its own levels, ending in 0 (final_sigmas_type)
    ours = sample_dpmpp_2m(VPDiscrete().denoiser(net), noise(dtype) * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(dtype)))


@BOTH
def test_edm_euler_scheduler_matches_sample_euler(dtype):
    net = tiny("edm", dtype)
    scheduler = diffusers.EDMEulerScheduler(sigma_data=0.5)
    scheduler.set_timesteps(8)
    sigmas = scheduler.sigmas.double()
    ours = sample_euler(VE().denoiser(net, sigma_data=0.5), noise(dtype) * sigmas[0], sigmas)
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(dtype) * scheduler.sigmas[0]))


@pytest.mark.parametrize("steps,dtype", [(1, torch.float32), (1, torch.float64), (3, torch.float64)])
def test_consistency_scheduler_matches_sample_consistency(steps, dtype):
    net = tiny("cm", dtype)
    scheduler = diffusers.CMStochasticIterativeScheduler(clip_denoised=False)
    scheduler.set_timesteps(steps)
    taus = scheduler.sigmas[:-1].double()                           # its last entry is sigma_min, the boundary
    f = ConsistencyPrecond(net, scheduler.config.sigma_data, scheduler.config.sigma_min)
    ours = sample_consistency(f, noise(dtype) * taus[0], taus, sigma_min=scheduler.config.sigma_min,
                              generator=torch.Generator().manual_seed(5))
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(dtype) * scheduler.sigmas[0], seed=5))


@pytest.mark.parametrize("steps,dtype", [(1, torch.float32), (1, torch.float64), (4, torch.float64)])
def test_lcm_scheduler_matches_sample_lcm(steps, dtype):
    net = tiny("vp", dtype)
    scheduler = diffusers.LCMScheduler()                            # scaled-linear betas, skipping step k = 20
    scheduler.set_timesteps(steps)
    sigmas = vp_levels(scheduler, scheduler.timesteps)
    f = LCMPrecond(net, VPDiscrete(*SD_BETAS), scheduler.config.timestep_scaling)
    ours = sample_lcm(f, noise(dtype) * (1 + sigmas[0] ** 2).sqrt(), sigmas, generator=torch.Generator().manual_seed(5))
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(dtype), seed=5))


def test_lcm_with_guidance_scale_matches_the_lcm_pipelines_unet_call():
    """A UNet2DConditionModel with time_cond_proj_dim takes w as LatentConsistencyModelPipeline feeds it
    (timestep_cond = its guidance-scale embedding of w), the label token as encoder_hidden_states."""
    net = tiny("vp", config=CROSS, scalars=["w"])
    w = torch.full((3,), 2.5, dtype=torch.float64)
    scheduler = diffusers.LCMScheduler()
    scheduler.set_timesteps(4)
    sigmas = vp_levels(scheduler, scheduler.timesteps)
    f = LCMPrecond(net, VPDiscrete(*SD_BETAS), scheduler.config.timestep_scaling)
    ours = sample_lcm(f, noise(torch.float64) * (1 + sigmas[0] ** 2).sqrt(), sigmas, cond={"w": w},
                      generator=torch.Generator().manual_seed(5))
    embed = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding      # uses no pipeline state
    inputs = dict(timestep_cond=embed(None, w.float(), embedding_dim=256).double(),
                  encoder_hidden_states=net.tokens(torch.zeros(3, dtype=torch.long))[:, None])
    assert_agree(ours, diffusers_loop(scheduler, net.unet, noise(torch.float64), seed=5, **inputs))
    assert not torch.allclose(ours, sample_lcm(f, noise(torch.float64) * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                                               cond={"w": w * 0}, generator=torch.Generator().manual_seed(5)))

#----------------------------------------------------------------------------
# The backend on its own.


def test_unet_from_a_folder_and_its_conditioning(tmp_path):
    """from_pretrained of a save_pretrained folder (or a pipeline folder's unet/); labels through the class
    embedding with fewstep's null label; a UNet2DConditionModel gets one learned token per label."""
    tiny("vp").unet.save_pretrained(tmp_path / "unet")
    net = DiffusersUNet(path=tmp_path / "unet", timesteps="vp", img_resolution=8, in_channels=2)
    x = noise(torch.float32)
    assert net.img_shape == (2, 8, 8) and net.dim == 128 and net.num_classes == 0
    assert net(x.flatten(1), torch.full((3,), 0.5)).shape == (3, 128)
    assert torch.equal(net.timestep(torch.tensor(0.5), 3), torch.full((3,), 499.0))
    with pytest.raises(ValueError, match="8 px images but the data is 16 px"):
        DiffusersUNet(path=tmp_path / "unet", img_resolution=16)
    cond = DiffusersUNet(config=UNET, num_classes=3)
    assert cond.unet.config.num_class_embeds == 4 and cond.num_classes == 3
    labels = torch.tensor([0, 1, 2])
    assert not torch.allclose(cond(x, torch.zeros(3), labels), cond(x, torch.zeros(3)))       # None: null label 3
    text = DiffusersUNet(config=CROSS, num_classes=3)
    assert text.tokens.num_embeddings == 4 and text(x, torch.zeros(3), labels).shape == x.shape
    with pytest.raises(ValueError, match="exactly one of net.path"):
        DiffusersUNet()
    with pytest.raises(ValueError, match="UNet2DConditionModel with time_cond_proj_dim"):
        DiffusersUNet(config=UNET, scalars=["w"])


def test_edm_unet_folder_teaches(tmp_path):
    """A U-Net folder with an EDMEuler scheduler_config.json beside it is an EDM teacher: D = the scheduler's
    precondition_outputs of the U-Net at c_in x and c_noise."""
    net = tiny("edm", torch.float32)
    net.unet.save_pretrained(tmp_path)
    with pytest.raises(FewstepError, match="no scheduler config"):
        load_teacher(str(tmp_path))
    scheduler = diffusers.EDMEulerScheduler(sigma_data=0.5)
    scheduler.save_pretrained(tmp_path)
    teacher, cfg = load_teacher(str(tmp_path))
    assert cfg.method == "edm" and cfg.net == "diffusers" and teacher.kind.teacher
    x, sigma = noise(torch.float32) * 3.0, torch.tensor(3.0)
    theirs = scheduler.precondition_outputs(x, net.unet(scheduler.precondition_inputs(x, sigma),
                                                        scheduler.precondition_noise(sigma)).sample, sigma)
    assert_agree(teacher(x, sigma), theirs)
    diffusers.LCMScheduler().save_pretrained(tmp_path)
    with pytest.raises(FewstepError, match="consistency model"):
        load_teacher(str(tmp_path))

#----------------------------------------------------------------------------
# The command line: train, export, distill a diffusers folder, export again.

TINY = json.dumps(dict(UNET, in_channels=3, out_channels=3))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return ["--data", "folder", "--set", f"data.root={root}", "--set", "data.resolution=8", "--batch", "4",
            "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def ddpm_export(pictures, tmp_path_factory):
    """A 2-step ddpm run on the diffusers backend, and its export."""
    home = tmp_path_factory.mktemp("ddpm")
    run, out = home / "run", home / "pipeline"
    ok(cli("train", "ddpm", *pictures, "--net", "diffusers", "--set", f"net.config={TINY}", "--out", run))
    ok(cli("export", run, out))
    return run, out


def pipeline_noise(shape, seed=0):
    """The initial noise diffusers' unconditional pipelines draw (randn_tensor in the U-Net's float32)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def as_images(x):
    """fewstep's samples as the pipeline's output_type="np": (x / 2 + 0.5) clamped, channels last."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_ddpm_run_trains_and_exports_to_ddpm_and_ddim_pipelines(ddpm_export):
    run, out = ddpm_export
    cfg = read_config(run)
    assert cfg["net"] == "diffusers" and cfg["net_kwargs"]["config"]["block_out_channels"] == [8, 16]
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "unet"]
    ddpm = diffusers.DDPMPipeline.from_pretrained(out)
    assert ddpm.scheduler.config.clip_sample is False and ddpm.scheduler.config.num_train_timesteps == 1000
    images = ddpm(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    ddim = diffusers.DDIMPipeline.from_pretrained(out)              # the exported pipeline samples fewstep's model
    theirs = ddim(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    model, _ = load_model(run)
    sigmas = torch.cat([vp_levels(ddim.scheduler, ddim.scheduler.timesteps), torch.zeros(1, dtype=torch.float64)])
    with torch.no_grad():
        ours = sample_ddim(model, pipeline_noise((2, 3, 8, 8)) * float((1 + sigmas[0] ** 2).sqrt()), sigmas)
    assert np.abs(as_images(ours) - theirs).max() < TOL


def test_diffusers_folder_teaches_cd_and_the_cd_run_exports(ddpm_export, pictures, tmp_path):
    """--teacher a diffusers pipeline folder: the student takes a fresh U-Net of its architecture; the cd run
    exports to ConsistencyModelPipeline, whose one step is fewstep's f(x_T, T)."""
    _, teacher = ddpm_export
    run, out = tmp_path / "cd", tmp_path / "pipeline"
    ok(cli("train", "cd", "--teacher", teacher, *pictures, "--net", "diffusers", "--set", "N=4", "--out", run))
    cfg = read_config(run)
    assert cfg["net_kwargs"]["config"]["_class_name"] == "UNet2DModel" and cfg["teacher"] == str(teacher)
    ok(cli("export", run, out))
    pipe = diffusers.ConsistencyModelPipeline.from_pretrained(out)
    assert (pipe.scheduler.config.sigma_max, pipe.scheduler.config.num_train_timesteps) == (80.0, 4)
    theirs = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    model, cfg = load_model(run)
    with torch.no_grad():
        ours = sample_consistency(model, pipeline_noise((2, 3, 8, 8)) * cfg.sigma_max, [cfg.sigma_max])
    assert np.abs(as_images(ours) - theirs).max() < TOL
    two = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert two.shape == (2, 8, 8, 3) and np.isfinite(two).all()


def test_export_refuses_what_diffusers_cannot_load(ddpm_export, tmp_path):
    run, out = ddpm_export
    one_line_error(cli("export", run, out), "already exists; pass --overwrite")
    toy = tmp_path / "toy"
    ok(cli("train", "edm", "--set", "net.width=8", "--set", "net.depth=1", "--batch", "8", "--steps", "1",
           "--quiet", "--out", toy))
    one_line_error(cli("export", toy, tmp_path / "out"), "fewstep's own 'mlp' network", "--net diffusers")
    assert not os.path.exists(tmp_path / "out")                       # a refused export writes nothing
