"""Forward, mirror and reverse accuracy of single-token answers (the toy task).

A bidirectional model (MDM) fills the ``[MASK]`` of ``prompt [MASK] suffix`` in one forward pass; a
causal model (ARM) predicts the token after ``prompt``. Both are scored at that one position:

* ``accuracy``: the argmax over the whole vocabulary is the answer (the strict, headline metric);
* ``candidate_accuracy``: the argmax among the candidate answers of that direction is the answer;
* ``chance``: ``1 / n_candidates``, the accuracy of a uniform guess among the candidates (an upper
  bound on what a model that learned nothing about the direction scores on either metric);
* ``answer_logprob``: mean log-probability of the correct answer.

Directions are those of :data:`~revcurse.data.schema.DIRECTIONS`; a causal model has no mirror
query, so its ``mirror_*`` metrics are ``None``.
"""

from __future__ import annotations

from typing import Any

import torch

from revcurse.data.schema import DIRECTIONS, Direction, ReversalDataset, directions_for
from revcurse.data.tokenize import Vocab, encode_queries
from revcurse.models.transformer import TransformerLM


@torch.no_grad()
def answer_logits(
    model: TransformerLM, dataset: ReversalDataset, vocab: Vocab, direction: Direction
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the answer position of every query ``[Q, V]`` and the answer ids ``[Q]``."""
    ids, pos, answers = encode_queries(vocab, dataset.queries[direction], model.causal)
    logits = model(ids, attention_mask=ids != vocab.pad_id)  # [Q, L, V]
    return logits[torch.arange(len(pos)), pos], answers


@torch.no_grad()
def evaluate(model: TransformerLM, dataset: ReversalDataset, vocab: Vocab) -> dict[str, Any]:
    """Accuracy metrics for every direction the model can be asked, plus the per-query
    predictions (``predictions[direction]``) and per-query correctness (``correct[direction]``,
    the units of the paired tests)."""
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    predictions: dict[str, list[str]] = {}
    correct: dict[str, list[bool]] = {}
    asked = directions_for(model.causal)
    for direction in DIRECTIONS:
        if direction not in asked or direction not in dataset.queries:
            for metric in ("accuracy", "candidate_accuracy", "answer_logprob", "chance"):
                out[f"{direction}_{metric}"] = None
            continue
        logits, answers = answer_logits(model, dataset, vocab, direction)
        cand = torch.tensor([vocab.encode(c)[0] for c in dataset.candidates[direction]])
        pred = logits.argmax(dim=-1)
        cand_pred = cand[logits[:, cand].argmax(dim=-1)]
        logp = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(answers)), answers]
        out[f"{direction}_accuracy"] = (pred == answers).double().mean().item()
        out[f"{direction}_candidate_accuracy"] = (cand_pred == answers).double().mean().item()
        out[f"{direction}_answer_logprob"] = logp.mean().item()
        out[f"{direction}_chance"] = dataset.chance(direction)
        predictions[direction] = list(vocab.decode(pred.tolist()))
        correct[direction] = (pred == answers).tolist()
    out["predictions"] = predictions
    out["correct"] = correct
    model.train(was_training)
    return out
