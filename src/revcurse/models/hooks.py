"""Capture tensors at named hook points; hooks are always removed, even when the forward fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from revcurse.models.transformer import HookPoint


def hook_names(model: nn.Module) -> list[str]:
    """Names of every hook point of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, HookPoint)]


@contextlib.contextmanager
def capture(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named hook point during forwards run inside the ``with`` block.

    >>> with capture(model, ["model.layers.0.self_attn.hook_scores"]) as cache:
    ...     model(ids)
    >>> cache["model.layers.0.self_attn.hook_scores"]  # [B, H, L, L]

    The recorded tensors stay attached to the graph, so gradients can flow through them.
    """
    modules = dict(model.named_modules())
    cache: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            module = modules.get(name)
            if not isinstance(module, HookPoint):
                raise KeyError(f"{name!r} is not a hook point; known: {hook_names(model)}")

            def record(_m, _inp, out, name=name):
                cache[name] = out

            handles.append(module.register_forward_hook(record))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
