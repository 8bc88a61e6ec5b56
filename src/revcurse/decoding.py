"""Decoding and answer likelihoods for MDMs and ARMs.

MDM sampler (LLaDA, Nie et al. 2025, Alg. 4-5 "low-confidence remasking" with semi-autoregressive
blocks): the answer region starts fully masked and is split into ``gen_length / block_length``
blocks filled left to right. Each block gets ``steps / n_blocks`` steps; at each step the model
predicts every masked position of the block, and the ``k`` most confident predictions are kept
(``k`` spreads the block's tokens evenly over its steps, earlier steps taking the remainder). With
temperature 0 predictions are argmaxes; with temperature T > 0 they are Gumbel-max samples of
``logits / T``. With ``steps = gen_length`` one token is committed per step.

ARM: greedy next-token decoding.

Likelihoods of a given answer (the decoding-free comparison):

* ARM, exact: ``log p(a | prompt) = sum_j log p(a_j | prompt, a_<j)``.
* MDM, a Monte-Carlo lower bound (LLaDA Eq. 6, the low-variance form): for an answer of length L,
  draw ``l`` uniformly from ``{1..L}``, mask ``l`` answer tokens uniformly at random and score
  ``(L / l) * sum_{masked j} log p(a_j | prompt, a_unmasked)``. For a model whose conditionals are
  those of one joint distribution its expectation is exactly ``log p(a | prompt)`` (the any-order
  chain rule); for any other model it is the bound LLaDA evaluates with. The ``l`` of the ``n``
  draws are stratified with one shared random offset (:func:`stratified_mask_counts`), so their mean
  is unbiased for every ``L`` and ``n`` and has less variance than independent draws.

Every function takes ``model``: a callable ``ids [B, L] (+ attention_mask) -> logits [B, L, V]``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from revcurse.config import EXACT_BOUND_MAX_LENGTH
from revcurse.data.text import fill_row
from revcurse.objectives import logits_at

Model = Callable[..., torch.Tensor]
Suffix = Sequence[int] | Sequence[Sequence[int]]
"""Tokens after the answer region: one sequence for every row, or one per row."""


def per_row(suffix: Suffix, n: int) -> list[list[int]]:
    """``suffix`` as one list of ids per row."""
    if len(suffix) and not isinstance(suffix[0], int):
        if len(suffix) != n:
            raise ValueError(f"{len(suffix)} suffixes for {n} rows")
        return [list(s) for s in suffix]  # type: ignore[arg-type]
    return [list(suffix)] * n  # type: ignore[arg-type]


def model_device(model: Model) -> torch.device:
    """Where ``model``'s parameters live (CPU for plain callables); inputs are moved there."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


def transfer_counts(n_tokens: int, steps: int) -> list[int]:
    """How many tokens each of ``steps`` steps commits (LLaDA ``get_num_transfer_tokens``)."""
    base, extra = divmod(n_tokens, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def _gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """``argmax(logits / T + Gumbel noise)`` (a sample of ``softmax(logits / T)``; LLaDA's
    ``exp(logits) / E^T`` with ``E ~ Exp(1)`` has the same argmax law); the argmax at ``T = 0``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(u)).to(logits.device)
    return (logits.double() / temperature + gumbel).argmax(dim=-1)


@torch.no_grad()
def mdm_generate(
    model: Model,
    prompts: Sequence[Sequence[int]],
    gen_length: int,
    *,
    mask_id: int,
    pad_id: int,
    steps: int | None = None,
    block_length: int | None = None,
    temperature: float = 0.0,
    suffix: Suffix = (),
    generator: torch.Generator | None = None,
    trace: list[torch.Tensor] | None = None,
    fill: tuple[int, int] | None = None,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    confidence_dtype: str = "float64",
    banned: Sequence[int] = (),
    unconfident: Sequence[int] = (),
    batch_size: int = 0,
) -> torch.Tensor:
    """Fill ``gen_length`` masked tokens after each prompt; returns the answers ``[B, gen_length]``.

    ``steps`` defaults to ``gen_length`` (one token per step) and ``block_length`` to
    ``gen_length`` (one block: pure low-confidence remasking). ``suffix`` tokens follow the answer
    region: EOS as in training, or the rest of a statement for an infilling (mirror) query, one
    per row. If ``trace`` is a list, the state after every step is
    appended to it (tests use it to check the unmasking order). ``fill = (token, length)`` extends
    every row with ``token`` up to ``length`` tokens, for models trained on sequences padded that
    way (an MDM pre-trained with EOS padding sees its usual EOS tail).

    LLaDA's options (its ``generate``): ``cfg_scale`` > 0 is unsupervised classifier-free
    guidance, ``un + (cfg_scale + 1) * (cond - un)`` with ``un`` the logits of the same state with
    every given token (prompt, suffix, fill) masked; ``remasking="random"`` commits random masked
    positions instead of the most confident; ``banned`` tokens are never predicted (its
    ``logits_eos_inf``: EOS); predictions of an ``unconfident`` token get confidence 0, so they
    are committed last (its ``confidence_eos_eot_inf``: EOS and EoT; LLaDA's code suppresses both
    only at temperature 0, where its noisy and plain logits are one tensor, and EoT alone above).
    ``confidence_dtype``: the softmax of the confidences in float64 or in the logits' own dtype
    (``model``, as LLaDA's current code does: in bf16 it changes which of near-equal confidences
    wins). Only the masked positions of the current block are unembedded (``[N, V]``, never
    ``[B, L, V]``), and ``batch_size`` > 0 fills that many rows at a time: memory is bounded by the
    batch, not the split. (At temperature 0 the answers do not depend on the batching; above it
    the noise is drawn per batch.)
    """
    steps = gen_length if steps is None else steps
    block_length = gen_length if block_length is None else block_length
    if gen_length % block_length:
        raise ValueError(
            f"gen_length {gen_length} is not a multiple of block_length {block_length}"
        )
    n_blocks = gen_length // block_length
    if steps % n_blocks or steps < n_blocks:
        raise ValueError(f"steps {steps} must be a positive multiple of the {n_blocks} blocks")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking {remasking!r}: expected low_confidence or random")
    steps_per_block = steps // n_blocks

    suffixes = per_row(suffix, len(prompts))
    device = model_device(model)

    def one_batch(prompts: Sequence[Sequence[int]], suffixes: list[list[int]]) -> torch.Tensor:
        batch = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])
        rows = [
            fill_row(list(p) + [mask_id] * gen_length + s, fill)
            for p, s in zip(prompts, suffixes, strict=True)
        ]
        total = max(len(r) for r in rows)
        x = torch.full((batch, total), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            x[i, : len(row)] = torch.tensor(row)
        x = x.to(device)
        real = x != pad_id  # [B, L]: padding only ever follows the suffix
        given = real & (x != mask_id)  # [B, L]: what classifier-free guidance hides
        columns = torch.arange(total, device=device)[None, :]  # [1, L]
        start = lengths.to(device)[:, None]  # [B, 1] first answer position of each row

        for b in range(n_blocks):
            lo, hi = start + b * block_length, start + (b + 1) * block_length
            in_block = (columns >= lo) & (columns < hi)  # [B, L]
            for k in transfer_counts(block_length, steps_per_block):
                if k == 0:
                    continue
                candidate = in_block & (x == mask_id)  # [B, L]
                logits = _guided_logits(
                    model, x, real, candidate, given, mask_id, cfg_scale
                )  # [N, V]
                if banned:
                    logits[:, list(banned)] = -math.inf
                pred = _gumbel_argmax(logits, temperature, generator)  # [N]
                if remasking == "random":
                    chosen_conf = torch.rand(pred.shape, generator=generator, dtype=torch.float64)
                else:
                    scored = logits
                    if unconfident:
                        scored = logits.clone()
                        scored[:, list(unconfident)] = -math.inf
                    if confidence_dtype == "float64":
                        scored = scored.double()
                    probs = torch.softmax(scored, dim=-1)  # [N, V]
                    chosen_conf = probs.gather(-1, pred[:, None].to(device))[:, 0].double().cpu()
                conf = torch.full(x.shape, -math.inf, dtype=torch.float64)  # [B, L]
                conf[candidate.cpu()] = chosen_conf
                full_pred = torch.zeros(x.shape, dtype=torch.long)
                full_pred[candidate.cpu()] = pred.cpu()
                chosen = conf.topk(k, dim=-1).indices  # [B, k]
                x.scatter_(1, chosen.to(device), full_pred.gather(1, chosen).to(device))
                if trace is not None:
                    trace.append(x.clone())
        x = x.cpu()
        return torch.stack(
            [x[i, int(lengths[i]) : int(lengths[i]) + gen_length] for i in range(batch)]
        )

    return _in_batches(
        len(prompts), batch_size, lambda rows: one_batch(prompts[rows], suffixes[rows])
    )


def _guided_logits(
    model: Model,
    x: torch.Tensor,  # [B, L]
    real: torch.Tensor,  # [B, L]
    where: torch.Tensor,  # [B, L] bool
    given: torch.Tensor,  # [B, L] bool
    mask_id: int,
    cfg_scale: float,
) -> torch.Tensor:
    """Logits at ``where`` ``[N, V]``, guided (LLaDA's unsupervised classifier-free guidance)
    when ``cfg_scale`` > 0."""
    cond = logits_at(model, x, real, where)
    if cfg_scale <= 0:
        return cond
    un = logits_at(model, x.masked_fill(given, mask_id), real, where)
    return un + (cfg_scale + 1.0) * (cond - un)


DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@torch.no_grad()
def dream_generate(
    model: Model,
    prompts: Sequence[Sequence[int]],
    gen_length: int,
    *,
    mask_id: int,
    pad_id: int,
    steps: int | None = None,
    alg: str = "entropy",
    alg_temp: float = 0.0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eps: float = 1e-3,
    confidence_dtype: str = "model",
    generator: torch.Generator | None = None,
    batch_size: int = 0,
) -> torch.Tensor:
    """Dream's own sampler (its ``diffusion_generate``), answers ``[B, gen_length]``.

    Time runs from 1 to ``eps`` over ``steps`` equal intervals; going from ``t`` to ``s`` each row
    commits ``floor(m * (1 - s / t))`` of its ``m`` masked positions (all that remain at the last
    step). ``alg`` picks them: ``maskgit_plus`` by the probability of the predicted token,
    ``topk_margin`` by the gap between the two most probable tokens, ``entropy`` by the negative
    entropy of the prediction (the most certain first), taken as the top ones or, with ``alg_temp``
    > 0, drawn from ``softmax(confidence / alg_temp)``; ``origin`` commits each masked position
    independently with probability ``1 - s / t`` (the absorbing-diffusion reverse step).
    Predictions are argmaxes at temperature 0, else draws from ``softmax(logits / T)`` filtered to
    ``top_p`` / ``top_k``. Each row is decoded as Dream decodes a batch of one (its batched code
    counts masks over the whole batch); the softmax runs in the logits' dtype unless
    ``confidence_dtype`` is float64. ``model`` gives position i's prediction at row i (revcurse's
    Dream wrapper realigns Dream's shifted logits).
    """
    steps = gen_length if steps is None else steps
    if alg not in DREAM_ALGS:
        raise ValueError(f"alg {alg!r}: expected one of {', '.join(DREAM_ALGS)}")

    device = model_device(model)
    times = torch.linspace(1, eps, steps + 1, dtype=torch.float64)

    def one_batch(prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        batch = len(prompts)
        lengths = [len(p) for p in prompts]
        total = max(lengths) + gen_length
        x = torch.full((batch, total), pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            x[i, : len(p) + gen_length] = torch.tensor(list(p) + [mask_id] * gen_length)
        x = x.to(device)
        real = x != pad_id  # [B, L]
        for i in range(steps):
            masked = x == mask_id  # [B, L]
            if not masked.any():
                break
            logits = logits_at(model, x, real, masked)  # [N, V]
            if confidence_dtype == "float64":
                logits = logits.double()
            rows = masked.nonzero()[:, 0].cpu()  # [N]: the row of each masked position
            ratio = 1.0 - float(times[i + 1] / times[i]) if i < steps - 1 else 1.0
            conf, pred = _dream_tokens(logits, alg, temperature, top_p, top_k, generator)  # [N]
            if alg == "origin":
                chosen = torch.rand(len(rows), generator=generator, dtype=torch.float64) < ratio
            else:
                chosen = _dream_commits(rows, batch, conf, ratio, i == steps - 1, alg_temp,
                                        generator)  # fmt: skip
            where = masked.nonzero()[chosen.to(device)]  # [n, 2]
            x[where[:, 0], where[:, 1]] = pred.to(device)[chosen.to(device)]
        x = x.cpu()
        return torch.stack([x[i, lengths[i] : lengths[i] + gen_length] for i in range(batch)])

    return _in_batches(len(prompts), batch_size, lambda rows: one_batch(prompts[rows]))


def _dream_commits(
    rows: torch.Tensor,  # [N]: the row of each masked position
    n_rows: int,
    conf: torch.Tensor,  # [N]
    ratio: float,
    last: bool,
    alg_temp: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Which masked positions each row commits ``[N]`` (bool): ``floor(m * ratio)`` of its ``m``
    (all of them at the last step), the most confident, or drawn from
    ``softmax(confidence / alg_temp)`` when ``alg_temp`` > 0."""
    chosen = torch.zeros(len(rows), dtype=torch.bool)
    for b in range(n_rows):
        mine = (rows == b).nonzero()[:, 0]
        k = len(mine) if last else int(len(mine) * ratio)
        if k == 0:
            continue
        if alg_temp > 0:
            weights = torch.softmax(conf[mine].double() / alg_temp, dim=-1)
            pick = torch.multinomial(weights, k, generator=generator)
        else:
            pick = conf[mine].topk(k).indices
        chosen[mine[pick]] = True
    return chosen


def _dream_tokens(
    logits: torch.Tensor,  # [N, V]
    alg: str,
    temperature: float,
    top_p: float,
    top_k: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's prediction and its confidence at each masked position ``([N], [N])``."""
    if temperature > 0:
        logits = logits / temperature
    floor = torch.finfo(logits.dtype).min
    if 0 < top_p < 1:  # nucleus: keep the smallest set whose mass reaches top_p
        ordered, order = logits.sort(dim=-1, descending=True)
        mass = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = mass > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), floor)
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, floor)
    probs = torch.softmax(logits, dim=-1)  # [N, V]
    if temperature > 0:
        pred = torch.multinomial(probs.double().cpu(), 1, generator=generator)[:, 0].to(
            logits.device
        )
        conf = probs.gather(-1, pred[:, None])[:, 0]
    else:
        conf, pred = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return conf.cpu(), pred.cpu()


@torch.no_grad()
def arm_generate(
    model: Model,
    prompts: Sequence[Sequence[int]],
    gen_length: int,
    *,
    eos_id: int | None = None,
    batch_size: int = 0,
) -> torch.Tensor:
    """Greedy continuation of each prompt by ``gen_length`` tokens ``[B, gen_length]``.

    Prompts of equal length are decoded together (no padding inside a causal context), at most
    ``batch_size`` at a time (0: all); a row that produced ``eos_id`` is filled with ``eos_id``
    from there on. A model with a ``greedy`` method (the Hugging Face ARMs: transformers'
    ``generate`` with its KV cache) decodes with it; any other model reruns the sequence each step
    and unembeds only its last position.
    """
    out = torch.empty(len(prompts), gen_length, dtype=torch.long)
    device = model_device(model)
    cached = getattr(model, "greedy", None) if eos_id is not None else None
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)

    def decode(rows: list[int]) -> torch.Tensor:  # [b, gen_length]
        x = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
        if cached is not None:
            return cached(x, gen_length, eos_id).cpu()
        new = torch.empty(len(rows), gen_length, dtype=torch.long)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for j in range(gen_length):
            last = torch.zeros(x.shape, dtype=torch.bool, device=device)
            last[:, -1] = True
            nxt = logits_at(model, x, None, last).argmax(dim=-1)  # [b]
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            new[:, j] = nxt.cpu()
            x = torch.cat([x, nxt[:, None]], dim=1)
        return new

    for group in by_length.values():
        out[group] = _in_batches(len(group), batch_size, lambda rows, g=group: decode(g[rows]))
    return out


def _in_batches(n: int, batch_size: int, decode: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``decode`` of consecutive slices of at most ``batch_size`` of ``n`` rows (0: all at once),
    concatenated along the rows: a decoder's memory is bounded by its batch, not by ``n``."""
    step = batch_size if batch_size > 0 else n
    return torch.cat([decode(slice(i, i + step)) for i in range(0, n, step)])


def truncate_at(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The tokens before the first of ``stop_ids`` (EOS, padding)."""
    out = []
    for i in ids:
        if i in stop_ids:
            break
        out.append(int(i))
    return out


_rows_read: Callable[[int], None] | None = None
"""Told how many rows each forward pass of :func:`_read_rows` read, while :func:`counting_rows`
is active (a progress bar's update)."""


@contextlib.contextmanager
def counting_rows(update: Callable[[int], None]) -> Iterator[None]:
    """While inside, every forward pass of the likelihood scorers calls ``update(rows)``: scoring
    thousands of rows shows progress instead of minutes of silence."""
    global _rows_read
    previous, _rows_read = _rows_read, update
    try:
        yield
    finally:
        _rows_read = previous


SCORE_BATCH_ROWS = 64
"""Sequences read per forward pass when scoring answer likelihoods: rows of every query and
candidate share forwards (memory grows with this, not with the number of queries)."""


def _read_rows(
    model: Model,
    rows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    batch_rows: int = SCORE_BATCH_ROWS,
) -> Iterator[torch.Tensor]:
    """Log-probabilities of target tokens, ``batch_rows`` sequences per forward pass.

    Each row is ``(ids [L], where [L] bool, targets [n])``: the model reads ``ids`` and is scored
    at the ``n`` positions ``where`` on ``targets`` (the next token for an ARM, the clean token
    under a mask for an MDM). Yields, row by row in input order, ``[n]`` float64 ``log p(target)``.
    Rows of different lengths are right-padded and their padding hidden by the attention mask,
    which changes no real position's logits (up to float rounding); only the scored positions
    are unembedded. Rows are drawn from ``rows`` lazily, so a generator that builds them (and
    draws their masks) runs in step with the reads."""
    device = model_device(model)
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, max(1, batch_rows))):
        lengths = [len(ids) for ids, _, _ in chunk]
        width = max(lengths)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # [b, L] (0 pads, never read)
        where = torch.zeros(len(chunk), width, dtype=torch.bool)  # [b, L]
        for i, (row, at, _) in enumerate(chunk):
            ids[i, : len(row)], where[i, : len(row)] = row, at
        real = None
        if min(lengths) < width:
            real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [b, L]
            real = real.to(device)
        logits = logits_at(model, ids.to(device), real, where.to(device)).cpu()  # [N, V]
        logp = torch.log_softmax(logits.double(), dim=-1)
        targets = torch.cat([t for _, _, t in chunk])  # [N] in the row-major order of where
        picked = logp.gather(-1, targets[:, None])[:, 0]  # [N]
        if _rows_read is not None:
            _rows_read(len(chunk))
        yield from picked.split([len(t) for _, _, t in chunk])


@torch.no_grad()
def arm_answer_logprob(
    model: Model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    batch_rows: int = SCORE_BATCH_ROWS,
) -> torch.Tensor:
    """Exact ``log p(answer | prompt)`` of a left-to-right model, one value per pair ``[B]``
    (float64), ``batch_rows`` rows per forward pass. A causal model is teacher-forced, the whole
    answer in one row. A model that attends both ways within what it reads (``attends_causally``
    false: the prefix_lm objective's) would let every answer position see the tokens after it,
    so it reads each prefix ``prompt + answer[:k]`` alone, one row per answer token, as it was
    trained and as :func:`arm_generate` decodes."""
    each_prefix = not getattr(model, "attends_causally", True)

    def rows():
        for p, a in zip(prompts, answers, strict=True):
            if each_prefix:
                for k in range(len(a)):
                    ids = torch.tensor(list(p) + list(a[:k]))  # [len(p) + k]
                    where = torch.zeros(len(ids), dtype=torch.bool)
                    where[-1] = True  # the prefix's last position predicts answer[k]
                    yield ids, where, torch.tensor([a[k]])
                continue
            ids = torch.tensor(list(p) + list(a))  # [L]
            where = torch.zeros(len(ids), dtype=torch.bool)
            where[len(p) - 1 : len(p) + len(a) - 1] = True  # the positions predicting the answer
            yield ids, where, torch.tensor(list(a))

    counts = [len(a) for a in answers] if each_prefix else [1] * len(prompts)
    return _sums(_read_rows(model, rows(), batch_rows), counts)


def stratified_mask_counts(
    length: int, n_samples: int, generator: torch.Generator | None = None
) -> list[int]:
    """``n_samples`` mask counts for the uniform law on ``1..length``, stratified.

    Draw ``k`` takes ``l_k = 1 + floor(length * (k + U) / n_samples)`` with one ``U ~ U[0, 1)``
    shared by all draws (systematic sampling). ``(k + U) / n`` then covers ``[0, 1)`` exactly once
    over the draws, so ``mean_k f(l_k)`` has expectation ``(1 / length) * sum_l f(l)`` whether or not
    ``length`` divides ``n_samples``. (Without the offset, ``1 + floor(k length / n)`` over-weights
    some counts unless ``length`` divides ``n``: a biased estimate.)
    """
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return [min(length, 1 + int(length * (k + u) / n_samples)) for k in range(n_samples)]


def _masked_rows(
    clean: torch.Tensor,  # [L] the sequence with the answer in place
    mask: torch.Tensor,  # [n, L] bool: the answer positions each row masks
    mask_id: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`_read_rows` rows that score each masked token's clean value at its position."""
    for row in mask:
        yield clean.masked_fill(row, mask_id), row, clean[row]


def _sums(per_row: Iterable[torch.Tensor], counts: Sequence[int]) -> torch.Tensor:
    """``[len(counts)]`` float64: the sums of consecutive groups of ``counts[i]`` rows' values."""
    per_row = iter(per_row)
    return torch.tensor([sum(float(next(per_row).sum()) for _ in range(k)) for k in counts],
                        dtype=torch.float64)  # fmt: skip


@torch.no_grad()
def mdm_answer_logprob(
    model: Model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mask_id: int,
    n_samples: int = 16,
    suffix: Suffix = (),
    generator: torch.Generator | None = None,
    fill: tuple[int, int] | None = None,
    batch_rows: int = SCORE_BATCH_ROWS,
    keep: Sequence[bool] | None = None,
) -> torch.Tensor:
    """Monte-Carlo lower bound on ``log p(answer | prompt, suffix)`` of a masked diffusion model
    ``[B]`` (``suffix`` and ``fill`` as in :func:`mdm_generate`), the draws of every answer read
    ``batch_rows`` at a time. The masks are drawn answer by answer in order, so the estimate does
    not depend on ``batch_rows``. ``keep``: read only these answers (NaN for the others), with
    every answer's masks still drawn in order: a process scoring its share of the answers gets
    the very draws one process scoring all of them would.

    For a single-token answer every draw masks that token, so the bound is exact:
    ``log p(a | prompt [MASK] suffix)``.
    """
    counts: list[list[int]] = []  # per answer, the number of tokens each draw masks

    def rows():
        for p, a, s in zip(prompts, answers, per_row(suffix, len(prompts)), strict=True):
            counts.append(stratified_mask_counts(len(a), n_samples, generator))
            clean = torch.tensor(fill_row(list(p) + list(a) + s, fill))
            mask = torch.zeros(n_samples, len(clean), dtype=torch.bool)  # [n, L]
            for k, count in enumerate(counts[-1]):
                mask[k, torch.randperm(len(a), generator=generator)[:count] + len(p)] = True
            if keep is None or keep[len(counts) - 1]:
                yield from _masked_rows(clean, mask, mask_id)

    read = _read_rows(model, rows(), batch_rows)
    out = torch.empty(len(prompts), dtype=torch.float64)
    for i, a in enumerate(answers):
        if keep is not None and not keep[i]:
            out[i] = float("nan")
            continue
        per_draw = torch.stack([next(read).sum() for _ in range(n_samples)])  # [n]
        out[i] = (per_draw * len(a) / torch.tensor(counts[i], dtype=torch.float64)).mean()
    return out


@torch.no_grad()
def mdm_exact_bound(
    model: Model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mask_id: int,
    suffix: Suffix = (),
    fill: tuple[int, int] | None = None,
    batch_rows: int = SCORE_BATCH_ROWS,
) -> torch.Tensor:
    """The expectation of :func:`mdm_answer_logprob`'s Monte-Carlo bound, computed exactly ``[B]``:
    ``(1 / L) sum_{l=1..L} (L / l) mean_{|S| = l} sum_{j in S} log p(a_j | prompt, a masked at S)``
    over every non-empty set S of masked answer positions (``2^L - 1`` rows per answer, read
    ``batch_rows`` at a time). What any number of Monte-Carlo draws estimates, without their
    noise: the limit the draws are measured against, affordable for short answers (the toy's
    entities; at most :data:`EXACT_BOUND_MAX_LENGTH` tokens)."""
    for a in answers:
        if len(a) > EXACT_BOUND_MAX_LENGTH:
            raise ValueError(f"an answer of {len(a)} tokens has 2^{len(a)} - 1 masked sets; the "
                             f"exact bound enumerates at most {EXACT_BOUND_MAX_LENGTH} tokens")  # fmt: skip

    built: dict[int, torch.Tensor] = {}

    def sets_of(length: int) -> torch.Tensor:  # [2^L - 1, L]: every non-empty masked set
        if length not in built:
            built[length] = torch.tensor(
                [[(k >> j) & 1 for j in range(length)] for k in range(1, 2**length)],
                dtype=torch.bool,
            )
        return built[length]

    def rows():
        for p, a, s in zip(prompts, answers, per_row(suffix, len(prompts)), strict=True):
            clean = torch.tensor(fill_row(list(p) + list(a) + s, fill))
            sets = sets_of(len(a))
            mask = torch.zeros(len(sets), len(clean), dtype=torch.bool)
            mask[:, len(p) : len(p) + len(a)] = sets
            yield from _masked_rows(clean, mask, mask_id)

    read = _read_rows(model, rows(), batch_rows)
    out = torch.empty(len(prompts), dtype=torch.float64)
    for i, a in enumerate(answers):
        size = sets_of(len(a)).sum(-1)  # [2^L - 1] l = |S|
        per_set = torch.stack([next(read).sum() for _ in range(len(size))])
        sets_of_size = torch.tensor([math.comb(len(a), int(k)) for k in size], dtype=torch.float64)
        # each set's share: (1 / L) * (L / l) / C(L, l) = 1 / (l * C(L, l))
        out[i] = (per_set / (size.double() * sets_of_size)).sum()
    return out


@torch.no_grad()
def mdm_one_step_logprob(
    model: Model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mask_id: int,
    suffix: Suffix = (),
    fill: tuple[int, int] | None = None,
    batch_rows: int = SCORE_BATCH_ROWS,
) -> torch.Tensor:
    """The answer read in one step ``[B]`` (float64): every answer token masked at once,
    ``sum_j log p(a_j | prompt, the whole answer masked)``, one row per answer. The ``|S| = L``
    term of :func:`mdm_exact_bound` times ``L``: the only state a model trained with whole-entity
    masking ever reads, and what the sampler in one step (``steps=1``) maximises, so the
    answer it fills ranks first by this score. A product of per-position marginals, not a
    distribution over answers (it ignores how the answer's tokens depend on each other)."""

    def rows():
        for p, a, s in zip(prompts, answers, per_row(suffix, len(prompts)), strict=True):
            clean = torch.tensor(fill_row(list(p) + list(a) + s, fill))
            mask = torch.zeros(1, len(clean), dtype=torch.bool)
            mask[0, len(p) : len(p) + len(a)] = True
            yield from _masked_rows(clean, mask, mask_id)

    return _sums(_read_rows(model, rows(), batch_rows), [1] * len(prompts))


@torch.no_grad()
def mdm_chain_logprob(
    model: Model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mask_id: int,
    suffix: Suffix = (),
    fill: tuple[int, int] | None = None,
    batch_rows: int = SCORE_BATCH_ROWS,
) -> torch.Tensor:
    """``log p(answer | prompt, suffix)`` of a masked diffusion model read as a left-to-right chain
    ``[B]``: ``sum_t log p(a_t | prompt, a_<t, a_>=t masked, suffix)``, the exact probability that
    unmasking the answer one token per step, left to right, produces it (``suffix`` and ``fill``
    as in :func:`mdm_generate`).

    Unlike the Monte-Carlo bound of :func:`mdm_answer_logprob` this is a normalised distribution
    over the answers of one length (it sums to 1 over them; tested). That matters for ranking
    memorised multi-token candidates: a bidirectional model that sees most of a wrong candidate
    recognises it from its own visible tokens and fills the rest confidently, so the bound's
    partly masked draws barely tell candidates apart; the chain starts from the answer fully
    masked and reveals only what came before. ``len(answer)`` rows per query, read
    ``batch_rows`` at a time. For a one-token answer both equal
    ``log p(a | prompt [MASK] suffix)``."""

    def rows():
        for p, a, s in zip(prompts, answers, per_row(suffix, len(prompts)), strict=True):
            length, start = len(a), len(p)
            clean = torch.tensor(fill_row(list(p) + list(a) + s, fill))
            for t in range(length):  # row t reveals a_<t and is scored on a_t
                ids = clean.clone()
                ids[start + t : start + length] = mask_id
                where = torch.zeros(len(clean), dtype=torch.bool)
                where[start + t] = True
                yield ids, where, clean[where]

    return _sums(_read_rows(model, rows(), batch_rows), [len(a) for a in answers])
