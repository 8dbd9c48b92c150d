"""Latent consistency models (seed 004) against known answers: LCM's boundary, its scalings, the CFG-augmented
DDIM target, the DDIM step in VP coordinates, LCM's timesteps and sampler; then a short distillation on the
2-D mixture that beats its teacher's DDIM and DPM-Solver++ at 4 steps, and the user paths."""

import math
import os

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.kinds import LCM
from fewstep.methods.lcm import LatentConsistencyDistillation
from fewstep.precond import LCMPrecond, VPPrecond, lcm_scalings
from fewstep.processes import VPDiscrete
from fewstep.runs import load_model
from fewstep.sampling import sample_lcm
from oracles import use_labelled_mixture
from test_user_paths import FMNIST, cli, needs_fmnist, ok, one_line_error, read_json

SD = VPDiscrete(1000, 0.00085, 0.012, "scaled-linear")


class Affine(torch.nn.Module):
    """A raw eps-network eps = a * c_in x + b c_noise + (class and w shifts), so every output is known."""

    def __init__(self, a=0.3, b=0.7):
        super().__init__()
        self.a, self.b, self.map_scalar = a, b, {"w": None}

    def forward(self, x, c_noise, class_labels=None, w=None):
        out = self.a * x + self.b * c_noise.reshape(-1, *[1] * (x.ndim - 1))
        if class_labels is not None:
            out = out + 0.1 * class_labels.reshape(-1, *[1] * (x.ndim - 1))
        return out if w is None else out + 0.05 * w.reshape(-1, *[1] * (x.ndim - 1))


def test_scalings_and_boundary():
    c_skip, c_out = lcm_scalings(torch.tensor([0.0, 1.0, 999.0], dtype=torch.float64))
    assert c_skip[0] == 1 and c_out[0] == 0
    torch.testing.assert_close(c_skip[1:], 0.25 / (torch.tensor([10.0, 9990.0], dtype=torch.float64) ** 2 + 0.25))
    f = LCMPrecond(Affine(), SD)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s1 = SD.ve_sigma(1)
    z = x / (1 + s1 ** 2).sqrt()                           # the VP sample at t = 0 (LCM's boundary): f(z, 0) = z
    torch.testing.assert_close(f(x, s1.expand(5)), z, rtol=1e-15, atol=0)     # c_out = 0: the network drops out


def test_parameterization_is_lcms_formula():
    """f = c_skip(t) z + c_out(t) (z - sigma_t eps_hat) / alpha_t at an interior timestep, in VP terms."""
    net, t = Affine(), 500
    f = LCMPrecond(net, SD)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = SD.alpha(t), SD.sigma(t)
    eps = net(z, torch.full((4,), t / 1000, dtype=torch.float64))
    c_skip, c_out = lcm_scalings(torch.tensor(t - 1.0, dtype=torch.float64))
    want = c_skip * z + c_out * (z - sigma * eps) / alpha
    torch.testing.assert_close(f(z / alpha, SD.ve_sigma(t).expand(4)), want, rtol=1e-9, atol=1e-9)


def test_ddim_step_matches_its_vp_closed_form():
    """The solver's step in VE coordinates is DDIM's z_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps (seed 002)."""
    D = VPPrecond(Affine(), SD)
    method = LatentConsistencyDistillation(D, k=20)
    t, s = 520, 500
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sig_t, sig_s = SD.ve_sigma(t).expand(6), SD.ve_sigma(s).expand(6)
    x0 = D(z / SD.alpha(t), sig_t)
    eps = (z - SD.alpha(t) * x0) / SD.sigma(t)
    want = SD.alpha(s) * x0 + SD.sigma(s) * eps
    got = method.solve(z / SD.alpha(t), sig_t, sig_s, torch.zeros(6, dtype=torch.float64), {})
    torch.testing.assert_close(SD.alpha(s) * got, want, rtol=1e-9, atol=1e-9)


def test_guided_target_is_the_cfg_augmented_step():
    """z_hat = z + (1 + w) Psi(z, c) - w Psi(z, null) (seed 004) with Psi DDIM's increment, per-sample w."""
    D = VPPrecond(Affine(), SD)
    D.net.num_classes = 10
    method = LatentConsistencyDistillation(D, k=20)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sig_t, sig_s = SD.ve_sigma(300).expand(4), SD.ve_sigma(280).expand(4)
    labels, w = torch.tensor([0, 3, 5, 9]), torch.tensor([0.0, 1.0, 2.5, 7.0], dtype=torch.float64)

    def psi(lab):
        d = (x - D(x, sig_t, class_labels=lab)) / sig_t[:, None]
        return (sig_s - sig_t)[:, None] * d
    want = x + (1 + w[:, None]) * psi(labels) - w[:, None] * psi(torch.full_like(labels, 10))
    got = method.solve(x, sig_t, sig_s, w, {"class_labels": labels})
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_timesteps_are_lcm_schedulers():
    assert SD.lcm_timesteps(20)[:3].tolist() == [1, 20, 40] and SD.lcm_timesteps(20)[-1] == 1000
    assert SD.lcm_timesteps(1).tolist() == list(range(1, 1001))
    # diffusers' LCMScheduler, 50 original steps: 0-based [999, 759, 499, 259] for 4 steps (ours are 1-based)
    assert SD.lcm_timesteps(20, 4).tolist() == [1000, 760, 500, 260]
    assert SD.lcm_timesteps(20, 1).tolist() == [1000]
    assert SD.lcm_timesteps(20, 50).tolist() == list(range(1000, 0, -20))
    with pytest.raises(ValueError, match="1 to 50 steps"):
        SD.lcm_timesteps(20, 51)
    with pytest.raises(ValueError, match="must divide"):
        SD.lcm_timesteps(30)


def test_sampler_is_lcms_loop():
    f = LCMPrecond(Affine(), SD)
    sigmas = SD.ve_sigma(SD.lcm_timesteps(20, 3))
    x_T = SD.prior((5, 2), sigmas[0], generator=torch.Generator().manual_seed(4)).double()
    g = torch.Generator().manual_seed(5)
    got = sample_lcm(f, x_T, sigmas, generator=torch.Generator().manual_seed(5))
    x0 = f(x_T, sigmas[0].expand(5))
    for s in sigmas[1:]:
        x0 = f(x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype), s.expand(5))
    torch.testing.assert_close(got, x0, rtol=0, atol=0)


def test_the_student_starts_as_its_teacher_and_takes_its_process(tmp_path):
    """The student loads the teacher's eps-network with its w-embedding at zero, and its process (T, betas)."""
    teacher = str(tmp_path / "teacher")
    ok(cli("train", "ddpm", "--steps", "3", "--set", "net.width=16", "--quiet", "--out", teacher))
    ok(cli("train", "lcm", "--teacher", teacher, "--steps", "1", "--set", "w_max=0", "--set", "k=50",
           "--set", "lr=1e-12", "--quiet", "--out", tmp_path / "lcm"))
    cfg = read_json(tmp_path / "lcm" / "config.json")
    assert cfg["method"]["options"]["beta_start"] == 1e-4 and cfg["method"]["options"]["schedule"] == "linear"
    T, _ = load_model(teacher)
    f, _ = load_model(str(tmp_path / "lcm"))
    assert f.kind is LCM
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(6))
    s = T.process.ve_sigma(400).float().expand(8)
    torch.testing.assert_close(f.net(x, s / 10, w=torch.full((8,), 2.0)), T.net(x, s / 10), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_lcm_beats_its_teacher_at_four_steps(tmp_path):
    """On the 2-D mixture: 4-step LCM samples are closer to the data than 4 DDIM or DPM-Solver++ steps of the
    teacher it was distilled from (seed 004's table: LCM leads in the 1-4 step region)."""
    toy = ["--set", "net.width=64", "--batch", "256", "--quiet"]
    sd = ["--set", "schedule=scaled-linear", "--set", "beta_start=0.00085", "--set", "beta_end=0.012"]
    ok(cli("train", "ddpm", *toy, *sd, "--steps", "800", "--out", tmp_path / "t"))
    ok(cli("train", "lcm", "--teacher", tmp_path / "t", *toy, "--set", "w_max=0", "--steps", "400",
           "--out", tmp_path / "l"))
    w2 = {}
    for name, run, sampler in (("lcm", "l", "lcm"), ("ddim", "t", "ddim"), ("dpmpp", "t", "dpmpp-2m")):
        ok(cli("sample", tmp_path / run, "--steps", "4", "--sampler", sampler, "--n", "1000", "--out", tmp_path / name))
        w2[name] = read_json(tmp_path / name / "metrics.json")[0]["sliced_w2"]
    assert w2["lcm"] < 0.8 * min(w2["ddim"], w2["dpmpp"]), w2


@needs_fmnist
@pytest.mark.slow
def test_fmnist_guided_lcm_user_path(tmp_path):
    """Class-conditional pixel run: a CFG teacher, LCM with w as an input, sample and eval with --guidance."""
    img = ["--data", "fashion-mnist", "--set", "data.pad_to=32", "--net", "unet", "--batch", "8", "--quiet",
           "--set", "cond=true"]
    ok(cli("train", "ddpm", *img, "--set", "label_dropout=0.1", "--steps", "2", "--out", tmp_path / "t"))
    ok(cli("train", "lcm", "--teacher", tmp_path / "t", *img, "--set", "solver=dpm2", "--steps", "2",
           "--out", tmp_path / "l"))
    ok(cli("sample", tmp_path / "l", "--steps", "1,2", "--n", "10", "--guidance", "2", "--out", tmp_path / "s"))
    assert [r["nfe"] for r in read_json(tmp_path / "s" / "metrics.json")] == [1, 2]
    ok(cli("eval", tmp_path / "l", "--steps", "4", "--n", "20", "--guidance", "1", "--out", tmp_path / "e", "--quiet"))
    row = read_json(tmp_path / "e" / "metrics.json")[0]
    assert row["nfe"] == 4 and math.isfinite(row["fd"])
    ok(cli("eval", tmp_path / "t", "--steps", "2", "--sampler", "dpm2", "--n", "20", "--guidance", "1",
           "--out", tmp_path / "e2", "--quiet"))
    assert read_json(tmp_path / "e2" / "metrics.json")[0]["nfe"] == 6          # (2 + 1) steps x 2 for CFG
    one_line_error(cli("sample", tmp_path / "l", "--steps", "1", "--guidance", "5", "--out", tmp_path / "x"),
                   "learned the guidance scale w in [0, 3]")
    # editing a pixel-space LCM (its w input at w_min) with LCM's sampler and projections
    ok(cli("edit", "inpaint", tmp_path / "l", "--from-data", "2", "--box", "7,7,21,21", "--samples", "1",
           "--label", "3", "--out", tmp_path / "ed"))
    assert os.path.isfile(tmp_path / "ed" / "metrics.json") or os.listdir(tmp_path / "ed")


def test_bad_lcm_options_are_one_line(tmp_path, monkeypatch):
    teacher = tmp_path / "t"
    ok(cli("train", "ddpm", "--steps", "2", "--set", "net.width=16", "--quiet", "--out", teacher))
    one_line_error(cli("train", "lcm", "--teacher", teacher, "--steps", "1", "--quiet", "--out", tmp_path / "a"),
                   "classifier-free-guided", "w_max=0")
    one_line_error(cli("train", "lcm", "--teacher", teacher, "--set", "k=7", "--set", "w_max=0", "--steps", "1",
                       "--quiet", "--out", tmp_path / "b"), "must divide")
    one_line_error(cli("train", "lcm", "--teacher", teacher, "--set", "w_max=0", "--set", "beta_end=0.03",
                       "--steps", "1", "--quiet", "--out", tmp_path / "c"), "teacher's process")
    assert not any(os.path.exists(tmp_path / n) for n in "abc")
    edm = tmp_path / "edm"
    ok(cli("train", "edm", "--steps", "2", "--set", "net.width=16", "--quiet", "--out", edm))
    one_line_error(cli("train", "lcm", "--teacher", edm, "--set", "w_max=0", "--steps", "1", "--quiet",
                       "--out", tmp_path / "d"), "ddpm")
    # guidance needs a teacher that learned the null label; LCM guides its teacher itself
    use_labelled_mixture(monkeypatch)
    labelled = ["--set", "net.width=16", "--quiet", "--set", "cond=true", "--data", "labelled"]
    ok(cli("train", "ddpm", "--steps", "2", *labelled, "--out", tmp_path / "c0"))
    one_line_error(cli("train", "lcm", "--teacher", tmp_path / "c0", *labelled, "--steps", "1", "--out", tmp_path / "e"),
                   "label_dropout=0", "w_max=0")
    one_line_error(cli("train", "lcm", "--teacher", tmp_path / "c0", *labelled, "--set", "teacher_guidance=2",
                       "--steps", "1", "--out", tmp_path / "f"), "guides its teacher itself")
    assert not any(os.path.exists(tmp_path / n) for n in "ef")


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    pytest.importorskip("peft", reason="LoRA adapters need peft (pip install 'fewstep[lora]')")
    """A VP teacher on the 2-D mixture, its LCM-LoRA and a style LoRA fine-tuned on re-weighted modes."""
    root = tmp_path_factory.mktemp("lora")
    toy = ["--set", "net.width=32", "--batch", "64", "--quiet"]
    ok(cli("train", "ddpm", *toy, "--steps", "20", "--out", root / "t"))
    ok(cli("train", "lcm-lora", "--teacher", root / "t", *toy, "--set", "w=0", "--set", "rank=2", "--lr", "1e-2",
           "--steps", "5", "--out", root / "acc"))
    ok(cli("train", "lora", "--teacher", root / "t", *toy, "--set", "data.weights=[9,1,1,1,1,1,1,1]", "--set", "rank=2",
           "--lr", "1e-2", "--steps", "5", "--out", root / "style"))
    return root


def test_lcm_lora_trains_the_adapter_only_and_saves_it_alone(lora_runs, tmp_path):
    from fewstep.checkpoint import load_checkpoint
    from fewstep.lora import read_adapter
    teacher = load_checkpoint(str(lora_runs / "t" / "checkpoint.safetensors"))[0]
    acc = load_checkpoint(str(lora_runs / "acc" / "checkpoint.safetensors"))[0]
    base = {k: v for k, v in acc.items() if k.startswith("net.") and ".lora_" not in k}
    teacher_ema = {k.replace("ema.", "net.", 1): v for k, v in teacher.items() if k.startswith("ema.")}
    assert base and all(torch.equal(v, teacher_ema[k.replace(".base_layer", "")]) for k, v in base.items())
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in acc.items() if k.startswith("net."))
    result = ok(cli("lora", "save", lora_runs / "acc", "--out", tmp_path / "acc.safetensors"))
    assert "trainable parameters" in result.stdout and "% of the" in result.stdout
    tensors, meta = read_adapter(tmp_path / "acc.safetensors")
    assert all(".lora_" in k for k in tensors) and meta["rank"] == 2 and meta["method"] == "lcm-lora"


def test_lora_apply_is_the_unmerged_combination(lora_runs, tmp_path):
    """The applied run's merged weights give the outputs of W + l1 tau_1 + l2 tau_2 computed unmerged."""
    from fewstep.lora import load_adapter, save_adapter, set_adapters
    ok(cli("lora", "apply", lora_runs / "acc", "--base", lora_runs / "t", "--style", lora_runs / "style",
           "--weights", "1,0.5", "--out", tmp_path / "combo"))
    merged, cfg = load_model(str(tmp_path / "combo"))
    assert merged.kind is LCM and read_json(tmp_path / "combo" / "lora.json")["weights"] == {"lcm": 1.0, "style": 0.5}
    model, _ = load_model(str(lora_runs / "acc"))
    style, _ = load_model(str(lora_runs / "style"))
    load_adapter(model.net, save_adapter(tmp_path / "s.safetensors", style.net, "style"), "style")
    set_adapters(model.net, {"lcm": 1.0, "style": 0.5})
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    sigma = model.process.ve_sigma(600).float().expand(64)
    torch.testing.assert_close(merged(x, sigma), model(x, sigma), rtol=1e-4, atol=1e-5)
    ok(cli("sample", tmp_path / "combo", "--steps", "1,4", "--n", "100", "--out", tmp_path / "s"))
    one_line_error(cli("lora", "apply", lora_runs / "t", "--base", lora_runs / "t", "--out", tmp_path / "x"),
                   "no LoRA adapter", "lcm-lora")
    one_line_error(cli("lora", "save", lora_runs / "t"), "no LoRA adapter")
    one_line_error(cli("lora", "apply", lora_runs / "acc", "--base", lora_runs / "style", "--out", tmp_path / "x"),
                   "adapter would be dropped")
    one_line_error(cli("lora", "apply", lora_runs / "acc", "--base", lora_runs / "t", "--weights", "1,x",
                       "--out", tmp_path / "x"), "--weights takes numbers")
    assert not os.path.exists(tmp_path / "x")
