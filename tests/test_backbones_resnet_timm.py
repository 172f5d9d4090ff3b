"""ResNet-18 (CIFAR stem, full / reduced width) and the timm adapter share the backbone contract."""

from __future__ import annotations

import pytest
import torch

from clframe.backbones.resnet import ResNet18
from clframe.backbones.simple import count_parameters
from clframe.backbones.timm_adapter import TimmBackbone
from clframe.errors import ConfigError
from clframe.registry import BACKBONES


@pytest.mark.parametrize("nf, feats, params", [(64, 512, 11_168_832), (20, 160, 1_093_140)])
def test_resnet18_widths(nf, feats, params):
    net = ResNet18((3, 32, 32), nf=nf)
    assert net.num_features == feats and count_parameters(net) == params  # 11.2 M / 1.1 M as in Mammoth / GEM
    assert net.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, feats)


def test_resnet18_cifar_stem_and_other_inputs():
    net = ResNet18((1, 28, 28), nf=8)
    assert net.stem[0].stride == (1, 1) and net.stem[0].kernel_size == (3, 3)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net.forward_features(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    with pytest.raises(ConfigError, match="backbone.nf"):
        ResNet18((3, 32, 32), nf=0)


def test_configs_build_each_backbone(make_cfg):
    for name, feats in [("resnet18_reduced", 160), ("timm", 512)]:
        cfg = make_cfg(f"backbone={name}")
        net = BACKBONES.build(cfg.backbone, input_shape=(3, 32, 32))
        assert net.num_features == feats


def test_timm_model_by_name_without_classifier():
    net = TimmBackbone((3, 32, 32), model="resnet18")
    assert net.num_features == 512
    assert net.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    gray = TimmBackbone((1, 32, 32), model="test_vit", model_kwargs={"img_size": 32})
    assert gray.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, gray.num_features)


def test_timm_errors_never_download():
    with pytest.raises(ConfigError, match="pretrained_path"):
        TimmBackbone((3, 32, 32), model="resnet18", pretrained=True)
    with pytest.raises(ConfigError, match="backbone.model.*resnet18"):
        TimmBackbone((3, 32, 32), model="resnet18xx")


def test_timm_pretrained_path_loads_local_weights(tmp_path):
    src = TimmBackbone((3, 32, 32), model="test_resnet")
    full = {**src.net.state_dict(), "fc.weight": torch.zeros(7, 3), "fc.bias": torch.zeros(7)}  # classifier: ignored
    torch.save({"state_dict": full}, tmp_path / "w.pth")
    dst = TimmBackbone((3, 32, 32), model="test_resnet", pretrained=True, pretrained_path=str(tmp_path / "w.pth"))
    x = torch.randn(2, 3, 32, 32)
    src.eval(), dst.eval()
    assert torch.equal(src.forward_features(x), dst.forward_features(x))
    torch.save(TimmBackbone((3, 32, 32), model="resnet18").net.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="do not fit"):
        TimmBackbone((3, 32, 32), model="test_resnet", pretrained_path=str(tmp_path / "other.pth"))
