"""Hooks and temporary forwards that are always removed, even when the body raises."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from torch import nn


@contextmanager
def input_hooks(modules: Mapping[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call ``on_input(name, x)`` with the first positional input of each module on every forward."""
    handles = []
    try:
        for name, module in modules.items():
            # Default arg binds the loop variable now; a late-binding closure would see the last name.
            def hook(_module: nn.Module, args: tuple, _name: str = name) -> None:
                on_input(_name, args[0])

            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a stub block to skip the rest of a model's forward once what is needed is recorded."""


@contextmanager
def recording_blocks(
    blocks: nn.ModuleList,
    record: Callable[[int, torch.Tensor, tuple, dict], torch.Tensor | None],
    stop_after: int | None = None,
) -> Iterator[None]:
    """Replace each block's forward with a stub that records its call and returns the input unchanged
    (or what ``record`` returns instead: ``offload`` replays block outputs computed elsewhere).

    Running the base model under this context costs only the embeddings, yet yields every block's
    own call arguments (masks and rotary embeddings differ per block in Gemma-3-style models).
    """
    originals = {}
    try:
        for index, block in enumerate(blocks):

            def stub(hidden: torch.Tensor, *args: object, _index: int = index, **kwargs: object) -> torch.Tensor:
                replaced = record(_index, hidden, args, kwargs)
                if stop_after is not None and _index >= stop_after:
                    raise StopForward
                return hidden if replaced is None else replaced

            originals[index] = block.__dict__.get("forward")
            block.forward = stub
        yield
    finally:
        for index, original in originals.items():
            if original is None:
                del blocks[index].forward
            else:
                blocks[index].forward = original
