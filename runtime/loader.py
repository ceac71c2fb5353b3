"""Open an untrusted bundle safely (schema, paths, checksums), make its session and verify its numbers."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import onnx
import onnxruntime as ort

from edgec.core.errors import BundleError
from edgec.runtime._samples import EXTRA_SAMPLE_NAME, describe_shapes, holds_sequence, load_sample
from edgec.runtime.bundle import MANIFEST, ONNX_FILE, REQUIRED_KEYS, SAMPLE_FILE, SCHEMA_VERSION, file_sha256
from edgec.runtime.session import OutputError, compare_outputs, providers_for, run, session_options
from edgec.runtime.values import KINDS, kind_phrase
from edgec.targets.profile import OPT_LEVELS

log = logging.getLogger(__name__)

# Same machine, same ORT: the stored sample reproduces exactly; other x86 ISAs may differ in the last bits.
SAMPLE_ATOL = 1e-5
SAMPLE_RTOL = 1e-4
# model.ort against model.onnx at ORT_ENABLE_EXTENDED is bit-exact on one machine; allow a hair.
ORT_VS_ONNX_ATOL = 1e-6
ORT_VS_ONNX_RTOL = 1e-6
MAX_UNPACKED_BYTES = 8 << 30  # refuse zip bombs
MAX_MANIFEST_BYTES = 16 << 20


@dataclasses.dataclass
class LoadedBundle:
    """A checked bundle with a ready session and its stored sample.

    The sample holds arrays; lists of them for sequences, None for absent optionals.
    """

    path: pathlib.Path
    manifest: dict[str, Any]
    session: ort.InferenceSession
    sample_inputs: dict[str, Any]
    sample_outputs: dict[str, Any]

    def check_tensor_io(self, purpose: str, outputs: bool = True) -> None:
        """Raise BundleError naming the first input (or output) that is not a tensor.

        For a ``purpose`` (e.g. 'device runs') that feeds and reads tensors only.
        """
        for key in ("inputs", "outputs") if outputs else ("inputs",):
            for spec in self.manifest[key]:
                if spec.get("kind", "tensor") != "tensor":
                    what = kind_phrase(spec["kind"], holds_sequence(spec))
                    raise BundleError(f"{self.path}: {key[:-1]} {spec['name']!r} is {what}: {purpose} take "
                                      "tensors only (a known limit)")

    def model_bytes(self, name: str | None = None) -> bytes:
        """A bundle file's bytes (default: the shipped model), checked again against the manifest's sha256."""
        name = name or self.manifest["model_file"]
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name} is not a file of this bundle")
        if self.path.is_dir():
            real = (self.path / name).resolve()
            if not real.is_relative_to(self.path.resolve()):
                raise BundleError(f"{self.path}: {name} points outside the bundle")
            data = real.read_bytes()
        else:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(name)
        if hashlib.sha256(data).hexdigest() != self.manifest["files"][name]:
            raise BundleError(f"{self.path}: {name} changed since the bundle was loaded")
        return data


@dataclasses.dataclass(frozen=True)
class VerifyCheck:
    """One step of verify_bundle and what it found."""

    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class VerifyReport:
    """What verify_bundle checked and how far the numbers drifted; ``ok`` is False when any check failed.

    ``sample_errors`` is for sample.npz (the one sample devices run); ``sample_errors_by_file`` has every
    stored sample that ran, keyed by its bundle path.
    """

    path: pathlib.Path
    target: str
    model_file: str
    checks: list[VerifyCheck] = dataclasses.field(default_factory=list)
    sample_errors: list[OutputError] = dataclasses.field(default_factory=list)
    sample_errors_by_file: dict[str, list[OutputError]] = dataclasses.field(default_factory=dict)
    ort_vs_onnx_errors: list[OutputError] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[str]:
        """One line per failed check."""
        return [f"{check.name}: {check.detail}" for check in self.checks if not check.ok]


def _safe_relpath(rel: Any, where: str) -> str:
    """Reject manifest paths that are not plain relative paths inside the bundle."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: file path {rel!r} is not a non-empty string")
    posix = pathlib.PurePosixPath(rel)
    if posix.is_absolute() or "\\" in rel or ":" in rel or any(part in ("..", "") for part in rel.split("/")):
        raise BundleError(f"{where}: path {rel!r} escapes the bundle")
    return rel


def _check_zip_members(zf: zipfile.ZipFile, source: pathlib.Path) -> None:
    """Zip-slip, symlink and size checks on every member before anything is extracted."""
    total = 0
    for info in zf.infolist():
        name = info.filename.rstrip("/") if info.is_dir() else info.filename
        _safe_relpath(name, f"{source}:{info.filename}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"{source}: member {info.filename!r} is a symlink")
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"{source}: unpacks to {total} bytes, more than the {MAX_UNPACKED_BYTES} allowed")


@contextlib.contextmanager
def _bundle_root(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """The bundle's directory: ``path`` itself, or a temp dir the checked zip was extracted into."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not a bundle directory or zip ({exc})") from exc
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="edgec-bundle-"))
    try:
        with zf:
            _check_zip_members(zf, path)
            try:
                zf.extractall(tmp)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # a corrupt or lying member
                raise BundleError(f"{path}: cannot unpack the bundle ({_one_line(exc)})") from exc
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_manifest(root: pathlib.Path, source: pathlib.Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise BundleError(f"{source}: no {MANIFEST}")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{source}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{source}/{MANIFEST}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}/{MANIFEST}: not a JSON object")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{source}/{MANIFEST}: schema_version {manifest.get('schema_version')!r} "
                          f"is not {SCHEMA_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"{source}/{MANIFEST}: missing key {missing[0]!r}")
    _check_manifest_types(manifest, f"{source}/{MANIFEST}")
    return manifest


def _check_manifest_types(manifest: dict[str, Any], where: str) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{where}: 'files' must map paths to sha256 strings")
    for rel in files:
        _safe_relpath(rel, where)
    if not isinstance(manifest["model_file"], str) or manifest["model_file"] not in files:
        raise BundleError(f"{where}: model_file {manifest['model_file']!r} is not among the bundle's files")
    model_files = manifest["model_files"]
    if not isinstance(model_files, dict) or any(f not in files for f in model_files.values()):
        raise BundleError(f"{where}: 'model_files' names a file not among the bundle's files")
    opts = manifest["session_options"]
    level = opts.get("graph_optimization_level") if isinstance(opts, dict) else None
    threads = opts.get("intra_op_num_threads") if isinstance(opts, dict) else None
    if level not in OPT_LEVELS or not isinstance(threads, int) or not 0 <= threads <= 1024:
        raise BundleError(f"{where}: bad session_options {opts!r}")
    eps = manifest["execution_providers"]
    if not isinstance(eps, list) or not all(isinstance(ep, str) for ep in eps):
        raise BundleError(f"{where}: 'execution_providers' must be a list of names")
    for key in ("inputs", "outputs"):
        specs = manifest[key]
        if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                   for s in specs):
            raise BundleError(f"{where}: '{key}' must be a list of {{name, shape, dtype}}")
        for spec in specs:  # no kind: a tensor (bundles written before sequences and optionals)
            if spec.get("kind", "tensor") not in KINDS or spec.get("element_kind", "tensor") not in KINDS[:2]:
                raise BundleError(f"{where}: {key[:-1]} {spec['name']!r} has kind {spec.get('kind')!r}, element_kind "
                                  f"{spec.get('element_kind')!r}; expected kind {'/'.join(KINDS)}, element_kind "
                                  "tensor/sequence")
    sample_files(manifest, where)


def sample_files(manifest: dict[str, Any], where: str) -> list[str]:
    """The bundle's sample files, sample.npz first; each a listed file named sample.npz or samples/<n>.npz.

    Bundles without a ``samples`` list (written before it existed) hold sample.npz alone.
    """
    entries = manifest.get("samples", [{"file": SAMPLE_FILE}])
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise BundleError(f"{where}: 'samples' must be a non-empty list of {{file, input_shapes}}")
    files = [_safe_relpath(entry.get("file"), f"{where}: samples") for entry in entries]
    for index, rel in enumerate(files):
        if not (rel == SAMPLE_FILE if index == 0 else EXTRA_SAMPLE_NAME.fullmatch(rel)):
            raise BundleError(f"{where}: sample file {rel!r} is not "
                              f"{SAMPLE_FILE if index == 0 else 'samples/<n>.npz'}")
        if rel not in manifest["files"] or rel in files[:index]:
            raise BundleError(f"{where}: sample file {rel!r} is not a bundle file or is listed twice")
    return files


def _listing(root: pathlib.Path) -> set[str]:
    """Every file, symlink and empty dir under root, as posix paths, without following links."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = pathlib.Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            found.add((base / name).relative_to(root).as_posix())
        if not dirnames and not filenames and base != root:
            found.add(base.relative_to(root).as_posix() + "/")
    return found


def _check_files(root: pathlib.Path, manifest: dict[str, Any], source: pathlib.Path) -> None:
    """Every listed file is inside the bundle and matches its sha256; no file is unlisted."""
    real_root = root.resolve()
    for rel, digest in manifest["files"].items():
        target = root / rel
        resolved = target.resolve()
        if not resolved.is_relative_to(real_root):
            raise BundleError(f"{source}: {rel} points outside the bundle")
        if not resolved.is_file():
            raise BundleError(f"{source}: {rel} is listed in the manifest but missing")
        if file_sha256(resolved) != digest:
            raise BundleError(f"{source}: {rel} does not match its sha256 in the manifest "
                              "(tampered or corrupt)")
    extra = sorted(_listing(root) - set(manifest["files"]) - {MANIFEST})
    if extra:
        raise BundleError(f"{source}: {extra[0]} is not listed in the manifest")


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of a graph and all its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else [])
            yield from attr.tensors
            for sub in [attr.g] if attr.HasField("g") else []:
                yield from _tensors(sub)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _check_external_data(root: pathlib.Path, rel: str, manifest: dict[str, Any],
                         source: pathlib.Path) -> None:
    """An .onnx file may only point its external tensors at files the manifest lists."""
    try:
        model = onnx.load(root / rel, load_external_data=False)
    except Exception as exc:
        raise BundleError(f"{source}: {rel} is not a readable ONNX model ({exc})") from exc
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        ref = (pathlib.PurePosixPath(rel).parent / location).as_posix()
        if location != _safe_relpath(location, f"{source}: {rel}") or ref not in manifest["files"]:
            raise BundleError(f"{source}: {rel} tensor {tensor.name} uses external data {location!r} "
                              "that is not a bundle file")


def _session(root: pathlib.Path, rel: str, manifest: dict[str, Any], source: pathlib.Path,
             level: str | None = None, cpu_only: bool = False) -> ort.InferenceSession:
    opts = manifest["session_options"]
    options = session_options(level or opts["graph_optimization_level"], opts["intra_op_num_threads"])
    providers = ["CPUExecutionProvider"] if cpu_only else providers_for(manifest["execution_providers"])
    try:
        return ort.InferenceSession(os.fspath(root / rel), options, providers=providers)
    except Exception as exc:
        raise BundleError(f"{source}: ONNX Runtime cannot load {rel}: {exc}") from exc


def _run(session: ort.InferenceSession, feeds: dict[str, Any], rel: str, source: pathlib.Path) -> dict[str, Any]:
    try:
        return run(session, feeds)
    except Exception as exc:
        raise BundleError(f"{source}: {rel} fails on the stored sample with {describe_shapes(feeds)}: "
                          f"{_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    """ORT's message on one line (some of its messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[tuple[pathlib.Path, pathlib.Path, dict[str, Any]]]:
    """(source path, checked root dir, manifest); a zip's temp dir lives only inside the block."""
    source = pathlib.Path(path)
    with _bundle_root(source) as root:
        manifest = _read_manifest(root, source)
        _check_files(root, manifest, source)
        for rel in manifest["files"]:
            if rel.endswith(".onnx"):
                _check_external_data(root, rel, manifest, source)
        if SAMPLE_FILE not in manifest["files"]:
            raise BundleError(f"{source}: no {SAMPLE_FILE} listed in the manifest")
        yield source, root, manifest


def load_bundle(path: str | os.PathLike[str]) -> LoadedBundle:
    """Check a bundle (schema, paths, checksums, no extra files) and open its model as the manifest says."""
    with _opened(path) as (source, root, manifest):
        session = _session(root, manifest["model_file"], manifest, source)
        # Only sample.npz is read here: the other samples' names and checksums were checked above, and
        # rerunning them all (one per calibration shape) is verify_bundle's job, so loading stays fast.
        inputs, outputs = load_sample(root / SAMPLE_FILE, SAMPLE_FILE, manifest, source)
    return LoadedBundle(source, manifest, session, inputs, outputs)


def _numeric_check(name: str, errors: list[OutputError], atol: float, rtol: float) -> VerifyCheck:
    """Passes when every output is within atol (absolute) or rtol (relative to its max |value|)."""
    bad = [e for e in errors if not (e.max_abs <= atol or e.max_rel <= rtol)]
    worst = max(errors, key=lambda e: e.max_abs, default=None)
    if bad:
        detail = "; ".join(f"output {e.name}: max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g}" for e in bad)
        return VerifyCheck(name, False, f"{detail} (allowed atol {atol:g} or rtol {rtol:g})")
    summary = f"max abs {worst.max_abs:.3g} on {worst.name}" if worst else "no outputs"
    return VerifyCheck(name, True, f"{len(errors)} output(s), {summary} (atol {atol:g}, rtol {rtol:g})")


def _ort_vs_onnx(root: pathlib.Path, manifest: dict[str, Any], source: pathlib.Path,
                 samples: list[dict[str, Any]]) -> list[OutputError]:
    """model.ort against model.onnx run at ORT_ENABLE_EXTENDED on the CPU EP (bit-exact on one machine).

    Not the default ALL level: on x86 it adds NCHWc layout transforms that .ort files leave out.
    """
    shipped_file = manifest["model_file"]
    onnx_session = _session(root, ONNX_FILE, manifest, source, level="extended", cpu_only=True)
    reference = [_run(onnx_session, inputs, ONNX_FILE, source) for inputs in samples]
    ort_session = _session(root, shipped_file, manifest, source, cpu_only=True)
    return compare_outputs(reference, [_run(ort_session, inputs, shipped_file, source) for inputs in samples])


def _check_samples(report: VerifyReport, root: pathlib.Path, manifest: dict[str, Any], source: pathlib.Path,
                   session: ort.InferenceSession) -> list[dict[str, Any]]:
    """One check per stored sample (named by its file, its detail led by its input shapes); the inputs that ran.

    A sample the shipped model cannot run fails its own check, and the other samples still run.
    """
    ran = []
    for rel in sample_files(manifest, f"{source}/{MANIFEST}"):
        inputs, stored = load_sample(root / rel, rel, manifest, source)
        shapes = describe_shapes(inputs)
        try:
            got = run(session, inputs)
        except Exception as exc:  # ORT's own error types
            detail = f"{shapes}: {report.model_file} fails: {_one_line(exc)}"
            report.checks.append(VerifyCheck(f"sample {rel}", False, detail))
            continue
        errors = report.sample_errors_by_file[rel] = compare_outputs([stored], [got])
        check = _numeric_check(f"sample {rel}", errors, SAMPLE_ATOL, SAMPLE_RTOL)
        report.checks.append(dataclasses.replace(check, detail=f"{shapes}: {check.detail}"))
        ran.append(inputs)
    report.sample_errors = report.sample_errors_by_file.get(SAMPLE_FILE, [])
    return ran


def verify_bundle(path: str | os.PathLike[str]) -> VerifyReport:
    """Load a bundle, rerun each stored sample and, for mobile bundles, compare model.ort with model.onnx.

    Structural faults (schema, tampering, unsafe paths) raise BundleError; numeric drift beyond the
    tolerances above, or a stored sample the shipped model cannot run, fails a check of the report.
    """
    with _opened(path) as (source, root, manifest):
        target = manifest["target"].get("name") if isinstance(manifest["target"], dict) else None
        shipped_file = manifest["model_file"]
        report = VerifyReport(source, str(target), shipped_file)
        report.checks += [VerifyCheck("schema", True, f"schema_version {SCHEMA_VERSION}, all keys present"),
                          VerifyCheck("files", True, f"{len(manifest['files'])} file(s): paths inside the "
                                      "bundle, sha256 match, nothing unlisted")]
        session = _session(root, shipped_file, manifest, source)
        providers = ", ".join(session.get_providers())
        report.checks.append(VerifyCheck("load", True, f"{shipped_file} on {providers}"))
        ran = _check_samples(report, root, manifest, source, session)
        if ran and shipped_file.endswith(".ort") and ONNX_FILE in manifest["files"]:
            report.ort_vs_onnx_errors = _ort_vs_onnx(root, manifest, source, ran)
            check = _numeric_check(f"{shipped_file} vs {ONNX_FILE} (extended)", report.ort_vs_onnx_errors,
                                   ORT_VS_ONNX_ATOL, ORT_VS_ONNX_RTOL)
            report.checks.append(dataclasses.replace(check, detail=f"{len(ran)} sample(s): {check.detail}"))
    log.info("verified %s: %s", source, "ok" if report.ok else "; ".join(report.problems))
    return report
