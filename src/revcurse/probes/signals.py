"""Back-propagated error signals of a paired query and the reverse query (arXiv 2602.02133).

For query i with answer y_i the cross-entropy's gradient with respect to the answer logits is the
output error ``e_i = softmax(z_i) - onehot(y_i)``. Propagated back it becomes the hidden signal
``u_i = dL_i/dh_i``, the gradient at the input of the unembedding (``W_U^T e_i`` for the normed
final state h), and, per layer, ``dL_i/dz_i`` at the input of ``o_proj`` (the heads' outputs).
Reported per pairing (:mod:`revcurse.probes.inputs`): the mean over facts of the inner products and
cosines between the paired query's and the reverse query's signals of the same fact.

What these vectors are, and what they are not. The two queries of the **forward** pairing have
*different* answers (b and a), so ``e_fwd ~ p - onehot(b)`` and ``e_rev ~ p - onehot(a)``, and
``cos(u_fwd, u_rev)`` is governed by ``<W_U[a], W_U[b]>``: how the unembedding rows of the two entities
relate. Training pushes the rows of the two entity types apart, so this cosine is typically
*negative* for MDM and ARM alike; with all weights zero and orthonormal unembedding rows it is
exactly ``-1 / (V - 1)`` (the uniform softmax; tested). The paper claims aligned *parameter
gradients* (outer products of these signals with activations, :mod:`revcurse.probes.gradients`),
not aligned ``u``, so the forward-pairing ``u``-cosine is no test of it. The **mirror** pairing's two
queries share the answer a, so their output errors share the ``-onehot(a)`` term (cosine exactly 1
in the zero-weight case); it measures whether the model routes the same error back through the
trained and the reverse configuration.
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
