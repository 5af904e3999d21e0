"""Whether a forward pass is being recorded into a graph rather than run.

Graph recorders (``torch.jit.trace``, which ``torch.onnx.export`` uses; ``torch.export`` and
dynamo) record the operations of one call with the shapes of its example input. Two
speed-ups of the torch layer do not survive that and take a plain path while recording:

- the backbone's Python loop over a batch in passes (:class:`~skfastflow.nn.FeatureExtractor`)
  would be recorded for the example's batch size only;
- the coupling's ``out=`` writes into slices of one buffer
  (:class:`~skfastflow.nn.AllInOneBlock`) are recorded by the ONNX exporter as if they
  wrote nowhere (measured: maps off by up to 0.6 in onnxruntime).
"""

from __future__ import annotations

import torch


def is_traced() -> bool:
    """Whether the current call is being recorded into a graph (jit tracing, ``torch.export``, dynamo)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
