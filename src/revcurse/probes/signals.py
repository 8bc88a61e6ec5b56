"""Back-propagated error signals of the forward and reverse queries (arXiv 2602.02133).

For query i with answer y_i the cross-entropy's gradient with respect to the answer logits is the
output error ``e_i = softmax(z_i) - onehot(y_i)``. Propagated back it becomes the hidden signal
``u_i = dL_i/dh_i``, the gradient at the input of the unembedding (``W_U^T e_i``), and, per layer,
``dL_i/dz_i`` at the input of ``o_proj`` (the heads' outputs). Every weight gradient is an outer
product of such a signal with an activation, so aligned forward/reverse signals mean aligned
updates. Reported per fact: the inner products and cosines between the forward and reverse signals
of the same fact, averaged over facts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from revcurse.models.hooks import capture
from revcurse.models.transformer import TransformerLM
from revcurse.probes.gradients import cosine
from revcurse.probes.inputs import ProbeBatch


def backprop_signals(model: TransformerLM, batch: ProbeBatch) -> dict[str, torch.Tensor]:
    """``e [N, V]``, ``u [N, D]`` and ``z.<layer> [N, H * Dh]`` at each query's answer position."""
    n_layers = len(model.model.layers)
    names = ["model.hook_final"] + [f"model.layers.{i}.self_attn.hook_z" for i in range(n_layers)]
    rows = torch.arange(len(batch))
    with capture(model, names) as cache:
        logits = model(batch.ids)[rows, batch.answer_pos]  # [N, V]
        # A sum, not a mean: each fact's activations then receive exactly its own dL_i.
        loss = F.cross_entropy(logits, batch.answer_id, reduction="sum")
        acts = [cache[n] for n in names]
        grads = torch.autograd.grad(loss, acts)
    with torch.no_grad():
        e = torch.softmax(logits.double(), -1) - F.one_hot(batch.answer_id, logits.shape[-1])
    out = {"e": e, "u": grads[0][rows, batch.answer_pos].double()}  # [N, D]
    for i, g in enumerate(grads[1:]):
        # hook_z: [N, H, L, Dh] -> heads concatenated at the answer position [N, H * Dh]
        out[f"z.{i}"] = g[rows, :, batch.answer_pos].flatten(1).double()
    return out


def signal_alignment(
    fwd: dict[str, torch.Tensor], rev: dict[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """Mean over facts of ``<x_fwd, x_rev>`` and ``cos(x_fwd, x_rev)`` for each signal."""
    return {
        name: {
            "inner": float((fwd[name] * rev[name]).sum(-1).mean()),
            "cosine": float(cosine(fwd[name], rev[name]).mean()),
        }
        for name in fwd
    }
