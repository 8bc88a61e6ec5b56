"""Gradient alignment of the forward and reverse losses (arXiv 2602.02133, training-dynamics part).

For a parameter vector theta, the forward loss L_fwd (cross-entropy of the answers of the forward
queries), the reverse loss L_rev (reverse queries) and the actual training loss L_train (the
masked-diffusion or next-token loss on the forward statements, with a fixed mask draw) give

    cos(g_a, g_b) = <g_a, g_b> / (|g_a| |g_b|)         per parameter group and over all parameters,

and one SGD step theta' = theta - lr * g_train changes the reverse loss by, to first order,

    Delta L_rev ~= -lr * <g_train, g_rev>,

which is compared with the actual change L_rev(theta') - L_rev(theta). Positive alignment means
training on forward data alone lowers the reverse loss.

The paper's second version splits the mechanism into value-side *storage*, which both directions
share, and query/key *routing* by relative position. Both the cosines and the predicted change
are therefore also given per part (:data:`PARTS`): ``storage`` (embeddings, values and output
projection, MLP, unembedding), ``routing`` (queries and keys) and ``other`` (norms). Since
<g, h> is a sum over parameters, the parts' predicted changes add up to the total.

Per-fact cosines (the distribution over facts) use per-example gradients from ``torch.func``
(vmap of grad over facts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from revcurse.models.transformer import TransformerLM
from revcurse.probes.inputs import ProbeBatch

GROUPS = ("embeddings", "qk", "vo", "mlp", "norms", "unembedding")
PARTS = {"storage": ("embeddings", "vo", "mlp", "unembedding"), "routing": ("qk",),
         "other": ("norms",)}  # fmt: skip
"""The mechanism's two parts (module docstring), as unions of parameter groups."""
PART_OF = {group: part for part, groups in PARTS.items() for group in groups}
Grads = dict[str, torch.Tensor]


def param_group(name: str) -> str:
    """The group of a parameter, from its HF-style name (LoRA factors of a projection, e.g.
    ``...q_proj.lora_A.default.weight``, belong to that projection's group; LLaDA's native names
    ``attn_out``, ``ff_*`` and ``up_proj`` are mapped alike)."""
    parts = set(name.split("."))
    if "embed_" in name or "wte" in parts:
        return "embeddings"
    if parts & {"q_proj", "k_proj"}:
        return "qk"
    if parts & {"v_proj", "o_proj", "attn_out"}:
        return "vo"
    if "lm_head" in parts or ("ff_out" in parts and "blocks" not in parts):
        return "unembedding"  # LLaDA's output layer is transformer.ff_out, outside the blocks
    if "mlp" in parts or parts & {"ff_proj", "up_proj", "ff_out", "gate_proj", "down_proj"}:
        return "mlp"
    return "norms"


def query_loss(logits: torch.Tensor, batch: ProbeBatch) -> torch.Tensor:
    """Mean cross-entropy of the answers at their positions (``logits``: ``[N, L, V]``): the query
    loss :func:`revcurse.objectives.answer_loss` computes, in the functional form the stacked
    one-token view differentiates under vmap (tested equal)."""
    rows = torch.arange(len(batch))
    return F.cross_entropy(logits[rows, batch.answer_pos], batch.answer_id)


def batch_loss(model: TransformerLM, batch: ProbeBatch) -> torch.Tensor:
    return query_loss(model(batch.ids), batch)


def gradients(model: TransformerLM, loss_fn: Callable[[], torch.Tensor]) -> tuple[float, Grads]:
    """``(loss, {param name: gradient})`` of a closure, without touching ``.grad``."""
    names, params = zip(*model.named_parameters(), strict=True)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.item(), {
        n: (g if g is not None else torch.zeros_like(p)).detach()
        for n, p, g in zip(names, params, grads, strict=True)
    }


def _group_cosines(a: Grads, b: Grads, lead: int) -> dict[str, torch.Tensor]:
    """Cosines per group, per part (:data:`PARTS`) and over ``all`` from per-parameter dot
    products and squared norms.

    ``lead`` leading dimensions are kept (1 for per-example gradients ``[N, *shape]``). Working
    parameter by parameter avoids concatenating the gradients (tens of MB per probe); each
    parameter's sums are float32 ``vecdot`` reductions, accumulated across parameters in float64.
    """
    sums: dict[str, list[torch.Tensor]] = {}
    for name in a:
        x, y = a[name].flatten(lead), b[name].flatten(lead)
        terms = [torch.linalg.vecdot(x, y).double(), torch.linalg.vecdot(x, x).double(),
                 torch.linalg.vecdot(y, y).double()]  # fmt: skip
        group = param_group(name)
        for key in (group, PART_OF[group], "all"):
            acc = sums.setdefault(key, [torch.zeros_like(t) for t in terms])
            for total, term in zip(acc, terms, strict=True):
                total += term
    return {key: _cosine_from_sums(dot, xx, yy) for key, (dot, xx, yy) in sums.items()}


def _cosine_from_sums(dot: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """``<x,y> / sqrt(|x|^2 |y|^2)``, 0 where either vector is 0."""
    denom = (xx * yy).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dimension; 0 where either vector is 0."""
    return _cosine_from_sums((x * y).sum(-1), (x * x).sum(-1), (y * y).sum(-1))


def group_cosines(a: Grads, b: Grads) -> dict[str, float]:
    """Cosine between two gradients, per parameter group and over all parameters (the text probe's
    per-fact cosine; the toy probe's batch cosines, and its per-fact ones through the same
    :func:`_group_cosines`)."""
    return {k: float(v) for k, v in _group_cosines(a, b, lead=0).items()}


def inner(a: Grads, b: Grads) -> float:
    """<a, b> over all parameters (float64)."""
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def inner_by_part(a: Grads, b: Grads) -> dict[str, float]:
    """<a, b> restricted to each part's parameters (:data:`PARTS`; float64)."""
    out = dict.fromkeys(PARTS, 0.0)
    for n in a:
        out[PART_OF[param_group(n)]] += float((a[n].double() * b[n].double()).sum())
    return out


def per_example_gradients(model: TransformerLM, batch: ProbeBatch) -> Grads:
    """Per-fact gradients ``{name: [N, *param.shape]}`` via ``vmap(grad(.))`` (torch.func).

    Three things keep the per-fact work batched. The embedding is looked up outside the transform
    and differentiated through its output; the per-fact gradient of the embedded inputs is
    scattered into embedding rows in one batched ``scatter_add_`` (differentiating
    ``embed_tokens.weight`` inside ``vmap`` falls back to one ``index_add`` per fact). The answer
    position and token are selected by one-hot products (indexing has the same fallback in its
    backward). The unembedding's gradient is formed in closed form outside ``vmap``. Tied
    embeddings (or an unembedding bias) use the direct route.
    """
    embed_name = "model.embed_tokens.weight"
    names = [n for n, _ in model.named_parameters()]
    if model.cfg.tie_embeddings or embed_name not in names or model.lm_head.bias is not None:
        return _per_example_direct(model, batch)
    head_name = "lm_head.weight"
    # Only the body (model.model) runs under vmap, and the unembedding is applied at the answer
    # position alone: unembedding all L positions would make vmap write dense [N, L, vocab] logit
    # gradients that are zero but for one row. The unembedding's own per-fact gradient is then
    # the outer product (softmax - onehot) x h, formed outside vmap in one broadcasted multiply
    # (as a vmapped matmul with inner size 1 it was half of the probe's time).
    params = {
        n.removeprefix("model."): p.detach()
        for n, p in model.named_parameters()
        if n not in (embed_name, head_name)
    }
    buffers = {n.removeprefix("model."): b for n, b in model.named_buffers()}
    head = model.lm_head.weight.detach()  # [V, D]
    weight = model.model.embed_tokens.weight.detach()
    embeds = weight[batch.ids]  # [N, L, D]

    def one(p: dict[str, torch.Tensor], x, at, target):
        h = functional_call(model.model, (p, buffers), (None,), {"inputs_embeds": x[None]})
        # Position and answer are picked with one-hot products, not indexing: under vmap the
        # backward of an index op falls back to one index_add per fact.
        h_pos = at @ h[0]  # [D]
        logits = F.linear(h_pos, head)  # [V]
        return -(torch.log_softmax(logits, dim=-1) * target).sum(), (h_pos, logits)

    at = F.one_hot(batch.answer_pos, embeds.shape[1]).to(embeds.dtype)  # [N, L]
    target = F.one_hot(batch.answer_id, head.shape[0]).to(embeds.dtype)  # [N, V]
    (body, d_embeds), (h_pos, logits) = vmap(
        grad(one, argnums=(0, 1), has_aux=True), in_dims=(None, 0, 0, 0)
    )(params, embeds, at, target)  # d_embeds: [N, L, D]
    grads = {f"model.{n}": g for n, g in body.items()}
    error = torch.softmax(logits, dim=-1) - target  # [N, V]: dCE/dlogits
    grads[head_name] = error[:, :, None] * h_pos[:, None, :]  # [N, V, D]
    n, length, d = d_embeds.shape
    per_row = _lazy_zeros((n, weight.shape[0], d), d_embeds.dtype)  # [N, V, D]
    per_row.scatter_add_(1, batch.ids[:, :, None].expand(n, length, d), d_embeds)
    grads[embed_name] = per_row
    return {name: grads[name] for name in names}


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor whose untouched pages are never written.

    A per-fact embedding gradient ``[N, vocab, D]`` has a few non-zero rows per fact. torch.zeros
    writes every byte of a fresh (tens of MB) allocation; numpy.zeros takes its memory from
    calloc, which hands out pages the kernel zeroes only when first touched, so the scatter
    touches a few pages per fact (about 6x faster at 256 facts here). Read-only consumers see
    zeros as usual.
    """
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    if np_dtype is None:
        return torch.zeros(shape, dtype=dtype)
    return torch.from_numpy(np.zeros(shape, dtype=np_dtype))


def _per_example_direct(model: TransformerLM, batch: ProbeBatch) -> Grads:
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def one(p: dict[str, torch.Tensor], ids, pos, ans) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (ids[None],))  # [1, L, V]
        return F.cross_entropy(logits[0].index_select(0, pos.reshape(1)), ans.reshape(1))

    return vmap(grad(one), in_dims=(None, 0, 0, 0))(
        params, batch.ids, batch.answer_pos, batch.answer_id
    )


def per_example_gradients_loop(model: TransformerLM, batch: ProbeBatch) -> Grads:
    """The same as :func:`per_example_gradients` with one backward pass per fact (a reference)."""
    per: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(batch)):
        one = ProbeBatch(batch.ids[i : i + 1], batch.answer_pos[i : i + 1],
                         batch.answer_id[i : i + 1], batch.entity_pos[i : i + 1])  # fmt: skip
        _, g = gradients(model, lambda one=one: batch_loss(model, one))
        for n, v in g.items():
            per[n].append(v)
    return {n: torch.stack(v) for n, v in per.items()}


def per_example_cosines(a: Grads, b: Grads) -> dict[str, torch.Tensor]:
    """Per-fact cosines ``{group: [N]}`` between two per-example gradients of the same facts."""
    return _group_cosines(a, b, lead=1)


def first_order_check(
    model: TransformerLM, g_step: Grads, g_rev: Grads, rev_batch: ProbeBatch, lr: float
) -> dict[str, float]:
    """Predicted (-lr <g_step, g_rev>) vs actual change of L_rev after one SGD step along g_step;
    the prediction also per part (``predicted_parts``, summing to ``predicted``)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    stepped = {n: (p - lr * g_step[n]).detach() for n, p in params.items()}
    with torch.no_grad():
        before = query_loss(model(rev_batch.ids), rev_batch).double().item()
        logits = functional_call(model, (stepped, buffers), (rev_batch.ids,))
        after = query_loss(logits, rev_batch).double().item()
    parts = {part: -lr * v for part, v in inner_by_part(g_step, g_rev).items()}
    return {"predicted": -lr * inner(g_step, g_rev), "actual": after - before, "lr": lr,
            "predicted_parts": parts}  # fmt: skip


def alignment(
    model: TransformerLM,
    batches: dict[str, ProbeBatch],
    train_loss: Callable[[], torch.Tensor],
    lr: float,
    per_example: bool,
    max_facts: int = 128,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Losses, gradient cosines and the first-order check; per-fact cosine tensors (of the first
    ``max_facts`` facts) if asked.

    ``batches`` holds ``forward`` and ``reverse`` (and ``mirror`` for an MDM). Returns a JSON-able
    summary and a dict of tensors to save.
    """
    losses: dict[str, float] = {}
    grads: dict[str, Grads] = {}
    per_fact: dict[str, Grads] = {}
    for name, batch in batches.items():
        if per_example:
            subset = batch.head(max_facts)
            per_fact[name] = per_example_gradients(model, subset)
        if per_example and len(subset) == len(batch):
            # The batch gradient of a mean loss is the mean of the per-example gradients.
            grads[name] = {n: g.mean(0) for n, g in per_fact[name].items()}
            with torch.no_grad():
                losses[name] = batch_loss(model, batch).item()
        else:
            losses[name], grads[name] = gradients(model, lambda b=batch: batch_loss(model, b))
    losses["train"], grads["train"] = gradients(model, train_loss)
    summary: dict[str, Any] = {
        "loss": losses,
        "cos_fwd_rev": group_cosines(grads["forward"], grads["reverse"]),
        "cos_train_rev": group_cosines(grads["train"], grads["reverse"]),
        "first_order": first_order_check(
            model, grads["train"], grads["reverse"], batches["reverse"], lr
        ),  # fmt: skip
    }
    if "mirror" in grads:
        summary["cos_mirror_rev"] = group_cosines(grads["mirror"], grads["reverse"])
    tensors: dict[str, torch.Tensor] = {}
    for label, other in [("fwd_rev", "forward"), ("mirror_rev", "mirror")]:
        if other not in per_fact:
            continue
        cos = per_example_cosines(per_fact[other], per_fact["reverse"])
        for group, values in cos.items():
            tensors[f"per_fact_cos_{label}.{group}"] = values
        values = cos["all"]
        summary[f"per_fact_cos_{label}"] = {
            "mean": float(values.mean()),
            "q10": float(values.quantile(0.1)),
            # quantile(0.5), not median(): for an even count torch's median is the lower of the
            # two middle values, not their mean
            "median": float(values.quantile(0.5)),
            "q90": float(values.quantile(0.9)),
            "frac_positive": float((values > 0).double().mean()),
        }
    return summary, tensors
