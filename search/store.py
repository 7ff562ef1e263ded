"""The Panels in Ray's object store: put once, read zero-copy by every trial and task.

A Panel goes in whole (`ray.put`); a Panel that is a view of another's features
(`ranker.panel.Panel.subset`, a walk-forward fold's split) goes in as a `PanelRef`: the base
Panel's object (put once, shared by every view) and the view's own small arrays, with the
features stripped, so K folds cost the features once. `get` gives either back as a Panel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from ranker.panel import Panel


@dataclass(frozen=True)
class PanelRef:
    """A view of a Panel in the object store: its base's object and its own arrays' object."""

    base: Any  # ObjectRef of the base Panel
    own: Any  # ObjectRef of the view with zero-row feature matrices

    def get(self) -> Panel:
        base, own = ray.get([self.base, self.own])
        return replace(own, fund=base.fund, price=base.price, emb=base.emb)


def put_view(base_ref: Any, view: Panel) -> PanelRef:
    """A view of the Panel whose object is `base_ref`, into the object store."""
    stub = replace(view, fund=_empty(view.fund), price=_empty(view.price), emb=_empty(view.emb))
    return PanelRef(base_ref, ray.put(stub))


def get(ref: Any) -> Panel:
    """A Panel from the object store: a plain Panel's ref, a `PanelRef`, or a Panel Ray has
    already handed over (a task's argument)."""
    if isinstance(ref, Panel):
        return ref
    if isinstance(ref, PanelRef):
        return ref.get()
    return ray.get(ref)


def _empty(a: np.ndarray) -> np.ndarray:
    return np.empty((0, a.shape[1]), dtype=a.dtype)
