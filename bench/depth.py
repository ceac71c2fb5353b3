"""Depth pruning bench: MiniLM layers/sub-blocks and the MNIST CNN, with and without ReplaceMe.

Run: .venv/bin/python bench/depth.py
Writes the `## Depth pruning` section of bench/RESULTS.md and bench/plots/depth.png.
"""

from __future__ import annotations

import logging
import pathlib
import sys

import matplotlib
import numpy as np
import onnx_ir as ir

from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.timing import interleaved_medians
from edgec.targets.registry import get_target

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _results import write_section  # noqa: E402  (bench/ is on sys.path when run)

HERE = pathlib.Path(__file__).parent
SECTION = "## Depth pruning"
# The zoo's MiniLM splits: every calibration sentence fits the ReplaceMe map; eval is held out.
MINILM_CALIB, MINILM_EVAL = 150, 240
SEEDS = 8
logging.getLogger("onnx_ir").setLevel(logging.WARNING)


def prune(name: str, n_calib: int, options: dict) -> tuple[bytes, dict]:
    zoo = get_zoo_model(name)
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(n_calib))
    model = create_pass("prune-depth", ctx, options)(ir.load(str(zoo.onnx_path()))).model
    return ir.serde.serialize_model(model).SerializeToString(), ctx.report.stats.get("prune-depth", {})


def evaluate(name: str, data: bytes) -> dict[str, float]:
    return get_zoo_model(name).evaluate(data) or {}


def minilm_rows() -> tuple[list[str], dict[str, dict[str, float]]]:
    zoo = get_zoo_model("minilm")
    base = zoo.onnx_path().read_bytes()
    variants = {"fp32": (base, {})}
    for label, opts in [("drop 2/6 layers", {"num_blocks": 2}),
                        ("drop 4/12 sub-blocks", {"num_blocks": 4, "granularity": "sub-block"})]:
        for replace in (False, True):
            data, stats = prune("minilm", MINILM_CALIB, {**opts, "replace": replace})
            variants[f"{label}{' + ReplaceMe' if replace else ''}"] = (data, stats)
    feed = zoo.calibration(1, "eval")[0]
    times = interleaved_medians([v[0] for v in variants.values()], feed, rounds=10, runs=5)
    rows, figures = [], {}
    for (label, (data, stats)), ms in zip(variants.items(), times, strict=True):
        m = evaluate("minilm", data)
        figures[label] = m
        dropped = ", ".join(stats.get("blocks_dropped", [])) or "-"
        rows.append(f"| {label} | {m['mean_cosine']:.4f} | {m['retrieval_agreement']:.3f} | "
                    f"{m['paraphrase_top1']:.3f} | {ms:.2f} | {ms / times[0]:.2f} | {dropped} |")
    return rows, figures


def mnist_rows() -> tuple[list[str], dict[str, list[float]]]:
    zoo = get_zoo_model("mnist-resnet")
    base = zoo.onnx_path().read_bytes()
    models, labels, acc = [base], ["k=0"], {"plain": [], "ReplaceMe": []}
    for k in (1, 2):
        for replace in (False, True):
            data, _ = prune("mnist-resnet", 256, {"num_blocks": k, "replace": replace})
            models.append(data)
            labels.append(f"k={k}{' + ReplaceMe' if replace else ''}")
    times = interleaved_medians(models, zoo.calibration(1, "eval")[0], rounds=10, runs=20)
    rows = []
    for label, data, ms in zip(labels, models, times, strict=True):
        a = evaluate("mnist-resnet", data)["accuracy"]
        for key in ("plain", "ReplaceMe") if label == "k=0" else ("ReplaceMe" if "Replace" in label else "plain",):
            acc[key].append(a)
        rows.append(f"| {label} | {a:.3f} | {ms:.3f} | {ms / times[0]:.2f} |")
    return rows, acc


def random_vs_importance(granularity: str, k: int) -> tuple[float, list[float]]:
    """mean_cosine of the importance pick, and of SEEDS random picks of k blocks."""
    from edgec.passes.depth.blocks import candidates

    names = [b.name for b in candidates(ir.load(str(get_zoo_model("minilm").onnx_path())).graph, granularity)
             if b.removable]
    ranked = evaluate("minilm", prune("minilm", MINILM_CALIB, {"num_blocks": k, "granularity": granularity})[0])
    rng = np.random.default_rng(0)
    random = []
    for _ in range(SEEDS):
        pick = [str(n) for n in rng.choice(names, k, replace=False)]
        random.append(evaluate("minilm", prune("minilm", MINILM_CALIB, {"blocks": pick, "granularity": granularity})[0])
                      ["mean_cosine"])
    return ranked["mean_cosine"], random


def plot(minilm: dict[str, dict[str, float]], mnist: dict[str, list[float]],
         orders: dict[str, tuple[float, list[float]]]) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = list(minilm)
    x = np.arange(len(labels))
    axes[0].bar(x - 0.2, [minilm[k]["mean_cosine"] for k in labels], 0.4, label="cosine to fp32")
    axes[0].bar(x + 0.2, [minilm[k]["retrieval_agreement"] for k in labels], 0.4, label="retrieval agreement")
    # one word a line: "drop 4/12 sub-blocks + ReplaceMe" is wider than its bar pair
    ticks = [lb.replace(" + ", "\n+").replace(" ", "\n").replace("\n+", "\n+ ") for lb in labels]
    axes[0].set_xticks(x, ticks, fontsize=7)
    axes[0].set_ylim(0.7, 1.01)
    axes[0].set_title(f"MiniLM, {MINILM_EVAL} held-out sentences")
    axes[0].legend(fontsize=8)
    for key, values in mnist.items():
        axes[1].plot(range(len(values)), values, marker="o", label=key)
    axes[1].set_xticks(range(3), ["0", "1", "2"])
    axes[1].set_xlabel("blocks dropped")
    axes[1].set_ylabel("held-out accuracy")
    axes[1].set_title("MNIST residual CNN")
    axes[1].legend()
    for i, (ranked, random) in enumerate(orders.values()):
        axes[2].scatter([i] * len(random), random, color="grey", alpha=0.6, label="random" if i == 0 else None)
        axes[2].scatter([i], [ranked], color="red", marker="*", s=150, label="importance" if i == 0 else None)
    axes[2].set_xticks(range(len(orders)), list(orders))
    axes[2].set_ylabel("MiniLM cosine to fp32")
    axes[2].set_title(f"importance order vs {SEEDS} random orders")
    axes[2].legend()
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / "depth.png", dpi=110)


def main() -> None:
    minilm_table, minilm = minilm_rows()
    mnist_table, mnist = mnist_rows()
    orders = {"2/6 layers": random_vs_importance("layer", 2), "4/12 sub-blocks": random_vs_importance("sub-block", 4)}
    plot(minilm, mnist, orders)
    order_rows = [f"| {label} | {ranked:.4f} | {np.mean(r):.4f} ± {np.std(r):.4f} | {min(r):.4f} | {max(r):.4f} |"
                  for label, (ranked, r) in orders.items()]
    body = "\n".join([
        "Command: `.venv/bin/python bench/depth.py` (1 intra-op thread, ORT_ENABLE_ALL, variants interleaved "
        "round-robin, medians of 10 rounds). Blocks chosen on calibration data by the pass's default score: "
        "output cosine (one-shot), except layers with ReplaceMe, chosen by ReplaceMe's criterion (the contiguous "
        "run with the least 1 - cos(run input, run output) over non-padded tokens). ReplaceMe = ridge least-squares "
        "linear map (ridge 8) fitted on the calibration split, one map per run of contiguous removed blocks; "
        f"metrics on held-out data. MiniLM: {MINILM_CALIB} calibration sentences, {MINILM_EVAL} held-out (retrieval "
        f"agreement moves in steps of 1/{MINILM_EVAL} = {1 / MINILM_EVAL:.3f}); MNIST: 256 calibration images, "
        "1000 held-out.",
        "", "### all-MiniLM-L6-v2 (seq 64)", "",
        "| variant | cosine to fp32 | retrieval agreement | paraphrase top-1 | ms | ratio | dropped |",
        "|---|---|---|---|---|---|---|", *minilm_table,
        "", "### mnist-resnet (2 identity blocks; the Concat block and the downsampling convs are not removable)", "",
        "| variant | accuracy | ms | ratio |", "|---|---|---|---|", *mnist_table,
        "", f"### Importance order vs random orders (MiniLM cosine to fp32, {SEEDS} seeds, no replacement)", "",
        "| drop | importance | random mean ± std | random min | random max |", "|---|---|---|---|---|",
        *order_rows, "", "![depth](plots/depth.png)"])
    write_section(f"{SECTION}\n\n{body.strip()}\n")
    print(body)  # noqa: T201 (bench scripts report on stdout)


if __name__ == "__main__":
    sys.exit(main())
