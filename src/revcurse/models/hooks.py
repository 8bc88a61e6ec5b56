"""Capture tensors at named hook points; hooks are always removed, even when the forward fails."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator

from torch import nn

from revcurse.models.transformer import HookPoint


def hook_names(model: nn.Module) -> list[str]:
    """Names of every hook point of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, HookPoint)]


@contextlib.contextmanager
def capture(
    model: nn.Module, names: Iterable[str], keys: Iterable[Hashable] | None = None
) -> Iterator[dict]:
    """Record the output of each named hook point during forwards run inside the ``with`` block,
    under its name (or under the matching entry of ``keys``: a layer index, say).

    >>> with capture(model, ["model.layers.0.self_attn.hook_scores"]) as cache:
    ...     model(ids)
    >>> cache["model.layers.0.self_attn.hook_scores"]  # [B, H, L, L]

    The recorded tensors stay attached to the graph, so gradients can flow through them.
    """
    modules = dict(model.named_modules())
    cache: dict = {}
    handles = []
    names = list(names)
    keys = names if keys is None else list(keys)
    try:
        for name, key in zip(names, keys, strict=True):
            module = modules.get(name)
            if not isinstance(module, HookPoint):
                raise KeyError(f"{name!r} is not a hook point; known: {hook_names(model)}")

            def record(_m, _inp, out, key=key):
                cache[key] = out

            handles.append(module.register_forward_hook(record))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
