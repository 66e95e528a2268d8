"""Pipeline: a chain of processors that is itself a processor.

Linking is flat: the last processor of one element is wired straight to the
first processor of the next, whatever the nesting, so a nested Pipeline costs
nothing per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import Frame
from vantum_pipeline.processor import FrameDirection, FrameProcessor, link

__all__ = ["Pipeline"]


class Pipeline(FrameProcessor):
    """``Pipeline([p1, p2, ...])``: frames pushed downstream into it reach
    ``p1`` first; what the last element pushes downstream leaves it."""

    _overrides_internals: ClassVar[bool] = True

    def __init__(self, processors: Sequence[FrameProcessor], *, name: str | None = None) -> None:
        super().__init__(name=name)
        if not processors:
            raise ConfigurationError("Pipeline needs at least one processor")
        for processor in processors:
            if not isinstance(processor, FrameProcessor):
                raise ConfigurationError(f"Pipeline element {processor!r} is not a FrameProcessor")
        self._processors = list(processors)
        leaves = self._leaves()
        seen: set[int] = set()
        for leaf in leaves:
            if id(leaf) in seen:
                raise ConfigurationError(f"{leaf.name} appears twice in {self.name}")
            seen.add(id(leaf))
        for upstream, downstream in pairwise(self._processors):
            link(upstream, downstream)

    @property
    def processors(self) -> list[FrameProcessor]:
        """The direct elements, as given."""
        return list(self._processors)

    def _leaves(self) -> list[FrameProcessor]:
        return [leaf for processor in self._processors for leaf in processor._leaves()]

    def _first_leaf(self) -> FrameProcessor:
        return self._processors[0]._first_leaf()

    def _last_leaf(self) -> FrameProcessor:
        return self._processors[-1]._last_leaf()

    async def _receive(self, frame: Frame, direction: FrameDirection) -> None:
        # Only reached when something holds the Pipeline object itself as a
        # neighbour; ``link`` wires leaves directly.
        leaf = self._first_leaf() if direction is FrameDirection.DOWNSTREAM else self._last_leaf()
        await leaf._receive(frame, direction)
