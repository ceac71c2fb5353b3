"""The records of the channel analysis: layouts, spaces and groups, producers, consumers, constants."""

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
    """A weight op whose output channels form a space: weight rows on ``w_axis``, bias on axis 0."""

    node: str
    space: int
    weight: str
    w_axis: int
    bias: str | None


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
    """A constant indexed by channel (BN scale, depthwise weight, broadcast bias) of ``value``."""

    node: str
    input_index: int
    axis: int
    value: str


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
