"""The records of the channel analysis: layouts, spaces and groups, producers, consumers, constants.

A space can be divided after it was created (a Split or Slice cuts into it, a grouped Conv needs
its groups apart): ``ChannelGraph.split`` divides it and every space joined with it at the same
offset, keeps the old id for the first part, and rewrites every record that names it, so no record
ever refers to a divided space.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layout:
    """Channels of one tensor: the channel axis, the spaces laid end to end, features per channel."""

    axis: int
    pieces: tuple[int, ...]
    inner: int = 1

    def moved(self, axis: int, inner: int | None = None) -> Layout:
        """The same channels on another axis (or with another feature count per channel)."""
        return Layout(axis, self.pieces, self.inner if inner is None else inner)


@dataclasses.dataclass(frozen=True)
class Producer:
    """A weight op whose output channels form a space: weight rows on ``w_axis``, bias on axis 0.

    ``pieces`` lists the spaces its rows form, in order, once ``space`` was divided (empty: just
    ``space``, which is always the first piece).
    """

    node: str
    space: int
    weight: str
    w_axis: int
    bias: str | None
    pieces: tuple[int, ...] = ()

    @property
    def spaces(self) -> tuple[int, ...]:
        """The spaces of its output channels, in order."""
        return self.pieces or (self.space,)


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A weight op that sums over its input's channels: weight columns on ``w_axis``."""

    node: str
    value: str
    weight: str
    w_axis: int
    layout: Layout
    macs: int


@dataclasses.dataclass(frozen=True)
class ParamUse:
    """A constant indexed by channel (BN scale, depthwise weight, broadcast bias) of ``value``.

    ``layout`` is set when the axis indexes other channels than ``value``'s: the input channels of
    one group of a grouped Conv, which each output sums over (so dropped ones must be zeroed too).
    """

    node: str
    input_index: int
    axis: int
    value: str
    layout: Layout | None = None


@dataclasses.dataclass
class ChannelGraph:
    """The result of the analysis; all references are by name so a plan applies to a model copy."""

    space_sizes: list[int] = dataclasses.field(default_factory=list)
    parent: list[int] = dataclasses.field(default_factory=list)
    layouts: dict[str, Layout] = dataclasses.field(default_factory=dict)
    producers: list[Producer] = dataclasses.field(default_factory=list)
    consumers: list[Consumer] = dataclasses.field(default_factory=list)
    params: list[ParamUse] = dataclasses.field(default_factory=list)
    reshapes: list[str] = dataclasses.field(default_factory=list)
    sections: list[str] = dataclasses.field(default_factory=list)  # Split/Slice nodes on a channel axis
    frozen: dict[int, str] = dataclasses.field(default_factory=dict)

    def new_space(self, size: int) -> int:
        """A fresh space of ``size`` channels, in a group of its own."""
        self.space_sizes.append(size)
        self.parent.append(len(self.parent))
        return len(self.space_sizes) - 1

    def group(self, space: int) -> int:
        """The group (union-find root) a space belongs to."""
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def join(self, a: int, b: int) -> None:
        """Make two spaces one group (they index the same channels)."""
        ra, rb = self.group(a), self.group(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, layout: Layout, reason: str) -> None:
        """Keep every channel of the groups in ``layout``; the first reason per space is kept."""
        for space in layout.pieces:
            self.frozen.setdefault(space, reason)

    def width(self, layout: Layout) -> int:
        """Channel count of a layout."""
        return sum(self.space_sizes[s] for s in layout.pieces)

    def offsets(self, layout: Layout) -> list[int]:
        """Where each piece of a layout starts, and its end last."""
        out = [0]
        for space in layout.pieces:
            out.append(out[-1] + self.space_sizes[space])
        return out

    def between(self, layout: Layout, start: int, end: int) -> Layout:
        """The pieces of a layout that lie in channels [start, end) (cut there first)."""
        bounds = self.offsets(layout)
        pieces = tuple(s for s, lo, hi in zip(layout.pieces, bounds, bounds[1:], strict=False)
                       if start <= lo and hi <= end)
        return Layout(layout.axis, pieces, layout.inner)

    def cut(self, layout: Layout, offsets: list[int]) -> Layout:
        """The layout with a piece boundary at every offset, dividing the spaces met there."""
        for at in offsets:
            bounds = self.offsets(layout)
            for space, lo, hi in zip(layout.pieces, bounds, bounds[1:], strict=False):
                if lo < at < hi:
                    layout = _expand(layout, self.split(space, at - lo))
                    break
        return layout

    def split(self, space: int, at: int) -> dict[int, tuple[int, ...]]:
        """Divide ``space`` and every space of its group at channel ``at``; returns old -> new pieces.

        The first part keeps the old id, the second parts form a group of their own; every stored
        layout, producer and parameter use is rewritten.
        """
        root, size = self.group(space), self.space_sizes[space]
        members = [s for s in range(len(self.space_sizes)) if self.group(s) == root]
        mapping: dict[int, tuple[int, ...]] = {}
        for member in members:
            second = self.new_space(size - at)
            self.space_sizes[member] = at
            if member in self.frozen:
                self.frozen[second] = self.frozen[member]
            mapping[member] = (member, second)
        for member in members[1:]:
            self.join(mapping[members[0]][1], mapping[member][1])
        self._rewrite(mapping)
        return mapping

    def _rewrite(self, mapping: dict[int, tuple[int, ...]]) -> None:
        self.layouts = {name: _expand(layout, mapping) for name, layout in self.layouts.items()}
        self.consumers = [dataclasses.replace(c, layout=_expand(c.layout, mapping)) for c in self.consumers]
        self.producers = [dataclasses.replace(p, pieces=_expand_pieces(p.spaces, mapping)) for p in self.producers]
        self.params = [u if u.layout is None else dataclasses.replace(u, layout=_expand(u.layout, mapping))
                       for u in self.params]

    def groups(self) -> dict[int, list[int]]:
        """Group root -> its spaces."""
        out: dict[int, list[int]] = {}
        for space in range(len(self.space_sizes)):
            out.setdefault(self.group(space), []).append(space)
        return out

    def frozen_groups(self) -> dict[int, str]:
        """Group root -> why it is frozen."""
        out: dict[int, str] = {}
        for space, reason in self.frozen.items():
            out.setdefault(self.group(space), reason)
        return out


def _expand_pieces(pieces: tuple[int, ...], mapping: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(p for space in pieces for p in mapping.get(space, (space,)))


def _expand(layout: Layout, mapping: dict[int, tuple[int, ...]]) -> Layout:
    return dataclasses.replace(layout, pieces=_expand_pieces(layout.pieces, mapping))
