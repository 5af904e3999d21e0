"""Per-pixel anomaly maps from FastFlow latents."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AnomalyMapGenerator(nn.Module):
    """Turn per-scale latents into one anomaly map at the input size (higher = more anomalous).

    For each scale, ``-exp(-0.5 * mean_c(z ** 2))`` (minus the per-pixel likelihood, up to
    the normal density's constant) is resized bilinearly to ``input_size``; the maps of all
    scales are averaged. Values lie in ``[-1, 0]``.

    Parameters
    ----------
    input_size : int or tuple of int
        (height, width) of the maps.
    """

    def __init__(self, input_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)

    def forward(self, hidden_variables: list[torch.Tensor]) -> torch.Tensor:
        """Return the anomaly map ``(N, 1, H, W)`` of latents ``[(N, C_i, h_i, w_i), ...]``."""
        anomaly_map = None
        for z in hidden_variables:
            # Maps are float32 even when the flows ran in bfloat16 (no-op for float32 latents).
            z = z.float()
            probability = torch.exp(-0.5 * torch.mean(z**2, dim=1, keepdim=True))
            scale_map = F.interpolate(-probability, size=self.input_size, mode="bilinear", align_corners=False)
            anomaly_map = scale_map if anomaly_map is None else anomaly_map + scale_map
        return anomaly_map / len(hidden_variables)


def scores_by_rule(maps: torch.Tensor, rules, input_size: tuple[int, int]) -> dict:
    """Image scores of anomaly maps under image-score rules: the one rule, for every scorer.

    Higher means more normal (scikit-learn's ``score_samples`` sign). One sorted top-k serves
    every rule; the first ``k`` of its values are, in the same order, what a top-k of ``k``
    alone returns, so each rule's score is the same to the bit whether computed alone
    (``score_samples``) or beside others (``fit``).

    Parameters
    ----------
    maps : Tensor of shape (N, 1, H, W)
        Anomaly maps at ``input_size``: raw, in ``[-1, 0]``, or standardised
        (:mod:`skfastflow.map_standardization`), any real values.
    rules : iterable of "max" or float
        ``"max"``: the map's maximum (the paper's rule); a float ``q`` in ``(0, 0.5]``: the
        mean of the map's highest ``round(q * H * W)`` values (at least one).
    input_size : tuple of int
        ``(H, W)`` of the maps, given rather than read from ``maps`` so that a traced graph
        (:mod:`skfastflow.export`) holds the numbers of top values as constants.

    Returns
    -------
    scores : dict
        ``{rule: Tensor (N,)}``: minus the rule's value (in ``[0, 1]`` for raw maps), in the maps' dtype.
    """
    values = maps.flatten(1)
    n_pixels = input_size[0] * input_size[1]
    counts = {rule: 1 if rule == "max" else max(1, round(rule * n_pixels)) for rule in rules}
    top = values.topk(max(counts.values()), dim=1).values
    return {rule: -top[:, :count].mean(dim=1) for rule, count in counts.items()}
