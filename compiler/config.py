"""BuildConfig: one frozen record of what to build, from CLI flags and/or an edgec.toml file.

Each CLI flag maps to exactly one field. A flag given on the command line wins over the file.

    # edgec.toml
    target = "android-arm64"     # or several: ["cpu-x86", "android-arm64"] (a package of one bundle each)
    task = "feature-extraction"  # a Hugging Face folder's export task (default: inferred from the folder)
    passes = ["cleanup", "fuse"]
    [pass-options.fuse]          # options of one pass, checked against its config dataclass
    transformer_fusions = true
    [calibration]
    source = "data/images"       # .npz, an image folder, a text file, or "random"
    samples = 16
    [calibration.image]          # preprocessing for an image folder
    size = [224, 224]
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    [search]                     # hardware-aware search (edgec.compiler.search), as the CLI flags
    latency-ms = 2.5             # most accurate model within this latency on the target
    # latency-ratio = 0.5        # or: within this fraction of the original's latency, timed alongside it
    budget = 24                  # candidate builds at most
    layer-budget = 12            # per-layer widths: further builds after the uniform search (default budget / 2)
    strategy = "guided"          # or "random"
    scheduler = "tcp://host:8786"
    metric = "pkg.module:function"
    device-file = "phone.json"   # latency from this device file instead of measuring; with several targets
                                 # name each: ["android-arm64=phone.json"]
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from edgec.core.errors import ConfigError

DEFAULT_PASSES = ("cleanup", "fuse")
# The pipeline `edgec build --latency-ms/--max-drop` searches when no --passes are given. Pruning runs
# before fusion: fused attention (com.microsoft.Attention) hides a transformer's blocks from
# prune-depth and its heads and hidden projections from prune-channels.
SEARCH_PASSES = ("cleanup", "prune-depth", "prune-channels", "fuse", "quantize-int8")
_TOP_KEYS = {"model", "target", "task", "passes", "pass-options", "calibration", "input-shapes", "format", "seed",
             "max-drop", "timing", "search"}
_CALIB_KEYS = {"source", "samples", "image", "tokenizer", "allow-nonfinite"}
_IMAGE_KEYS = {"size", "mean", "std", "layout", "channels"}
_SEARCH_KEYS = {"latency-ms": "latency_ms", "latency-ratio": "latency_ratio", "budget": "budget",
                "layer-budget": "layer_budget",
                "strategy": "strategy", "scheduler": "scheduler", "metric": "metric", "device-file": "device_file"}


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Everything one ``edgec build`` needs."""

    model: str
    target: str  # one target name, or several comma-separated (``targets``): a package, one bundle each
    output: Path
    task: str | None = None  # a Hugging Face folder's export task; None: inferred from the folder
    passes: tuple[str, ...] = DEFAULT_PASSES
    pass_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    calib: str | None = None
    calib_samples: int = 16
    calib_allow_nonfinite: bool = False  # NaN/Inf in calibration data is refused unless the model expects it
    image_preprocess: dict[str, Any] | None = None
    tokenizer_dir: str | None = None
    input_shapes: tuple[str, ...] = ()
    fmt: str = "dir"
    force: bool = False
    strict: bool = False  # warnings (NaN/Inf weights, ops falling back) stop the build with exit 2
    # Host latency before/after and the per-node profile: ~25 runs of each model, most of a big model's build.
    timing: bool = True
    seed: int = 0
    max_drop: float | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    budget: int | None = None
    layer_budget: int | None = None
    strategy: str = "guided"
    scheduler: str | None = None
    metric: str | None = None
    # A device file's path, or comma-separated TARGET=PATH items (``device_files`` reads it).
    device_file: str | None = None
    config_path: Path | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """The target names, in the order given."""
        return tuple(name.strip() for name in self.target.split(","))

    @property
    def searches(self) -> bool:
        """Whether this build searches: a latency target or budget, or --max-drop with no pass of its own."""
        return (self.latency_ms is not None or self.latency_ratio is not None or self.budget is not None
                or self.max_drop is not None and self.passes == DEFAULT_PASSES)


def parse_pass_list(value: str, source: str = "--passes") -> tuple[str, ...]:
    """``"cleanup,fuse"`` to a tuple; empty items are an error naming the option."""
    names = tuple(part.strip() for part in value.split(","))
    if not names or any(not n for n in names):
        raise ConfigError(f"{source}: expected a comma-separated list of pass names, got {value!r}")
    return names


def parse_target_list(value: str, source: str = "--target") -> tuple[str, ...]:
    """``"cpu-x86,android-arm64"`` to a tuple; empty or repeated items are an error naming the option."""
    names = tuple(part.strip() for part in value.split(","))
    if not names or any(not n for n in names):
        raise ConfigError(f"{source}: expected a target name or a comma-separated list of them, got {value!r}")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise ConfigError(f"{source}: target {repeated!r} is given twice")
    return names


def device_files(cfg: BuildConfig) -> dict[str, str]:
    """Each target's device file, from ``--device-file``: a plain PATH (one target) or TARGET=PATH items.

    Items are comma-separated (the CLI joins a repeated option with commas); an item that is itself an
    existing file is a plain path even if it holds ``=`` or ``,``. A TARGET= naming a target not built, a
    plain path with several targets, a target named twice, or a missing file is an error naming the option.
    """
    if not cfg.device_file:
        return {}
    targets = cfg.targets
    spec = cfg.device_file
    items = [spec] if Path(spec).is_file() else [part.strip() for part in spec.split(",")]
    files: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or Path(item).is_file():
            if len(targets) > 1:
                raise ConfigError(f"--device-file {item}: with several targets, name the one it is for "
                                  f"(TARGET=PATH, TARGET one of {', '.join(targets)})")
            name, path = targets[0], item
        name, path = name.strip(), path.strip()
        if name not in targets:
            raise ConfigError(f"--device-file {item}: target {name!r} is not among --target {','.join(targets)}")
        if name in files:
            raise ConfigError(f"--device-file {item}: a second device file for {name}")
        if not path or not Path(path).is_file():
            raise ConfigError(f"--device-file {item}: no such file")
        files[name] = path
    return files


def _joined(value: Any, where: str) -> Any:
    """A TOML list of strings as one comma-separated string (the CLI's form); other values as they are."""
    if not isinstance(value, list):
        return value
    if not value or not all(isinstance(v, str) and v and "," not in v for v in value):
        raise ConfigError(f"{where}: expected a non-empty list of names without commas")
    return ",".join(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")


def config_file_fields(path: Path) -> dict[str, Any]:
    """Read an edgec.toml into BuildConfig field values; unknown keys name the file and key."""
    data = _read_toml(path)
    _check_keys(data, _TOP_KEYS, str(path))
    calib = data.get("calibration", {})
    _check_keys(calib, _CALIB_KEYS, f"{path} [calibration]")
    _check_keys(calib.get("image", {}), _IMAGE_KEYS, f"{path} [calibration.image]")
    if not isinstance(calib.get("allow-nonfinite", False), bool):
        raise ConfigError(f"{path} [calibration]: allow-nonfinite must be true or false")
    if not isinstance(data.get("timing", True), bool):
        raise ConfigError(f"{path}: 'timing' must be true or false")
    search = data.get("search", {})
    _check_keys(search, set(_SEARCH_KEYS), f"{path} [search]")
    passes = data.get("passes")
    if passes is not None and not (isinstance(passes, list) and all(isinstance(p, str) for p in passes)):
        raise ConfigError(f"{path}: 'passes' must be a list of pass names")
    if not isinstance(data.get("task", ""), str):
        raise ConfigError(f"{path}: 'task' must be a task name such as \"feature-extraction\"")
    fields: dict[str, Any] = {
        "model": data.get("model"),
        "target": _joined(data.get("target"), f"{path}: 'target'"),
        "task": data.get("task"),
        "passes": tuple(passes) if passes is not None else None,
        "pass_options": data.get("pass-options"),
        "calib": calib.get("source"),
        "calib_samples": calib.get("samples"),
        "calib_allow_nonfinite": calib.get("allow-nonfinite"),
        "image_preprocess": calib.get("image"),
        "tokenizer_dir": calib.get("tokenizer"),
        "input_shapes": tuple(data["input-shapes"]) if "input-shapes" in data else None,
        "fmt": data.get("format"),
        "seed": data.get("seed"),
        "max_drop": data.get("max-drop"),
        "timing": data.get("timing"),
        **{field: search.get(key) for key, field in _SEARCH_KEYS.items()},
    }
    fields["device_file"] = _joined(fields["device_file"], f"{path} [search]: 'device-file'")
    return {k: v for k, v in fields.items() if v is not None}


def make_build_config(cli: dict[str, Any], config_path: Path | None) -> BuildConfig:
    """Merge the config file (if any) under the CLI flags that were given."""
    merged = config_file_fields(config_path) if config_path else {}
    merged.update({k: v for k, v in cli.items() if v not in (None, ())})
    for required, flag in (("model", "MODEL"), ("target", "--target"), ("output", "-o/--output")):
        if required not in merged:
            raise ConfigError(f"missing {flag} (give it on the command line or in the config file)")
    merged["output"] = Path(merged["output"])
    if not isinstance(merged["target"], str):
        raise ConfigError(f"{config_path}: 'target' must be a target name or a list of them, "
                          f"got {merged['target']!r}")
    merged["target"] = ",".join(parse_target_list(merged["target"]))
    return BuildConfig(config_path=config_path, **merged)
