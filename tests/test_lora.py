"""LoRA layers (merge / un-merge, SVD folding, learnable coefficients) and the small timm ViT backbone."""

import pytest
import torch
from torch import nn

from clframe.backbones.vit import ViT
from clframe.errors import ConfigError
from clframe.strategies.lora import LoRALinear, add_lora, lora_layers, lora_parameters


def _random_lora(rank=3, seed=0) -> LoRALinear:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(12, 20), rank=rank, alpha=6.0)
    nn.init.normal_(layer.lora_B["default"])  # B starts at zero; make the update non-trivial
    return layer


def test_merge_and_unmerge_are_exact_up_to_rounding():
    layer, x = _random_lora(), torch.randn(7, 12)
    w0 = layer.base.weight.detach().clone()
    expected = x @ w0.T + layer.base.bias + 2.0 * (x @ layer.lora_A["default"].T @ layer.lora_B["default"].T)
    unmerged = layer(x)
    assert torch.allclose(unmerged, expected, atol=1e-5)
    assert (unmerged - layer.base(x)).abs().max() > 0.1  # the adapter changes the output
    layer.merge()
    assert not torch.equal(layer.base.weight, w0)
    assert torch.allclose(layer(x), unmerged, atol=1e-5)  # merged set is folded in, not added twice
    layer.merge()  # idempotent
    assert torch.allclose(layer(x), unmerged, atol=1e-5)
    layer.unmerge()
    assert (layer.base.weight - w0).abs().max() < 1e-6
    assert torch.allclose(layer(x), unmerged, atol=1e-5)


def test_new_adapter_is_a_no_op_and_only_lora_trains():
    torch.manual_seed(0)
    vit = ViT((1, 8, 8), patch_size=2, depth=2, width=16, heads=2)
    x = torch.randn(5, 1, 8, 8)
    before = vit.forward_features(x)
    names = add_lora(vit, rank=2)
    assert names == [f"vit.blocks.{i}.attn.{m}" for i in (0, 1) for m in ("qkv", "proj")]
    assert torch.equal(vit.forward_features(x), before)  # B = 0
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert sum(p.numel() for p in lora_parameters(vit, "default")) == 2 * 2 * ((16 + 48) + (16 + 16))
    vit.forward_features(x).sum().backward()
    # dW = B A with B = 0: the first gradient reaches B (nonzero) and not A (exactly zero)
    for name, module in vit.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            assert torch.count_nonzero(module.lora_A["default"].grad) == 0, name
            assert module.lora_B["default"].grad.abs().sum() > 0, name


def test_add_lora_targets_fall_back_and_fail_clearly():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert add_lora(mlp) == ["0", "2"]  # no attention projections: every linear
    with pytest.raises(ConfigError, match="strategy.targets"):
        add_lora(nn.Sequential(nn.Linear(4, 8)), targets=["*.qkv"])


def test_set_delta_is_exact_within_rank_and_best_truncation_beyond():
    layer = _random_lora(rank=4)
    layer.add_adapter("old", rank=4)
    low = torch.randn(20, 3) @ torch.randn(3, 12)  # rank 3 <= 4: exact
    layer.set_delta("old", low)
    assert torch.allclose(layer.delta("old"), low, atol=1e-4)
    full = torch.randn(20, 12)
    layer.set_delta("old", full)
    u, s, vh = torch.linalg.svd(full)
    best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]  # Eckart-Young optimum
    assert torch.allclose(layer.delta("old"), best, atol=1e-4)


def test_tensor_coefficients_are_differentiable():
    layer, x = _random_lora(), torch.randn(3, 12)
    c = torch.tensor(0.5, requires_grad=True)
    layer.coef["default"] = c
    layer(x).pow(2).sum().backward()
    assert c.grad is not None and c.grad.abs() > 0
    layer.coef["default"] = 0.0  # disabled set: plain base layer
    assert torch.equal(layer(x), layer.base(x))


def test_vit_shapes_errors_and_local_weights(tmp_path):
    torch.manual_seed(0)
    vit = ViT((3, 32, 32), patch_size=8, depth=1, width=24, heads=3)
    x = torch.randn(2, 3, 32, 32)
    assert vit.forward_features(x).shape == (2, 24) and vit.num_features == 24
    with pytest.raises(ConfigError, match="backbone.patch_size"):
        ViT((3, 30, 30), patch_size=4)
    with pytest.raises(ConfigError, match="backbone.pretrained_path"):
        ViT((3, 32, 32), patch_size=8, depth=1, width=24, heads=3, pretrained_path=str(tmp_path / "missing.pt"))
    torch.save(vit.state_dict(), tmp_path / "w.pt")  # keys "vit.*", as a run would save the backbone
    torch.manual_seed(1)
    loaded = ViT((3, 32, 32), patch_size=8, depth=1, width=24, heads=3, pretrained_path=str(tmp_path / "w.pt"))
    assert torch.equal(loaded.forward_features(x), vit.forward_features(x))
    with pytest.raises(ConfigError, match="pretrained_path"):  # wrong architecture
        ViT((3, 32, 32), patch_size=8, depth=2, width=24, heads=3, pretrained_path=str(tmp_path / "w.pt"))
    assert len(list(lora_layers(vit))) == 0
