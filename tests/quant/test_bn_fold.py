"""BatchNorm folding: folded models match the eval-mode model to float rounding; limits are respected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.quant.bn_fold import find_foldable, fold_batchnorm


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen))
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """|a − b| ≤ rel · max|b|: folding reassociates a few float operations (module docstring)."""
    return bool((a - b).abs().max() <= rel * b.abs().max())


def _names(model: nn.Module) -> "list[str]":
    return [type(m).__name__ for m in model.modules()]


CASES = [
    ("conv2d", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), (4, 3, 9, 9)),
    ("conv2d_nobias_noaffine", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, affine=False)),
     (4, 3, 9, 9)),
    ("grouped_conv", lambda: nn.Sequential(nn.Conv2d(8, 8, 3, groups=4), nn.BatchNorm2d(8)), (2, 8, 7, 7)),
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), (5, 4, 20)),
    ("linear", lambda: nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7), nn.Tanh()), (16, 10)),
    ("conv3d", lambda: nn.Sequential(nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3)), (2, 2, 4, 4, 4)),
    ("nested", lambda: nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.ReLU(),
                                     nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))), (2, 3, 8, 8)),
]


class TestSequential:
    @pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
    def test_matches_eval_model(self, name, make, shape):
        torch.manual_seed(1)
        model = _randomize_bn(make())
        x = torch.randn(shape)
        folded = fold_batchnorm(model)
        assert "BatchNorm1d" not in _names(folded) and "BatchNorm2d" not in _names(folded)
        assert "BatchNorm3d" not in _names(folded)
        assert _close(folded(x), model(x), 1e-5)

    @pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
    def test_float64_agrees_to_1e_12(self, name, make, shape):
        torch.manual_seed(2)
        model = _randomize_bn(make()).double()
        x = torch.randn(shape, dtype=torch.float64)
        assert _close(fold_batchnorm(model)(x), model(x), 1e-12)

    def test_copy_by_default_inplace_on_request(self):
        model = _randomize_bn(CASES[0][1]())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = fold_batchnorm(model)
        assert folded is not model and isinstance(model[1], nn.BatchNorm2d)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        weight = model[0].weight
        same = fold_batchnorm(model, inplace=True)
        assert same is model and isinstance(model[1], nn.Identity) and model[0].weight is weight

    def test_mode_is_kept_and_running_stats_are_used(self):
        model = _randomize_bn(CASES[0][1]()).train()
        folded = fold_batchnorm(model)
        assert folded.training  # folding does not change the mode ...
        x = torch.randn(4, 3, 9, 9)
        assert _close(folded.eval()(x), model.eval()(x), 1e-5)  # ... and matches the eval-mode model

    def test_no_running_stats_is_not_folded(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
        assert find_foldable(model) == []
        with pytest.raises(ValueError, match="left unfolded: 1"):
            fold_batchnorm(model, strict=True)

    def test_shared_layer_is_not_folded(self):
        conv = nn.Conv2d(3, 3, 1)
        model = nn.Sequential(conv, nn.BatchNorm2d(3), conv)
        assert find_foldable(model) == []

    def test_bn_not_after_a_layer(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
        assert find_foldable(model) == []


class Residual(nn.Module):
    """Not a Sequential: conv → bn inside a custom forward (folded via torch.fx)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + x
        return self.head(y)


class ConvUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # folding would change the second use


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.seq = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.seq(self.bn(self.conv(x)))


class TestGeneralModels:
    def test_fx_folds_custom_forward(self):
        torch.manual_seed(3)
        model = _randomize_bn(Residual())
        assert sorted(find_foldable(model)) == [("conv1", "bn1"), ("conv2", "bn2"), ("head.1", "head.2")]
        x = torch.randn(8, 4, 6, 6)
        folded = fold_batchnorm(model, strict=True)
        assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.head[2], nn.Identity)
        assert folded.conv1.bias is not None
        assert _close(folded(x), model(x), 1e-5)
        assert find_foldable(model, use_fx=False) == [("head.1", "head.2")]

    def test_conv_output_with_two_users_is_left_alone(self):
        model = _randomize_bn(ConvUsedTwice())
        assert find_foldable(model) == []
        x = torch.randn(2, 3, 4, 4)
        assert torch.equal(fold_batchnorm(model)(x), model(x))

    def test_untraceable_model_gets_sequential_pairs_only(self):
        torch.manual_seed(4)
        model = _randomize_bn(Untraceable())
        assert find_foldable(model) == [("seq.0", "seq.1")]
        folded = fold_batchnorm(model)
        assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.seq[1], nn.Identity)
        x = torch.randn(2, 3, 5, 5)
        assert _close(folded(x), model(x), 1e-5)
        with pytest.raises(ValueError, match="left unfolded: bn"):
            fold_batchnorm(model, strict=True)


class TestWithQuantization:
    def test_fold_then_quantize_equals_quantize_then_fold(self):
        torch.manual_seed(5)
        make = CASES[0][1]
        a = _randomize_bn(make())
        b = _randomize_bn(make())
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, 3, 9, 9)
        cfg = {"weight": "int8n"}
        qa = lb.quantize_(fold_batchnorm(a), cfg)
        qb = lb.quantize_(b, cfg)
        qb(x)  # fills the quantized-weight cache, which folding must invalidate
        fb = fold_batchnorm(qb, inplace=True)
        assert type(fb[0]).__name__ == "QuantConv2d"
        assert torch.equal(qa(x), fb(x))
