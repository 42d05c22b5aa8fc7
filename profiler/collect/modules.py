"""Per-module scopes: each ``nn.Module``'s forward runs inside a ``record_function`` scope
named ``module::<qualified name>`` while torch.profiler records.

Mechanism, and why: a forward pre-hook enters a ``record_function`` scope and a forward
hook registered with ``always_call=True`` leaves it (also when forward raises), so every
operator and allocation of the forward pass nests in the innermost module's scope on its
thread. Backward needs no hook: torch.profiler tags each forward operator that records an
autograd node, and the ``autograd::engine::evaluate_function`` span that later runs that
node, with the same sequence number (and the forward thread id); the parser maps each
backward node to the module of its forward operator (``profiler.parse.trace``). That covers
every backward node, on any thread (CUDA's autograd device threads included), without
tensor hooks: module backward hooks (``register_full_backward_hook``) would only bracket a
module's gradient as a whole, wrap outputs in extra autograd nodes, and fire on the
engine's thread after the node's allocations.

Hooks exist only while the trace window records (``enable(True)`` / ``enable(False)``
at step boundaries), so light mode and the untraced steps of full mode pay nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from profiler.rundir import MODULE_SCOPE_PREFIX

MAX_AUTO_CATEGORIES = 30  # automatic depth: the deepest level with at most this many modules


def module_depth(name: str) -> int:
    """Components of a qualified name: "" (the root) 0, "encoder.layers.3" 3."""
    return 0 if not name else name.count(".") + 1


def auto_depth(names: list[str], limit: int = MAX_AUTO_CATEGORIES) -> int:
    """The deepest level whose modules (that level and above, root included) number at most
    ``limit``; at least 1."""
    deepest = max((module_depth(n) for n in names), default=1)
    best = 1
    for depth in range(1, deepest + 1):
        if sum(1 for n in names if module_depth(n) <= depth) <= limit:
            best = depth
    return best


def scope_name(qualified: str, root: nn.Module) -> str:
    """The scope of a module: ``module::<qualified name>``; the root module's is its class name."""
    return MODULE_SCOPE_PREFIX + (qualified or type(root).__name__)


class ModuleScopes:
    """Installs / removes the scope hooks on ``model``'s modules down to ``depth``
    (None: ``auto_depth``). Deeper modules are covered by their ancestor's scope."""

    def __init__(self, model: nn.Module, depth: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if depth is not None and depth < 0:
            raise ValueError(f"module depth must be >= 0, got {depth}")
        names = [n for n, _ in model.named_modules()]
        self.depth = auto_depth(names) if depth is None else depth
        self.targets = [(scope_name(n, model), m) for n, m in model.named_modules()
                        if module_depth(n) <= self.depth]
        self.categories = [name[len(MODULE_SCOPE_PREFIX):] for name, _ in self.targets]
        self._handles: list[Any] = []

    @property
    def enabled(self) -> bool:
        return bool(self._handles)

    def enable(self, on: bool) -> None:
        if on == self.enabled:
            return
        if not on:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            return
        for name, module in self.targets:
            stack: list[Any] = []
            self._handles.append(module.register_forward_pre_hook(_enter(name, stack)))
            self._handles.append(module.register_forward_hook(_leave(stack), always_call=True))


def _enter(name: str, stack: list[Any]):
    def hook(module: nn.Module, args: Any) -> None:
        scope = torch.profiler.record_function(name)
        scope.__enter__()
        stack.append(scope)

    return hook


def _leave(stack: list[Any]):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    return hook
