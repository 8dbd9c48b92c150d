"""Latent space (seed 004's latent consistency models train there): the KL autoencoder and its "vae" method,
the "latents" dataset with its cache, and decoding for `fewstep sample` / `eval`. One tiny autoencoder is
trained once for the module (250 steps, 8/16/16 channels, about 12 s on one thread); the command line runs in
this process through `fewstep.cli.main`; diffusers' AutoencoderKL and AutoencoderTiny are built tiny and random."""

import json
import os
import shutil

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.data import make_dataset
from fewstep.data import latent as latent_module
from fewstep.data.images import FashionMNIST
from fewstep.errors import FewstepError
from fewstep.methods.autoencoder import AutoencoderLoss, kl_divergence
from fewstep.nets.autoencoder import Autoencoder
from fewstep.runs import load_decoder, load_model
from fewstep.train import train
from test_user_paths import FMNIST, cli, needs_fmnist, ok, one_line_error, read_json

AE_NET = {"channels": [8, 16, 16]}
AE = TrainConfig(method="vae", net="autoencoder", data="fashion-mnist", data_kwargs={"pad_to": 32}, net_kwargs=AE_NET,
                 steps=250, batch=32, lr=2e-3, log_every=250, ckpt_every=250)
LIMIT = ["--set", "data.limit=256"]                 # encode 256 images, not 60000
LATENT_RUN = ["--net", "unet", "--data", "latents", *LIMIT, "--batch", "8", "--steps", "2", "--quiet"]
VARIANTS = {"unconditional": [], "conditional": ["--set", "cond=true", "--set", "label_dropout=0.1"]}


def test_kl_term_is_its_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    q, p = torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    assert kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0          # the prior itself


def test_autoencoder_shapes_and_loss_options():
    net = Autoencoder(img_resolution=32, in_channels=3, channels=(8, 8, 8))
    assert net.img_shape == (3, 32, 32) and net.latent_shape == (4, 8, 8)
    mean, logvar = net.encode(torch.randn(2, 3, 32, 32))
    assert mean.shape == (2, 4, 8, 8) and net.decode(mean).shape == (2, 3, 32, 32)
    assert net.encode(torch.full((1, 3, 32, 32), 1e6))[1].max() <= 20                  # logvar clamped
    g = torch.Generator().manual_seed(0)
    assert torch.isfinite(AutoencoderLoss("l2", kl_weight=1.0)(net, torch.randn(2, 3, 32, 32), generator=g))
    with pytest.raises(ValueError, match="l1, l2"):
        AutoencoderLoss("l3")
    with pytest.raises(ValueError, match="must be divisible|not divisible"):
        Autoencoder(img_resolution=30)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    if not os.path.isdir(FMNIST):
        pytest.skip("needs dataset-fashion-mnist (make data)")
    run = str(tmp_path_factory.mktemp("latent") / "AE")
    train(AE, run, progress=False)
    return run


def reconstruction_error(net, images):
    x = images.float() / 127.5 - 1
    with torch.no_grad():
        return (net.decode(net.encode(x)[0]) - x).abs().mean().item()


@needs_fmnist
def test_vae_training_lowers_the_reconstruction_error(ae_run):
    images = FashionMNIST("test", pad_to=32).images[:256]
    torch.manual_seed(0)
    before = reconstruction_error(Autoencoder(**AE_NET), images)
    net, cfg = load_model(ae_run)
    after = reconstruction_error(net, images)
    assert cfg.method == "vae" and after < before / 4 and after < 0.15, (before, after)


@needs_fmnist
def test_latents_are_cached_once_scaled_to_unit_std_and_decode_to_their_images(ae_run, monkeypatch):
    data = make_dataset("latents", autoencoder=ae_run, limit=256)
    files = os.listdir(os.path.join(ae_run, "latents"))
    assert len(files) == 1 and files[0].startswith("fashion-mnist-train-")
    assert data.shape == (4, 8, 8) and data.image_shape == (1, 32, 32) and data.num_classes == 10
    assert abs(data.latents.std().item() - 1) < 1e-4
    batch = data.sample(16, torch.Generator().manual_seed(0))
    assert batch["x"].shape == (16, 4, 8, 8) and batch["class_labels"].shape == (16,)
    images = FashionMNIST("train", pad_to=32).images[:64].float() / 127.5 - 1       # the vae run's own data options
    assert (data.decode(data.latents[:64]) - images).abs().mean() < 0.15
    monkeypatch.setattr(latent_module, "encode_images", lambda *a, **k: pytest.fail("encoded again"))
    again = make_dataset("latents", autoencoder=ae_run, limit=256)
    assert torch.equal(again.latents, data.latents) and again.scale == data.scale
    # a class subset (a style fine-tune's data) is cut from the same cache, with the whole source's scale
    shoes = make_dataset("latents", autoencoder=ae_run, limit=256, classes=[5, 7, 9])
    keep = torch.isin(data.labels, torch.tensor([5, 7, 9]))
    assert torch.equal(shoes.latents, data.latents[keep]) and shoes.scale == data.scale and shoes.num_classes == 10
    assert set(shoes.sample(64, torch.Generator().manual_seed(0))["class_labels"].tolist()) <= {5, 7, 9}


@needs_fmnist
def test_the_cache_follows_the_autoencoder_weights(ae_run, tmp_path, monkeypatch):
    copy = str(tmp_path / "AE")
    shutil.copytree(ae_run, copy, ignore=shutil.ignore_patterns("latents"))
    first = make_dataset("latents", autoencoder=copy, limit=64)
    train(TrainConfig(**{**AE.flat(), "steps": AE.steps + 1}), copy, resume=True, progress=False)
    calls = []
    encode = latent_module.encode_images
    monkeypatch.setattr(latent_module, "encode_images", lambda *a, **k: calls.append(1) or encode(*a, **k))
    second = make_dataset("latents", autoencoder=copy, limit=64)
    assert calls and len([f for f in os.listdir(os.path.join(copy, "latents")) if f.endswith(".safetensors")]) == 2
    assert not torch.equal(first.latents, second.latents)


@needs_fmnist
def test_an_unwritable_cache_keeps_the_latents_in_memory(ae_run, monkeypatch, capsys):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(latent_module, "save_checkpoint", refuse)
    data = make_dataset("latents", autoencoder=ae_run, limit=32)
    assert len(data) == 32 and "using them from memory" in capsys.readouterr().err


@pytest.fixture
def fast_reference(monkeypatch):
    """fewstep eval against 1000 test images instead of 10000 (the decoding is what is tested here)."""
    import fewstep.evaluate as evaluate
    full = evaluate.reference_features
    monkeypatch.setattr(evaluate, "reference_features", lambda net, n=10000: full(net, 1000))


@needs_fmnist
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_diffusion_run_on_latents_samples_and_evaluates_decoded_images(variant, ae_run, tmp_path, fast_reference):
    run = tmp_path / "latent-ddpm"
    ae = os.path.relpath(ae_run)                        # written into config.json as an absolute path
    ok(cli("train", "ddpm", *LATENT_RUN, "--set", f"data.autoencoder={ae}", *VARIANTS[variant], "--out", run))
    assert read_json(run / "config.json")["data"]["options"]["autoencoder"] == ae_run
    model, cfg = load_model(run)
    assert model.net.img_shape == (4, 8, 8) and load_decoder(cfg) is not None
    ok(cli("sample", run, "--steps", "2", "--n", "12", "--out", tmp_path / "s"))
    x = torch.load(tmp_path / "s" / "steps2.pt")
    assert x.shape == (12, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    ok(cli("eval", run, "--steps", "2", "--n", "50", "--out", tmp_path / "e", "--quiet"))
    row = json.load(open(tmp_path / "e" / "metrics.json"))[0]
    assert row["nfe"] == 2 and row["fd"] > 0 and os.path.isfile(tmp_path / "e" / "samples_2steps.png")
    if variant == "conditional":
        one_line_error(cli("edit", "inpaint", run, "--from-data", "2", "--box", "0,0,4,4"), "trained on latents")


@needs_fmnist
def test_a_vae_run_is_refused_where_a_generator_is_needed(ae_run, tmp_path):
    for command in (["sample", ae_run], ["eval", ae_run, "--n", "10"]):
        one_line_error(cli(*command, "--out", tmp_path / command[0]), "not a generator", "--data latents")
    one_line_error(cli("train", "vae", "--net", "unet", "--data", "fashion-mnist", "--out", tmp_path / "x"),
                   "--net autoencoder")
    one_line_error(cli("train", "vae", "--net", "autoencoder", "--data", "fashion-mnist", "--set", "cond=true",
                       "--out", tmp_path / "x"), "unconditionally")
    assert not any(os.path.exists(tmp_path / name) for name in ("sample", "eval", "x"))   # nothing written
    assert not os.path.exists(os.path.join(ae_run, "samples")) and not os.path.exists(os.path.join(ae_run, "eval"))


@needs_fmnist
def test_bad_autoencoders_are_one_line(ae_run, tmp_path):
    def train_on(autoencoder, *extra):
        return cli("train", "ddpm", *LATENT_RUN, "--set", f"data.autoencoder={autoencoder}", *extra, "--out",
                   tmp_path / "run")
    one_line_error(train_on(tmp_path / "missing"), "not found", "fewstep train vae")
    one_line_error(cli("train", "ddpm", *LATENT_RUN, "--out", tmp_path / "run"), "data.autoencoder")
    ok(cli("train", "edm", "--steps", "1", "--batch", "8", "--quiet", "--out", tmp_path / "edm"))
    one_line_error(train_on(tmp_path / "edm"), "'edm' run, not an autoencoder", "fewstep train vae")
    one_line_error(train_on(ae_run, "--set", "data.source_options={}"), "trained on 1x32x32", "pad_to")
    one_line_error(train_on(ae_run, "--set", "data.source=moons"), "image dataset")
    one_line_error(train_on(ae_run, "--set", "data.limit=0"), "data.limit")
    one_line_error(train_on(ae_run, "--set", "data.classes=[3,10]"), "data.classes", "0..9")
    os.makedirs(tmp_path / "unet")
    with open(tmp_path / "unet" / "config.json", "w") as f:
        json.dump({"_class_name": "UNet2DModel"}, f)
    one_line_error(train_on(tmp_path / "unet"), "UNet2DModel", "AutoencoderKL")
    assert not os.path.exists(tmp_path / "run")


def test_a_diffusers_folder_without_diffusers_says_how_to_install_it(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "vae")
    with open(tmp_path / "vae" / "config.json", "w") as f:
        json.dump({"_class_name": "AutoencoderKL"}, f)
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)          # import diffusers fails
    with pytest.raises(FewstepError, match=r"pip install 'fewstep\[diffusers\]'"):
        make_dataset("latents", autoencoder=str(tmp_path / "vae"))


@pytest.fixture(scope="module")
def diffusers_autoencoders(tmp_path_factory):
    """A tiny random AutoencoderKL (gray, 2 levels) and AutoencoderTiny (RGB), saved with save_pretrained."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers autoencoders need pip install 'fewstep[diffusers]'")
    root = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                            latent_channels=4, norm_num_groups=4).save_pretrained(root / "kl")
    diffusers.AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8),
                              decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
                              latent_channels=4).save_pretrained(root / "tiny")
    return {"kl": str(root / "kl"), "tiny": str(root / "tiny")}


@needs_fmnist
@pytest.mark.parametrize("name, scale", [("kl", 0.18215), ("tiny", 1.0)])
def test_a_diffusers_autoencoder_encodes_a_latent_dataset(name, scale, diffusers_autoencoders):
    folder = diffusers_autoencoders[name]
    data = make_dataset("latents", autoencoder=folder, limit=64)
    assert data.scale == scale and data.shift == 0 and data.image_shape == (1, 28, 28)
    assert data.shape == (4, 14, 14) and len(os.listdir(os.path.join(folder, "latents"))) == 1
    assert data.decode(data.latents[:3]).shape == (3, 1, 28, 28)                # RGB decoded back to gray


@needs_fmnist
def test_a_run_on_diffusers_latents_samples_decoded_images(diffusers_autoencoders, tmp_path):
    run = tmp_path / "run"
    ok(cli("train", "edm", *LATENT_RUN, "--set", f"data.autoencoder={diffusers_autoencoders['kl']}",
           "--set", "data.source_options={\"pad_to\": 32}", "--set", "sigma_data=1.0", "--out", run))
    ok(cli("sample", run, "--steps", "2", "--n", "4", "--out", tmp_path / "s"))
    assert torch.load(tmp_path / "s" / "steps2.pt").shape == (4, 1, 32, 32)


@needs_fmnist
@pytest.mark.slow
def test_the_readme_lcm_commands_on_latents(ae_run, tmp_path, fast_reference):
    """README's LCM block on latents: an SD-like guided teacher, LCM with w as an input, the teacher's
    DPM-Solver++, eval with class match, LCM-LoRA, a style LoRA on a class subset and lora apply. (Unconditional
    LCM runs through test_lcm.py on the 2-D mixture; unconditional latents through the ddpm test above.)"""
    data = [*LATENT_RUN, "--set", f"data.autoencoder={ae_run}", *VARIANTS["conditional"]]
    sd = ["--set", "schedule=scaled-linear", "--set", "beta_start=0.00085", "--set", "beta_end=0.012"]
    ok(cli("train", "ddpm", *data, *sd, "--out", tmp_path / "ldm"))
    ok(cli("train", "lcm", "--teacher", tmp_path / "ldm", *data, "--set", "k=20", "--set", "w_max=2",
           "--out", tmp_path / "lcm"))
    guidance = ["--guidance", "1.0"]
    ok(cli("sample", tmp_path / "lcm", "--steps", "1,2", "--n", "6", *guidance, "--out", tmp_path / "s"))
    assert [r["nfe"] for r in read_json(tmp_path / "s" / "metrics.json")] == [1, 2]       # w is an input: 1 a step
    assert torch.load(tmp_path / "s" / "steps2.pt").shape == (6, 1, 32, 32)               # decoded
    ok(cli("sample", tmp_path / "ldm", "--steps", "2", "--sampler", "dpmpp-2m", "--n", "6", *guidance,
           "--out", tmp_path / "t"))
    assert read_json(tmp_path / "t" / "metrics.json")[0]["nfe"] == 4              # guided: 2 a step
    ok(cli("eval", tmp_path / "lcm", "--steps", "1", "--n", "20", *guidance, "--out", tmp_path / "e", "--quiet"))
    row = read_json(tmp_path / "e" / "metrics.json")[0]
    assert row["nfe"] == 1 and row["fd"] > 0 and 0 <= row["class_match"] <= 1
    pytest.importorskip("peft", reason="LoRA adapters need peft (pip install 'fewstep[lora]')")
    ok(cli("train", "lcm-lora", "--teacher", tmp_path / "ldm", *data, "--set", "w=1.0", "--set", "rank=2",
           "--out", tmp_path / "lcm-lora"))
    saved = ok(cli("lora", "save", tmp_path / "lcm-lora"))
    assert "trainable parameters" in saved.stdout and os.path.isfile(tmp_path / "lcm-lora" / "adapter.safetensors")
    ok(cli("train", "lora", "--teacher", tmp_path / "ldm", *data, "--set", "data.classes=[5,7,9]", "--set", "rank=2",
           "--out", tmp_path / "style"))
    ok(cli("lora", "apply", tmp_path / "lcm-lora", "--base", tmp_path / "ldm", "--style", tmp_path / "style",
           "--weights", "1,1", "--out", tmp_path / "fast"))
    ok(cli("sample", tmp_path / "fast", "--steps", "4", "--n", "6", "--out", tmp_path / "f"))
    x = torch.load(tmp_path / "f" / "steps4.pt")
    assert x.shape == (6, 1, 32, 32) and torch.isfinite(x).all()
