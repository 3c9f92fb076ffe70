import pytest
import torch
import torchvision

from idd_lib.config import ModelConfig
from idd_lib.presets import ARCHITECTURES
from idd_lib.models import build_segmentor, count_parameters
from idd_lib.models.segmentor import DilatedBasicBlock, DilatedResNet


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_paper_architectures_build_with_output_stride_8(name):
    cfg = ARCHITECTURES[name]
    model = build_segmentor(cfg, 19).train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out["out"].shape == (2, 19, 8, 12)
    if cfg.aux:  # the MobileNetV2 student of the lineage has none
        assert out["aux"].shape == (2, 19, 8, 12)
    assert out["feat"].shape == (2, cfg.head_channels, 8, 12)
    assert "aux" not in model.eval()(torch.randn(1, 3, 64, 96))


def test_paper_sizes_parameter_counts():
    # ResNet18/101 backbones + PSP/ASPP heads: teacher several times the student
    r18 = count_parameters(build_segmentor(ARCHITECTURES["pspnet_r18"], 19))
    r101 = count_parameters(build_segmentor(ARCHITECTURES["pspnet_r101"], 19))
    assert 12e6 < r18 < 20e6
    assert 60e6 < r101 < 75e6


def test_plain_stem_width_1_is_torchvision_resnet18():
    """Same parameter names and shapes as torchvision's resnet18, so its ImageNet weights load."""
    ours = DilatedResNet(DilatedBasicBlock, (2, 2, 2, 2), width=1.0, deep_stem=False)
    reference = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = ours.load_state_dict(reference, strict=False)
    assert not missing and not unexpected


def test_width_and_dilation_change_the_network():
    small = build_segmentor(ModelConfig(layers=(1, 1, 1, 1), width=0.125, head_channels=16), 9)
    big = build_segmentor(ModelConfig(layers=(1, 1, 1, 1), width=0.5, head_channels=64), 9)
    assert count_parameters(big) > 8 * count_parameters(small)
    os16 = build_segmentor(ModelConfig(layers=(1, 1, 1, 1), width=0.125, head_channels=16, output_stride=16), 9)
    assert os16(torch.randn(2, 3, 64, 64))["out"].shape[-1] == 4


def test_bad_model_options_are_clear_errors():
    with pytest.raises(ValueError, match="model.head"):
        build_segmentor(ModelConfig(head="unet"), 9)
    with pytest.raises(ValueError, match="output_stride"):
        build_segmentor(ModelConfig(output_stride=4), 9)
