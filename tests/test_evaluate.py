"""fewstep eval on a tiny image run: outputs exist and the numbers are sane; errors are one line."""

import json
import os

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.errors import FewstepError
from fewstep.data.images import FashionMNIST
from fewstep.evaluate import class_match, crop_to, evaluate
from fewstep.metrics.fd import extract_features
from fewstep.metrics.features import FMNIST_CLASSIFIER, load_feature_net
from fewstep.train import train
from oracles import use_labelled_mixture

HAVE_FMNIST = os.path.isdir("/usr/share/datasets/fashion-mnist")


def test_shipped_feature_net_loads_and_is_small():
    net = load_feature_net()
    assert os.path.getsize(FMNIST_CLASSIFIER) < 2 * 2 ** 20
    assert net.features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)
    with pytest.raises(FewstepError, match="train-classifier"):
        load_feature_net("/nonexistent.safetensors")


def test_crop_to_undoes_padding():
    x = torch.arange(32 * 32.).reshape(1, 1, 32, 32)
    assert torch.equal(crop_to(x, 28), x[..., 2:30, 2:30]) and crop_to(x[..., 2:30, 2:30], 28).shape[-1] == 28


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs dataset-fashion-mnist")
@pytest.mark.slow
def test_eval_writes_the_table_grids_and_plot(tmp_path):
    run = str(tmp_path / "cd")
    base = dict(data="fashion-mnist", net="unet", net_kwargs={"config": "cpu-tiny"}, batch=8, steps=2)
    train(TrainConfig(method="ct", cond=True, label_dropout=0.1, **base), run, progress=False)
    rows = evaluate(run, [1, 2], n=40, guidance=1.0, progress=False)
    assert [r["nfe"] for r in rows] == [2, 4]                       # classifier-free guidance: 2 calls a step
    assert all(r["fd"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
    assert all(0 <= r["class_match"] <= 1 for r in rows)
    first = os.path.join(run, "eval", "000")
    for name in ("metrics.json", "metrics.md", "fd_vs_nfe.png", "samples_1steps.png", "samples_2steps.png"):
        assert os.path.getsize(os.path.join(first, name)) > 0
    assert json.load(open(os.path.join(first, "metrics.json")))[1]["steps"] == 2
    # a second evaluation gets its own folder; an explicit --out holding outputs is refused unless overwrite
    before = open(os.path.join(first, "metrics.json")).read()
    evaluate(run, [1], n=20, progress=False)
    assert open(os.path.join(first, "metrics.json")).read() == before
    assert json.load(open(os.path.join(run, "eval", "001", "metrics.json")))[0]["steps"] == 1
    with pytest.raises(FewstepError, match="already exists; pass --overwrite"):
        evaluate(run, [1], n=20, out=first, progress=False)
    assert open(os.path.join(first, "metrics.json")).read() == before
    evaluate(run, [1], n=20, out=first, overwrite=True, progress=False)
    assert json.load(open(os.path.join(first, "metrics.json")))[0]["steps"] == 1


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs dataset-fashion-mnist")
def test_class_match_of_real_images_is_the_classifiers_accuracy():
    net, test = load_feature_net(), FashionMNIST("test")
    x, y = test.images[:1000].float() / 127.5 - 1, test.labels[:1000]
    feats = extract_features(net, x)
    assert class_match(net, feats, y) == pytest.approx((net(x).argmax(1) == y).double().mean().item(), abs=1e-12)
    assert class_match(net, feats, (y + 1) % 10) < 0.1                 # asked for the wrong class: rarely matches


def test_eval_rejects_a_2d_run(tmp_path):
    run = str(tmp_path / "toy")
    train(TrainConfig(method="edm", steps=2, batch=8, net_kwargs={"width": 8, "depth": 1}), run, progress=False)
    with pytest.raises(FewstepError, match="not an image model"):
        evaluate(run, [1], n=10)


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs dataset-fashion-mnist")
@pytest.mark.slow
def test_classifier_guidance_end_to_end(tmp_path):
    base = dict(data="fashion-mnist", batch=8, steps=2)
    clf, teacher = str(tmp_path / "clf"), str(tmp_path / "teacher")
    train(TrainConfig(method="classifier", net="classifier", cond=True, **base), clf, progress=False)
    train(TrainConfig(method="edm", net="unet", net_kwargs={"config": "cpu-tiny"}, **base), teacher, progress=False)
    rows = evaluate(teacher, [2], n=20, guidance=1.0, classifier_run=clf, progress=False)
    assert rows[0]["nfe"] == 3 and rows[0]["fd"] > 0
    with pytest.raises(FewstepError, match="not a generator"):
        evaluate(clf, [1], n=4)
    with pytest.raises(FewstepError, match="fewstep train classifier"):
        TrainConfig(method="classifier", net="classifier", **base).validate()


def test_eval_refuses_before_reading_any_data(tmp_path, monkeypatch):
    # CFG on a run that never learned the null label, and a --classifier that is not a classifier: one
    # line each, decided from the configs before the feature network or any dataset is read
    import fewstep.evaluate as evaluate_module
    use_labelled_mixture(monkeypatch)
    monkeypatch.setattr(evaluate_module, "load_feature_net", lambda: pytest.fail("read the feature net"))
    run = str(tmp_path / "cond")
    train(TrainConfig(method="edm", data="labelled", cond=True, steps=1, batch=8, net_kwargs={"width": 8, "depth": 1}),
          run, progress=False)
    with pytest.raises(FewstepError, match="label_dropout=0: retrain it with --set label_dropout=0.1"):
        evaluate(run, [1], n=4, guidance=2.0)
    with pytest.raises(FewstepError, match="not a guidance classifier"):
        evaluate(run, [1], n=4, guidance=2.0, classifier_run=run)


def test_sample_images_puts_labels_on_the_models_device(monkeypatch):
    # the labels must live where the model does (CUDA too); checked here through the device generate sees
    import fewstep.evaluate as evaluate_module
    from fewstep.nets import UNet
    from fewstep.precond import EDMPrecond
    seen = []
    monkeypatch.setattr(evaluate_module, "generate", lambda model, cfg, m, s, cond=None, **kw: (
        seen.append(cond["class_labels"].device) or torch.zeros(m, 1, 8, 8), 1))
    model = EDMPrecond(UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1,), num_blocks=1,
                            attn_resolutions=(), num_classes=3)).to("meta")
    x, nfe, _ = evaluate_module.sample_images(model, TrainConfig(cond=True), 5, 1, batch=2)
    assert x.shape == (5, 1, 8, 8) and seen == [torch.device("meta")] * 3
    with pytest.raises(FewstepError, match="at least 1"):
        evaluate_module.sample_images(model, TrainConfig(cond=True), 0, 1)
