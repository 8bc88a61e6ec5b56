"""Run the mechanism probes on a model, as a training callback or on a saved checkpoint.

Each probe writes ``probes/step-<N>.safetensors`` (``s_<pairing>`` and ``s_rev_<pairing>`` per
layer/head/fact for every pairing; per-fact gradient cosines) and appends one JSON record to
``probes/probes.jsonl``: the attention coupling per pairing (``record["attention"][pairing]``; the
pairings are those the model allows, :func:`~revcurse.probes.inputs.pairings_for`), cosines per
parameter group, losses, the first-order check, signal alignment; at the final step also the
coupling as a function of distance, per pairing. Probes draw no randomness from the training
generator, so a run trains identically with and without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import ProbeConfig, ToyDataConfig
from revcurse.data.schema import ReversalDataset
from revcurse.data.tokenize import Vocab
from revcurse.models.transformer import TransformerLM
from revcurse.probes.attention import coupling, coupling_vs_distance
from revcurse.probes.gradients import PARTS, alignment
from revcurse.probes.inputs import PAIRINGS, ProbeBatch, pairings_for, stack_queries, toy_queries
from revcurse.probes.signals import query_signals, signal_alignment


class ProbeRunner:
    """Probes one run's model at chosen steps; records go to ``out_dir/probes`` if given."""

    def __init__(
        self,
        probe: ProbeConfig,
        data: ToyDataConfig,
        dataset: ReversalDataset,
        vocab: Vocab,
        causal: bool,
        train_loss: Callable[[TransformerLM], torch.Tensor],
        out_dir: Path | None,
        prefix: str = "",
        keep: bool = False,
    ) -> None:
        """``data``: the recipe of the facts (rebuilt at other distances); ``train_loss(model)``:
        the run's training loss with a fixed mask draw (a deterministic function of the weights).
        ``prefix`` names the files (``posthoc-`` for ``revcurse probe`` on a saved run), so
        probing a finished run never overwrites the records written during its training. ``keep``
        keeps the records already on disk (a resumed run; see :meth:`truncate`)."""
        self.probe, self.data, self.vocab = probe, data, vocab
        self.train_loss = train_loss
        self.dir = out_dir / "probes" if out_dir is not None else None
        directions = ["forward", "reverse"] + ([] if causal else ["mirror"])
        self.queries = {d: toy_queries(dataset, vocab, d) for d in directions}
        self.batches: dict[str, ProbeBatch] = {
            d: stack_queries(q, causal, vocab.mask_id, vocab.pad_id)
            for d, q in self.queries.items()
        }
        self.records: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.prefix = prefix
        if self.dir is not None and not keep:
            (self.dir / f"{prefix}probes.jsonl").unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """Resume after ``step``: keep (and reload) only the records up to it."""
        if self.dir is not None:
            self.records = files.truncate_jsonl(self.dir / f"{self.prefix}probes.jsonl", step)

    def due(self, step: int) -> bool:
        """Whether the cadence or the explicit steps ask for a probe after ``step`` optimizer steps."""
        pc = self.probe
        return pc.enabled and ((pc.every > 0 and step % pc.every == 0) or step in pc.steps)

    def __call__(self, model: TransformerLM, step: int, final: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        pc = self.probe
        was_training = model.training
        model.eval()
        record: dict[str, Any] = {"step": step, "final": final}
        tensors: dict[str, torch.Tensor] = {}
        if pc.attention:
            record["attention"], record["distance"] = {}, {}
            scores: dict = {}  # the reverse queries' scores, shared by the pairings
            for pairing in pairings_for(model.causal):
                c = coupling(model, self.data, self.vocab, pairing, cache=scores)
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
                        model, self.data, self.vocab, pairing, pc.distances, scores
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
                model, self.batches, lambda: self.train_loss(model), pc.first_order_lr,
                per_example, pc.per_example_max_facts,
            )  # fmt: skip
            record["gradients"] = summary
            tensors.update(extra)
        if pc.signals:

            def signals(direction: str) -> dict[str, torch.Tensor]:
                return query_signals(model, self.queries[direction], causal=model.causal,
                                     mask_id=self.vocab.mask_id)  # fmt: skip

            rev = signals("reverse")
            record["signals"] = {
                pairing: signal_alignment(signals(pairing), rev)
                for pairing in pairings_for(model.causal)
            }
        model.train(was_training)
        record["seconds"] = time.perf_counter() - start
        self.seconds += record["seconds"]
        self.records.append(record)
        if self.dir is not None:
            if tensors:
                path = self.dir / f"{self.prefix}step-{step:07d}.safetensors"
                files.save_tensors(path, tensors, {"step": str(step)})
            files.append_jsonl(self.dir / f"{self.prefix}probes.jsonl", record)
        return record

    def summary(self) -> dict[str, Any]:
        """Headline numbers: final values and means over all probed steps."""
        out: dict[str, Any] = {"n_probes": len(self.records), "probe_seconds": self.seconds}
        if not self.records:
            return out
        last = self.records[-1]

        def series(path: tuple[str, ...]) -> list[float]:
            values = []
            for r in self.records:
                node: Any = r
                for key in path:
                    node = node.get(key) if isinstance(node, dict) else None
                if node is not None:
                    values.append(float(node))
            return values

        paths = {}
        for pairing in PAIRINGS:
            paths[f"attention_pearson_{pairing}"] = ("attention", pairing, "mean_pearson")
            paths[f"attention_spearman_{pairing}"] = ("attention", pairing, "mean_spearman")
            paths[f"signal_u_cosine_{pairing}"] = ("signals", pairing, "u", "cosine")
        for pair in ("fwd_rev", "train_rev", "mirror_rev"):
            for part in ("all", *PARTS):
                suffix = "" if part == "all" else f"_{part}"
                paths[f"grad_cos_{pair}{suffix}"] = ("gradients", f"cos_{pair}", part)
        for part in PARTS:
            paths[f"first_order_{part}"] = ("gradients", "first_order", "predicted_parts", part)
        paths["first_order_predicted"] = ("gradients", "first_order", "predicted")
        paths["first_order_actual"] = ("gradients", "first_order", "actual")
        for label, path in paths.items():
            values = series(path)
            if values:
                out[f"{label}_final"] = values[-1]
                out[f"{label}_mean"] = sum(values) / len(values)
        if "gradients" in last:
            out["reverse_loss_final"] = last["gradients"]["loss"]["reverse"]
        if last.get("attention"):
            # [layers][heads] each: the paired queries', and the reverse query (shared by both)
            mass = {p: a["mass_pair"] for p, a in last["attention"].items()}
            out["attention_mass_final"] = mass | {
                "reverse": next(iter(last["attention"].values()))["mass_rev"]
            }
        return out
