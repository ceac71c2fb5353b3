"""Where int8 pays on ORT's CPU EP: float-prefix placements, and a contention-robust latency race.

ORT runs int8 convs NHWC and float convs in blocked NCHWc; every switch between the two costs a
Transpose and a Q/DQ, so int8 and float regions should be long, not alternating. In mobile CNNs
the early high-resolution layers gain nothing from int8 (a 3-channel stem conv; 16- or 32-channel
depthwise convs at 112x112 ran slower in int8 than in fp32) while the later layers run much
faster in int8. So the candidates are: everything int8, or everything up to a clean cut (one tensor
crossing) after the k-th depthwise conv left float. The host times them and keeps the fastest;
candidates within TIE_MARGIN of it are a tie on a shared host, and a tie goes to the most accurate
(on EfficientNet-B0 three prefixes timed as a tie with different cosines; bench/RESULTS.md, Quantization).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx

from edgec.core.ir import Feeds
from edgec.runtime.timing import interleaved_samples

MAX_PREFIX_CANDIDATES = 6
# Cuts are tried only in the first part of the network: late layers always gain from int8.
PREFIX_SHARE = 0.75
# Ratios within this fraction of the fastest int8 candidate's are a tie. On a shared host EfficientNet-B0's
# best prefixes swapped order between reruns, while MobileNetV3's second-best prefix stayed clearly behind
# the best in every rerun (the races: bench/RESULTS.md, Quantization). Relative, because load on the host
# shrinks or stretches all ratios together.
TIE_MARGIN = 0.025


def _is_depthwise(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def clean_cuts(proto: onnx.ModelProto) -> list[int]:
    """Positions ``i`` in the node list after which exactly one activation crosses to later nodes."""
    nodes = proto.graph.node
    made = {o: i for i, n in enumerate(nodes) for o in n.output}
    last_use: dict[str, int] = collections.defaultdict(lambda: -1)
    for i, node in enumerate(nodes):
        for name in node.input:
            if name in made:
                last_use[name] = max(last_use[name], i)
    outputs = {o.name for o in proto.graph.output}
    # a tensor is live at cut i when made at or before i and read after i (graph outputs: always read)
    ends = collections.Counter(len(nodes) if o in outputs else max(last_use[o], made[o]) for o in made)
    starts = collections.Counter(made[o] for o in made)
    cuts, live = [], 0
    for i in range(len(nodes)):
        live += starts[i] - ends[i]
        if live == 1:
            cuts.append(i)
    return cuts


def prefix_candidates(proto: onnx.ModelProto, limit: int = MAX_PREFIX_CANDIDATES) -> dict[str, list[str]]:
    """``{"float-prefix:<node>": names to leave float}`` for cuts after depthwise convs (nodes must be named)."""
    nodes = proto.graph.node
    depthwise = [i for i, n in enumerate(nodes) if _is_depthwise(n)]
    cuts = clean_cuts(proto)
    limit_at = int(len(nodes) * PREFIX_SHARE)
    after = (next((c for c in cuts if c >= d), None) for d in depthwise)
    chosen = sorted({c for c in after if c is not None and c < limit_at})
    if len(chosen) > limit:  # spread the tries over the prefix
        chosen = [chosen[round(k * (len(chosen) - 1) / (limit - 1))] for k in range(limit)]
    return {f"float-prefix:{nodes[c].name}": [n.name for n in nodes[: c + 1]] for c in chosen}


def fastest(models: dict[str, bytes], fp32: bytes, feed: Feeds, rounds: int = 30, runs: int = 3,
            ) -> tuple[str, dict[str, float]]:
    """Time fp32 and each candidate round-robin on one thread; the fastest name ("float" = fp32) and ratios.

    Uses the lower quartile, not the median (runtime.timing): on a shared host, bursts of other
    load inflate medians unevenly between candidates, while the quartile tracks the kernels' cost.
    """
    names = ["float", *models]
    times = interleaved_samples([fp32, *models.values()], feed, rounds=rounds, runs=runs, warmup=2)
    quartiles = [float(np.percentile(t, 25)) for t in times]
    ratios = {name: q / quartiles[0] for name, q in zip(names, quartiles, strict=True)}
    return min(ratios, key=ratios.__getitem__), ratios



def near_fastest(ratios: dict[str, float], margin: float = TIE_MARGIN) -> list[str]:
    """The int8 candidates within a fraction ``margin`` of the fastest int8 one, and faster than fp32."""
    int8 = {k: v for k, v in ratios.items() if k != "float"}
    best = min(int8.values())
    return [k for k, v in int8.items() if v <= best * (1 + margin) and (v < 1.0 or v == best)]


def settle_tie(ratios: dict[str, float], errors: dict[str, float]) -> str:
    """Of the candidates in ``errors`` (a tie, see near_fastest), the most accurate; then the faster."""
    return min(errors, key=lambda k: (errors[k], ratios[k]))
