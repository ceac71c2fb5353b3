"""If/Loop/Scan bodies for the quantization passes: walk them, find the outer values they read, name them.

A body may read any value of the graphs around it (an outer-scope capture): a weight stored in the
main graph, or an activation such as a stem's output. The passes that rewrite weights (fp8, fp4)
walk every body with ``weighted_slots``; those that leave bodies float (static int8, mixed precision)
say so with ``body_owners``, and static int8 keeps the outer values a body reads as they were.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

# ORT's QDQ quantizer drops these when their output's int8 range clips like they do, and renames the
# tensors around them: a body reading the input or the output of one would read another value.
REMOVABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})


def _bodies(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for index, graph in enumerate(attr.graphs):
                yield f"{attr.name}[{index}]", graph


def body_owners(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` (not of its bodies) that hold a body: If, Loop, Scan and the like."""
    return [node for node in graph.node if any(True for _ in _bodies(node))]


def owner_label(node: onnx.NodeProto) -> str:
    """How notes name a body's owner: ``branch (If)``."""
    return f"{node.name or node.output[0]} ({node.op_type})"


def walk(graph: onnx.GraphProto, path: str = "", scope: tuple[onnx.GraphProto, ...] = (),
         ) -> Iterator[tuple[str, onnx.GraphProto, onnx.NodeProto, tuple[onnx.GraphProto, ...]]]:
    """``(path, graph, node, scope)`` for every node at every depth.

    ``scope`` runs from the main graph to ``graph``, and ``path`` names the node as compiler.analysis does
    (``branch/then_branch/conv``).
    """
    scope = (*scope, graph)
    for node in list(graph.node):
        name = f"{path}{node.name}"
        yield name, graph, node, scope
        for attr, body in _bodies(node):
            yield from walk(body, f"{name}/{attr}/", scope)


def find_initializer(name: str, scope: tuple[onnx.GraphProto, ...]) -> tuple[onnx.TensorProto, onnx.GraphProto] | None:
    """The initializer ``name`` as a node at the end of ``scope`` sees it (inner graphs shadow outer ones)."""
    for graph in reversed(scope):
        for tensor in graph.initializer:
            if tensor.name == name:
                return tensor, graph
    return None


def reads(graph: onnx.GraphProto) -> set[str]:
    """Every value name read by a node of ``graph`` or of its bodies, and ``graph``'s outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for _, body in _bodies(node):
            names |= reads(body)
    return names


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The values ``node``'s bodies read from the graphs around them (captures), at any depth."""
    found: set[str] = set()
    for _, body in _bodies(node):
        defined = {i.name for i in body.input} | {t.name for t in body.initializer}
        defined |= {o for n in body.node for o in n.output}
        found |= reads(body) - defined
    found.discard("")
    return found


def frozen_for_qdq(graph: onnx.GraphProto) -> dict[str, str]:
    """``{node name: capture}``: the Relu/Clip nodes of ``graph`` that make or read a value a body reads.

    ORT's QDQ quantizer removes such an activation and gives its output's name to its input: the body
    would then read the value before the activation (issue 13: an If branch at cosine 0.73), or a value
    no node makes any more. Excluding these nodes from quantization keeps the captured value as it was.
    """
    captured: set[str] = set()
    for owner in body_owners(graph):
        captured |= outer_reads(owner)
    frozen = {}
    for node in graph.node:
        if node.op_type not in REMOVABLE_ACTIVATIONS or not node.name:
            continue
        hit = next((name for name in (*node.output, *node.input[:1]) if name in captured), None)
        if hit is not None:
            frozen[node.name] = hit
    return frozen


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers that no node (of this graph or of a body, at any depth) nor output reads."""
    for _, body in (pair for node in graph.node for pair in _bodies(node)):
        drop_unused_initializers(body)
    used = reads(graph)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
