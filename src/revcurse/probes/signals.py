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

For answers of several tokens (natural-language facts) each signal is summed over the answer's
reading rows (the masked answer positions of an MDM, the positions predicting them for an ARM),
the gradient of the summed cross-entropy; for one-token answers that is the definition above.
The signals are read with module hooks (the final norm's output, each attention output
projection's input), so the same code serves revcurse's Transformer, native LLaDA and
transformers models; toy queries (:func:`~revcurse.probes.inputs.stackable`) are stacked into one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from revcurse.probes.gradients import cosine
from revcurse.probes.inputs import Encoded, query_input, stack_queries, stackable


def _signal_points(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The final norm (its output feeds the unembedding) and each layer's attention output
    projection (``o_proj``; LLaDA's ``attn_out``), in layer order."""
    named = list(model.named_modules())
    finals = [m for n, m in named if n.split(".")[-1] in ("norm", "ln_f")
              and not {"layers", "blocks"} & set(n.split("."))]  # fmt: skip
    outs = [m for n, m in named if n.split(".")[-1] in ("o_proj", "attn_out")]
    if len(finals) != 1 or not outs:
        raise ValueError("signals need one final norm and the attention output projections")
    return finals[0], outs


def query_signals(
    model: nn.Module, queries: Sequence[Encoded], *, causal: bool, mask_id: int
) -> dict[str, torch.Tensor]:
    """``e [N, V]``, ``u [N, D]`` and ``z.<layer> [N, H * Dh]`` of each query (module docstring),
    float64."""
    if stackable(queries):
        batch = stack_queries(list(queries), causal, mask_id, pad_id=mask_id)  # one length
        rows = torch.stack([batch.answer_pos, batch.answer_pos + 1], dim=1)
        return _signals(model, batch.ids, rows, batch.answer_id[:, None])
    device = next(model.parameters()).device
    parts = []
    for q in queries:
        ids, rows = query_input(q, causal, mask_id, device)
        targets = torch.tensor([q.ids[q.answer[0] : q.answer[1]]], device=device)
        parts.append(_signals(model, ids, rows, targets))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _signals(
    model: nn.Module,
    ids: torch.Tensor,  # [N, L]
    rows: torch.Tensor,  # [N, 2] the rows that read the answer, [start, end)
    targets: torch.Tensor,  # [N, K] the answer tokens, K = end - start for every query
) -> dict[str, torch.Tensor]:
    final, outs = _signal_points(model)
    acts: list[torch.Tensor] = []
    handles = [final.register_forward_hook(lambda _m, _i, out: acts.append(out))]
    handles += [o.register_forward_pre_hook(lambda _m, args: acts.append(args[0])) for o in outs]
    try:
        logits = model(ids)  # [N, L, V]
    finally:
        for h in handles:
            h.remove()
    n = torch.arange(len(ids))[:, None]
    at = rows[:, :1] + torch.arange(targets.shape[1])[None]  # [N, K]
    read = logits[n, at]  # [N, K, V]
    # A sum, not a mean: each fact's activations then receive exactly its own dL_i.
    loss = F.cross_entropy(read.flatten(0, 1), targets.flatten(), reduction="sum")
    # acts: the attention outputs' inputs in layer order, then the final norm's output.
    final_act, attn_acts = acts[-1], acts[:-1]
    grads = torch.autograd.grad(loss, [final_act, *attn_acts])
    with torch.no_grad():
        onehot = F.one_hot(targets, read.shape[-1])
        e = (torch.softmax(read.double(), -1) - onehot).sum(1)  # [N, V]
    out = {"e": e, "u": grads[0][n, at].double().sum(1)}  # [N, D]
    for i, g in enumerate(grads[1:]):
        out[f"z.{i}"] = g[n, at].double().sum(1)  # [N, H * Dh], heads concatenated
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
