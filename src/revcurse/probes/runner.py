"""Run the mechanism probes on a model over training, and summarise what they recorded.

One :class:`ProbeRunner` serves every run kind (toy, from-scratch text, LoRA fine-tuning, a saved
checkpoint probed afterwards): it decides when a probe is due, appends each record to a JSONL file
(and its tensors, if any, to ``step-<N>.safetensors`` beside it), keeps the records of a resumed
run up to its checkpoint, and times itself. *What* is measured is a :data:`Measure` handed to it:

* :func:`toy_measure` on one-token toy facts (toy entities of several tokens are read as
  multi-token facts, below): the attention coupling per pairing
  (``record["attention"][pairing]``, with per-layer/head/fact ``s_<pairing>`` / ``s_rev_<pairing>``
  tensors), batch gradient cosines per parameter group and part, the losses, the first-order check,
  per-fact cosines by vmap, signal alignment; at the final step also the coupling as a function of
  distance;
* :func:`revcurse.probes.hf.probe_record` on multi-token facts (``record["pairings"][pairing]``).

:func:`summarise` reads either record kind into the same headline labels (:data:`LABELS` says
which quantity each names), so a run's ``summary.json["probe"]`` has one shape whatever the run.
Probes draw no randomness from the training generator, so a run trains identically with and
without them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import ProbeConfig, ToyDataConfig
from revcurse.data.schema import ReversalDataset, one_way
from revcurse.data.tokenize import Vocab
from revcurse.probes.attention import coupling, coupling_vs_distance
from revcurse.probes.gradients import PARTS, alignment
from revcurse.probes.inputs import (
    PAIRINGS,
    ProbeBatch,
    pairings_for,
    stack_queries,
    toy_pairs,
    toy_queries,
)
from revcurse.probes.signals import query_signals, signal_alignment
from revcurse.tracking import MetricsLog

Measure = Callable[[Any, int, bool], tuple[dict[str, Any], dict[str, torch.Tensor]]]
"""``(model, step, final) -> (JSON record, tensors to save)``; the model is in eval mode."""


class ProbeRunner:
    """Probes a model at chosen steps: every ``every`` steps and at ``steps``, plus whatever the
    caller asks for (the step before training, the final one). Records are appended to ``path``
    (none written when it is None); ``keep`` keeps the records already there (a resumed run, see
    :meth:`truncate`), else they are dropped. ``enabled=False`` (a process other than the main
    one, too) makes every call a no-op and touches no file. ``log``: a run's metrics log whose
    trackers also show each record's labelled numbers (``probe/<label>``)."""

    def __init__(
        self,
        measure: Measure,
        path: Path | None,
        *,
        every: int = 0,
        steps: Iterable[int] = (),
        enabled: bool = True,
        keep: bool = False,
        log: MetricsLog | None = None,
    ) -> None:
        self.measure, self.path, self.log = measure, path, log
        self.every, self.steps, self.enabled = every, frozenset(steps), enabled
        self.records: list[dict[str, Any]] = []
        self.seconds = 0.0
        if path is not None and enabled and not keep:
            path.unlink(missing_ok=True)

    def due(self, step: int) -> bool:
        """Whether the cadence or the explicit steps ask for a probe after ``step`` steps."""
        return self.enabled and ((self.every > 0 and step % self.every == 0) or step in self.steps)

    def truncate(self, step: int) -> None:
        """Resume after ``step``: keep (and reload) only the records up to it."""
        if self.path is not None:
            self.records = files.truncate_jsonl(self.path, step)

    def __call__(self, model: Any, step: int, final: bool = False) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            record, tensors = self.measure(model, step, final)
        finally:
            model.train(was_training)
        record["seconds"] = time.perf_counter() - start
        self.seconds += record["seconds"]
        self.records.append(record)
        if self.path is not None:
            if tensors:
                stem = self.path.name.removesuffix("probes.jsonl")  # "" or "posthoc-"
                target = self.path.parent / f"{stem}step-{step:07d}.safetensors"
                files.save_tensors(target, tensors, {"step": str(step)})
            files.append_jsonl(self.path, record)
        if self.log is not None:
            self.log.track("probe", step, record_values(record))
        return record

    def at(self, step: int) -> dict[str, Any] | None:
        """The record of ``step`` (the one before training, after a resume too)."""
        return next((r for r in self.records if r["step"] == step), None)

    def summary(self) -> dict[str, Any]:
        """:func:`summarise` of the records (their time is :attr:`seconds`, kept out so that a
        resumed run's summary equals an uninterrupted one's)."""
        return summarise(self.records)


def toy_measure(
    probe: ProbeConfig,
    data: ToyDataConfig,
    dataset: ReversalDataset,
    vocab: Vocab,
    causal: bool,
    train_loss: Callable[[Any], torch.Tensor],
) -> Measure:
    """The toy probes of one run: ``data`` is the recipe of its facts (rebuilt at other distances
    for the final distance curve); ``train_loss(model)`` the run's training loss with a fixed mask
    draw (a deterministic function of the weights) for the training-gradient cosine and the
    first-order check."""
    if data.entity_tokens > 1:  # multi-token entities: the probes of natural-language facts
        from revcurse.probes.hf import text_measure

        return text_measure(toy_pairs(dataset, vocab, causal), causal=causal,
                            mask_id=vocab.mask_id, attention=probe.attention)  # fmt: skip
    directions = ["forward", "reverse"] + ([] if causal else ["mirror"])
    queries = {d: toy_queries(dataset, vocab, d) for d in directions}
    batches: dict[str, ProbeBatch] = {
        d: stack_queries(q, causal, vocab.mask_id, vocab.pad_id) for d, q in queries.items()
    }

    def measure(model: Any, step: int, final: bool):
        pc = probe
        record: dict[str, Any] = {"step": step, "final": final}
        tensors: dict[str, torch.Tensor] = {}
        if pc.attention:
            record["attention"], record["distance"] = {}, {}
            scores: dict = {}  # the reverse queries' scores, shared by the pairings
            for pairing in pairings_for(one_way(model)):
                c = coupling(model, data, vocab, pairing, cache=scores)
                record["attention"][pairing] = {
                    "delta": c["delta"],
                    "pearson": c["pearson"].tolist(),  # [layers][heads]
                    "spearman": c["spearman"].tolist(),
                    "mean_pearson": float(c["pearson"].mean()),
                    "mean_spearman": float(c["spearman"].mean()),
                    # mean over facts, [layers][heads]: the same heads reading the entity?
                    "mass_pair": c["mass_pair"].mean(-1).tolist(),
                    "mass_rev": c["mass_rev"].mean(-1).tolist(),
                }
                tensors[f"s_{pairing}"], tensors[f"s_rev_{pairing}"] = c["s_pair"], c["s_rev"]
                if final and pc.distances:
                    by_distance = coupling_vs_distance(
                        model, data, vocab, pairing, pc.distances, scores
                    )
                    record["distance"][pairing] = [
                        {"n_filler": d["n_filler"], "delta": d["delta"],
                         "pearson": d["pearson"].tolist(), "spearman": d["spearman"].tolist()}
                        for d in by_distance
                    ]  # fmt: skip
            if not record["distance"]:
                del record["distance"]
        if pc.gradients:
            every = pc.per_example_every
            per_example = pc.per_example and (final or (every > 0 and step % every == 0))
            summary, extra = alignment(
                model, batches, lambda: train_loss(model), pc.first_order_lr,
                per_example, pc.per_example_max_facts,
            )  # fmt: skip
            record["gradients"] = summary
            tensors.update(extra)
        if pc.signals:

            def signals(direction: str) -> dict[str, torch.Tensor]:
                return query_signals(model, queries[direction], causal=model.causal,
                                     mask_id=vocab.mask_id)  # fmt: skip

            rev = signals("reverse")
            record["signals"] = {
                pairing: signal_alignment(signals(pairing), rev)
                for pairing in pairings_for(one_way(model))
            }
        return record, tensors

    return measure


GRADIENT_PAIRS = {"forward": "fwd_rev", "mirror": "mirror_rev"}
"""The gradient labels' name of each pairing (``train_rev``: the training loss, toy runs only)."""

LABELS = {
    "attention_pearson_<pairing>": "Pearson r of S_pair and S_rev over facts, mean over layers "
    "and heads",
    "attention_pearson_<pairing>_layer<n>": "the same, mean over the heads of layer n",
    "attention_spearman_<pairing>": "Spearman's rank correlation, mean over layers and heads (toy)",
    "signal_u_cosine_<pairing>": "cosine of the back-propagated signals u of the paired and the "
    "reverse query",
    "per_fact_cos_<pair>[_<part>]": "gradient cosine of the paired and the reverse query, per fact "
    "then mean over facts (all trainable parameters, or one part); pair = fwd_rev | mirror_rev",
    "grad_cos_<pair>[_<part>]": "cosine of the batch gradients of all facts' paired and reverse "
    "losses (toy; pair also train_rev, the training loss)",
    "first_order_predicted|actual|<part>": "the reverse loss change of one SGD step along the "
    "training gradient, predicted to first order (and per part) and actual (toy)",
    "n_facts_<pairing>": "facts probed in the pairing (text)",
}
"""What each label of :func:`summarise` names; every label comes as ``<label>_first``,
``<label>_final`` (first and last probed step) and ``<label>_mean`` (over the probed steps)."""


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are neither None nor NaN (a head constant over facts has a
    NaN correlation); None when there are none."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else None


def _toy_values(record: dict[str, Any]) -> dict[str, float | None]:
    """The labelled numbers of one :func:`toy_measure` record."""
    out: dict[str, float | None] = {}
    for pairing, a in record.get("attention", {}).items():
        out[f"attention_pearson_{pairing}"] = a["mean_pearson"]
        out[f"attention_spearman_{pairing}"] = a["mean_spearman"]
        for n, heads in enumerate(a["pearson"]):
            out[f"attention_pearson_{pairing}_layer{n}"] = finite_mean(heads)
    for pairing, s in record.get("signals", {}).items():
        out[f"signal_u_cosine_{pairing}"] = s["u"]["cosine"]
    g = record.get("gradients")
    if g is not None:
        for pair in ("fwd_rev", "train_rev", "mirror_rev"):
            for part, value in g.get(f"cos_{pair}", {}).items():
                if part == "all" or part in PARTS:
                    out[f"grad_cos_{pair}" + ("" if part == "all" else f"_{part}")] = value
            if f"per_fact_cos_{pair}" in g:
                out[f"per_fact_cos_{pair}"] = g[f"per_fact_cos_{pair}"]["mean"]
        first = g["first_order"]
        out["first_order_predicted"], out["first_order_actual"] = (
            first["predicted"],
            first["actual"],
        )
        for part, value in first["predicted_parts"].items():
            out[f"first_order_{part}"] = value
    return out


def _text_values(record: dict[str, Any]) -> dict[str, float | None]:
    """The labelled numbers of one :func:`~revcurse.probes.hf.probe_record` record."""
    out: dict[str, float | None] = {}
    for pairing, p in record["pairings"].items():
        out[f"n_facts_{pairing}"] = p["n_facts"]
        if p.get("attention"):
            r = p["attention"]["r_mean"]  # by layer, mean over heads
            out[f"attention_pearson_{pairing}"] = finite_mean(
                h for heads in p["attention"]["r"].values() for h in heads
            )
            for n, value in r.items():
                out[f"attention_pearson_{pairing}_layer{n}"] = value
        if p.get("signals"):
            out[f"signal_u_cosine_{pairing}"] = p["signals"]["u"]["cosine"]
        g, pair = p["gradients"], GRADIENT_PAIRS[pairing]
        out[f"per_fact_cos_{pair}"] = g["cos_pair_rev_mean"]
        for part in PARTS:
            if part in g.get("cos_pair_rev_groups", {}):
                out[f"per_fact_cos_{pair}_{part}"] = finite_mean(g["cos_pair_rev_groups"][part])
    return out


def record_values(record: dict[str, Any]) -> dict[str, float | None]:
    """The labelled numbers (:data:`LABELS`) of one probe record of either kind."""
    return _text_values(record) if "pairings" in record else _toy_values(record)


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of a run's probe records (either kind): for every label of
    :data:`LABELS` the records carry, its value at the first and the last probed step and its
    mean over the probed steps; the steps themselves; for toy records also the final reverse loss
    and the final attention masses per head."""
    out: dict[str, Any] = {"n_probes": len(records)}
    if not records:
        return out
    out["first_step"], out["final_step"] = records[0]["step"], records[-1]["step"]
    values = [record_values(r) for r in records]
    labels = list(dict.fromkeys(k for v in values for k in v))
    for label in labels:
        series = [v[label] for v in values if v.get(label) is not None]
        if not series:
            continue
        first, final = values[0].get(label), values[-1].get(label)
        if first is not None:
            out[f"{label}_first"] = first
        if final is not None:
            out[f"{label}_final"] = final
        out[f"{label}_mean"] = sum(series) / len(series)
    last = records[-1]
    if "gradients" in last:
        out["reverse_loss_final"] = last["gradients"]["loss"]["reverse"]
    if last.get("attention"):
        # [layers][heads] each: the paired queries', and the reverse query (shared by both)
        mass = {p: a["mass_pair"] for p, a in last["attention"].items()}
        out["attention_mass_final"] = mass | {
            "reverse": next(iter(last["attention"].values()))["mass_rev"]
        }
    return out


def summary_layers(summary: dict[str, Any], pairing: str) -> list[int]:
    """The layers whose attention correlation a :func:`summarise` output holds for ``pairing``."""
    prefix = f"attention_pearson_{pairing}_layer"
    return sorted({int(k[len(prefix) :].split("_")[0]) for k in summary if k.startswith(prefix)})


__all__ = ["PAIRINGS", "ProbeRunner", "summarise", "summary_layers", "toy_measure"]
