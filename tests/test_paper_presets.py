"""Paper-scale networks, ImageNet initialisation, evaluation options and the paper presets."""
import dataclasses
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from idd_lib import engine, runs
from idd_lib.config import EvalConfig, ModelConfig
from idd_lib.presets import ARCHITECTURES, PROFILES, get_profile
from idd_lib.inference import predict, sliding_logits
from idd_lib.models import build_segmentor, count_parameters
from idd_lib.models.pretrained import MOBILENET_V2_WEIGHTS, RESNET_WEIGHTS
from idd_lib.models.segmentor import DilatedMobileNetV2, DilatedResNet, DilatedBasicBlock
from layout_fixtures import MAKERS

PRESETS = {"paper-cityscapes": "cityscapes", "paper-cityscapes-a": "cityscapes", "paper-voc": "voc",
           "paper-ade20k": "ade20k"}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- architectures

def test_lineage_parameter_counts():
    """PSPNet-R18 ~ 13 M (CIRKD's table; its 128-channel PSP fusion is SKD's PSPModule(512, 128) -
    a 512-channel fusion gives 16.5 M); DeepLabV3-MobileNetV2 ~ 3.2 M from CIRKD's code (320-channel
    backbone output, 128-channel ASPP, no aux head); the PSPNet-R101 teacher several times larger."""
    count = {name: count_parameters(build_segmentor(cfg, 19)) for name, cfg in ARCHITECTURES.items()}
    assert 12.5e6 < count["pspnet_r18"] < 13.5e6
    assert 3.0e6 < count["deeplabv3_mbv2"] < 3.4e6
    assert 60e6 < count["pspnet_r101"] < 75e6
    wide = dataclasses.replace(ARCHITECTURES["pspnet_r18"], head_channels=512)
    assert 16e6 < count_parameters(build_segmentor(wide, 19)) < 17e6


@pytest.mark.parametrize("output_stride, size", [(8, (8, 12)), (16, (4, 6))])
def test_mobilenet_v2_student_is_dilated_and_keeps_torchvisions_names(output_stride, size):
    cfg = dataclasses.replace(ARCHITECTURES["deeplabv3_mbv2"], output_stride=output_stride)
    model = build_segmentor(cfg, 19).train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out["out"].shape == (2, 19, *size) and out["feat"].shape == (2, 128, *size) and "aux" not in out
    backbone = DilatedMobileNetV2(output_stride=output_stride)
    assert backbone.channels == (96, 320)
    reference = {k: v for k, v in torchvision.models.mobilenet_v2().state_dict().items()
                 if k.startswith("features.") and not k.startswith("features.18.")}
    assert set(backbone.state_dict()) == set(reference)


# ---------------------------------------------------------------- ImageNet weights

def test_local_torchvision_file_initialises_the_backbone(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    cfg = ModelConfig(block="basic", layers=(2, 2, 2, 2), deep_stem=False, pretrained=str(tmp_path / "resnet18.pth"))
    model = build_segmentor(cfg, 19, pretrained=True)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert not torch.equal(build_segmentor(cfg, 19).backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_lineage_deep_stem_file_is_renamed_onto_our_stem(tmp_path):
    ours = DilatedResNet(DilatedBasicBlock, (2, 2, 2, 2), deep_stem=True).state_dict()
    names = {"conv1.0.": "conv1.", "conv1.1.": "bn1.", "conv1.3.": "conv2.", "conv1.4.": "bn2.", "conv1.6.": "conv3.",
             "bn1.": "bn3."}
    csail = {}
    for key, value in ours.items():  # our naming -> the CSAIL resnet18-imagenet.pth naming
        prefix = next((p for p in names if key.startswith(p)), None)
        csail[names[prefix] + key[len(prefix):] if prefix else key] = value
    assert "conv2.weight" in csail and "bn3.weight" in csail
    torch.save({"state_dict": {f"module.{k}": v for k, v in csail.items()}}, tmp_path / "r18.pth")
    model = build_segmentor(dataclasses.replace(ARCHITECTURES["pspnet_r18"], pretrained=str(tmp_path / "r18.pth")),
                            19, pretrained=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, ours[key]), key


def test_bad_pretrained_files_are_clear_errors(tmp_path):
    cfg = ModelConfig(block="basic", layers=(2, 2, 2, 2))
    with pytest.raises(FileNotFoundError, match="model.pretrained: .*nowhere.pth is not a file"):
        build_segmentor(dataclasses.replace(cfg, pretrained=str(tmp_path / "nowhere.pth")), 9, pretrained=True)
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not fit this backbone"):
        build_segmentor(dataclasses.replace(cfg, pretrained=str(tmp_path / "r34.pth")), 9, pretrained=True)
    torch.save({"weights": Unpicklable()}, tmp_path / "object.pth")
    with pytest.raises(ValueError, match="not a plain state dict of tensors"):  # weights_only refuses objects
        build_segmentor(dataclasses.replace(cfg, pretrained=str(tmp_path / "object.pth")), 9, pretrained=True)
    with pytest.raises(ValueError, match="no ImageNet weights for deep-stem ResNets.*resnet18-imagenet.pth"):
        build_segmentor(dataclasses.replace(ARCHITECTURES["pspnet_r18"], pretrained="imagenet"), 9, pretrained=True)


class Unpicklable:
    pass


def test_imagenet_download_uses_torch_hub_weights_only_and_offline_is_a_clear_error(monkeypatch, tmp_path):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return torchvision.models.mobilenet_v2().state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    cfg = dataclasses.replace(ARCHITECTURES["deeplabv3_mbv2"], pretrained="imagenet")
    build_segmentor(cfg, 19, pretrained=True)
    assert calls[0][0] == MOBILENET_V2_WEIGHTS.url and calls[0][1]["weights_only"] is True

    def offline(url, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = RESNET_WEIGHTS["basic", (2, 2, 2, 2)]
    filename = weights.url.rsplit("/", 1)[-1]
    with pytest.raises(RuntimeError, match=rf"could not download .*put it at {tmp_path}/torch/hub/checkpoints/{filename}"):
        build_segmentor(ModelConfig(block="basic", layers=(2, 2, 2, 2), pretrained="imagenet"), 19, pretrained=True)


# ---------------------------------------------------------------- evaluation options

class Pointwise(nn.Module):
    """Per-pixel logits: whole-image, sliding-window and flipped predictions coincide."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class Contextual(Pointwise):
    def forward(self, x):  # depends on the whole input: a window sees another mean
        return {"out": self.conv(x) + 10 * x.mean((2, 3), keepdim=True)[:, :1]}


def test_sliding_window_and_flip_agree_with_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    model, images = Pointwise().eval(), torch.randn(2, 3, 20, 30)
    whole = predict(model, images, (20, 30))
    slide = sliding_logits(model, images, (8, 12), (5, 7))
    assert torch.allclose(slide, whole, atol=1e-5)
    tta = predict(model, images, (20, 30), EvalConfig(mode="slide", crop_size=(8, 12), stride=(5, 7), flip=True))
    assert torch.allclose(tta, whole.softmax(1), atol=1e-5)
    multi = predict(model, images, (20, 30), EvalConfig(scales=(0.5, 1.0, 1.5)))
    assert multi.shape == (2, 4, 20, 30) and torch.allclose(multi.sum(1), torch.ones(2, 20, 30), atol=1e-5)
    contextual = Contextual().eval()
    assert not torch.allclose(sliding_logits(contextual, images, (8, 12), (5, 7)), predict(contextual, images, (20, 30)))


def test_evaluate_accepts_the_options_and_rejects_bad_ones():
    class Oracle(nn.Module):
        def forward(self, x):
            return {"out": x}
    labels = torch.randint(0, 3, (1, 16, 24))
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    for options in (EvalConfig(), EvalConfig(mode="slide", crop_size=(8, 8), stride=(4, 4), flip=True)):
        assert engine.evaluate(Oracle(), [(logits, labels)], 3, torch.device("cpu"), options=options)["miou"] == 100
    from idd_lib.inference import check_eval_config
    with pytest.raises(ValueError, match="train.eval.mode"):
        check_eval_config(EvalConfig(mode="tiles"))


# ---------------------------------------------------------------- presets

def test_presets_hold_the_protocols():
    b, a = get_profile("paper-cityscapes"), get_profile("paper-cityscapes-a")
    assert (b.data.crop_size, b.data.batch_size, b.student_train.iterations, b.student_train.lr,
            b.student_train.weight_decay, b.data.scale_range) == ((512, 512), 8, 40000, 0.01, 5e-4, (0.5, 1.6))
    assert b.teacher.layers == (3, 4, 23, 3) and b.teacher.head == b.student.head == "psp" and b.student.deep_stem
    assert (a.data.crop_size, a.data.batch_size, a.student_train.lr, a.student_train.weight_decay) == \
        ((512, 1024), 16, 0.02, 1e-4)
    assert a.teacher.head == a.student.head == "aspp"
    assert get_profile("paper-voc").data.dataset == "voc" and get_profile("paper-ade20k").data.dataset == "ade20k"
    for name in PRESETS:
        p = PROFILES[name]
        assert p.student_train.eval == EvalConfig() and p.data.eval_batch_size == 1   # single-scale whole image
        assert p.student.pretrained.endswith("resnet18-imagenet.pth")
        assert {"skd", "ifvd", "cwd", "cirkd", "idd"} <= set(p.methods)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_its_networks_and_trains_two_steps(name, tmp_path):
    """Real-size student; the teacher keeps its depth, stem and head type at width 1/8 (a 68-79 M
    teacher checkpoint per preset would dominate the test's time)."""
    preset = get_profile(name)
    preset_classes = {"cityscapes": 19, "voc": 21, "ade20k": 150}[PRESETS[name]]
    teacher = build_segmentor(preset.teacher, preset_classes)
    assert count_parameters(teacher) > 3 * count_parameters(build_segmentor(preset.student, preset_classes))
    root = MAKERS[PRESETS[name]](tmp_path / "data")
    small_teacher = dataclasses.replace(preset.teacher, width=0.125, head_channels=32, pretrained="")
    steps = dict(iterations=2, eval_every=0, checkpoint_every=0, log_every=1)
    profile = dataclasses.replace(
        preset, data=dataclasses.replace(preset.data, root=str(root), crop_size=(32, 32), base_size=32, batch_size=2,
                                         num_workers=0),
        teacher=small_teacher, student=dataclasses.replace(preset.student, pretrained=""),
        teacher_train=dataclasses.replace(preset.teacher_train, **steps),
        student_train=dataclasses.replace(preset.student_train, **steps))
    result = runs.run_student(profile, "kd", seed=0, progress=False)
    assert result["steps"] == 2 and len(result["per_class_iou"]) == preset_classes
    saved = engine.load_state(engine.Path(result["run_dir"]) / engine.MODEL)
    assert sum(v.numel() for k, v in saved.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) \
        == count_parameters(build_segmentor(preset.student, preset_classes))


def test_training_initialises_from_pretrained_on_a_fresh_start_only(tiny_profile, tmp_path, monkeypatch):
    from idd_lib.models import segmentor
    calls = []
    monkeypatch.setattr(segmentor, "load_backbone_weights", lambda backbone, cfg: calls.append(cfg.pretrained))
    cfg = tiny_profile.run_config("baseline", 0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="some.pth"),
                              train=dataclasses.replace(cfg.train, iterations=2))
    engine.train(cfg, tmp_path / "run", progress=False)
    assert calls == ["some.pth"]
    (tmp_path / "run" / engine.RESULT).unlink()          # a finished run resumed from its checkpoint
    engine.train(cfg, tmp_path / "run", progress=False)
    assert calls == ["some.pth"]
