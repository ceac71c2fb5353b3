"""The loader treats bundles as untrusted; the writer never leaves half a bundle behind."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import onnxruntime.tools.convert_onnx_models_to_ort as ort_converter
import pytest

from edgec.core.errors import BundleError
from edgec.runtime.bundle import file_sha256, write_bundle
from edgec.runtime.loader import load_bundle, verify_bundle
from edgec.runtime.session import run
from edgec.targets.registry import get_target


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory, tiny_model, tiny_feeds):
    out = tmp_path_factory.mktemp("safety") / "cpu"
    return write_bundle(out, model=tiny_model, target=get_target("cpu-x86"), sample_inputs=tiny_feeds)


@pytest.fixture
def bundle_copy(tmp_path, cpu_bundle):
    return shutil.copytree(cpu_bundle, tmp_path / "copy")


def _edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def test_copy_loads_before_tampering(bundle_copy):
    # Guards the tests below: each fails for the reason it names, not because the copy is broken.
    loaded = load_bundle(bundle_copy)
    got = run(loaded.session, loaded.sample_inputs)
    np.testing.assert_allclose(got["probs"], loaded.sample_outputs["probs"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("victim", ["model.onnx", "sample.npz"])
def test_tampered_file_is_named(bundle_copy, victim):
    data = bytearray((bundle_copy / victim).read_bytes())
    data[-20] ^= 0xFF
    (bundle_copy / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{victim} does not match its sha256"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=victim):
        verify_bundle(bundle_copy)


def test_tampered_zip_member_is_named(tmp_path, cpu_bundle):
    out = tmp_path / "b.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for path in cpu_bundle.iterdir():
            data = path.read_bytes()
            zf.writestr(path.name, data[:-1] + b"\0" if path.name == "model.onnx" else data)
    with pytest.raises(BundleError, match="model.onnx does not match"):
        load_bundle(out)


@pytest.mark.parametrize("bad_path", ["../outside.bin", "/etc/hostname", "sub/../../x", "C:\\x"])
def test_manifest_path_escaping_bundle_is_refused(bundle_copy, bad_path):
    _edit_manifest(bundle_copy, lambda m: m["files"].__setitem__(bad_path, "0" * 64))
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(bundle_copy)


def test_symlink_pointing_outside_is_refused(tmp_path, bundle_copy):
    # Same bytes, same checksum: only the link's destination is wrong.
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle_copy / "model.onnx", outside)
    (bundle_copy / "model.onnx").unlink()
    os.symlink(outside, bundle_copy / "model.onnx")
    with pytest.raises(BundleError, match="model.onnx points outside the bundle"):
        load_bundle(bundle_copy)


def test_model_bytes_rechecks_checksum(bundle_copy):
    loaded = load_bundle(bundle_copy)
    assert loaded.model_bytes() == (bundle_copy / "model.onnx").read_bytes()
    (bundle_copy / "model.onnx").write_bytes(b"swapped after load")
    with pytest.raises(BundleError, match="model.onnx changed since the bundle was loaded"):
        loaded.model_bytes()
    with pytest.raises(BundleError, match="manifest.json is not a file of this bundle"):
        loaded.model_bytes("manifest.json")


def test_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match="extra.so is not listed"):
        load_bundle(bundle_copy)


def test_model_outside_file_list_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.__setitem__("model_file", "other.onnx"))
    with pytest.raises(BundleError, match="'other.onnx' is not among the bundle's files"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.__setitem__("schema_version", 2), "schema_version 2 is not 1"),
    (lambda m: m.pop("files"), "missing key 'files'"),
    (lambda m: m["session_options"].__setitem__("graph_optimization_level", "max"), "bad session_options"),
])
def test_bad_manifest_is_refused(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_slip_member_is_refused_before_extraction(tmp_path, cpu_bundle, member):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "b.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for path in cpu_bundle.iterdir():
            zf.write(path, path.name)
        zf.writestr(zipfile.ZipInfo(member), b"pwned")
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(out)
    assert not (tmp_path / "evil.txt").exists() and [p.name for p in work.iterdir()] == ["b.zip"]


def test_zip_symlink_member_is_refused(tmp_path, cpu_bundle):
    out = tmp_path / "b.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for path in cpu_bundle.iterdir():
            zf.write(path, path.name)
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError, match="'link' is a symlink"):
        load_bundle(out)


def test_existing_output_needs_force(tmp_path, cpu_bundle, tiny_model, tiny_feeds):
    out = shutil.copytree(cpu_bundle, tmp_path / "existing")
    before = _snapshot(tmp_path)
    with pytest.raises(BundleError, match=f"{out}: already exists"):
        write_bundle(out, model=tiny_model, target=get_target("android-arm64"), sample_inputs=tiny_feeds)
    assert _snapshot(tmp_path) == before

    write_bundle(out, model=tiny_model, target=get_target("android-arm64"), sample_inputs=tiny_feeds,
                 force=True)
    assert load_bundle(out).manifest["target"]["name"] == "android-arm64"
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("fmt", ["dir", "zip"])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, tiny_model, tiny_feeds, fmt):
    monkeypatch.setattr(ort_converter, "convert_onnx_models_to_ort", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("android-arm64"),
                     sample_inputs=tiny_feeds, fmt=fmt)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_forced_write_keeps_old_bundle(tmp_path, monkeypatch, cpu_bundle, tiny_model, tiny_feeds):
    out = shutil.copytree(cpu_bundle, tmp_path / "existing")
    before = _snapshot(tmp_path)
    monkeypatch.setattr(ort_converter, "convert_onnx_models_to_ort", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, model=tiny_model, target=get_target("android-arm64"), sample_inputs=tiny_feeds,
                     force=True)
    assert _snapshot(tmp_path) == before
    assert verify_bundle(out).ok


def test_failed_conversion_is_a_bundle_error(tmp_path, monkeypatch, tiny_model, tiny_feeds):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(ort_converter, "convert_onnx_models_to_ort", broken)
    with pytest.raises(BundleError, match="conversion to ORT format failed: no kernel"):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("android-arm64"),
                     sample_inputs=tiny_feeds)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["missing", "notzip.bin"])
def test_non_bundle_path_is_refused(tmp_path, name):
    if name == "notzip.bin":
        (tmp_path / name).write_bytes(b"plain bytes")
    with pytest.raises(BundleError, match=name):
        load_bundle(tmp_path / name)


def test_verify_reports_drifted_sample(bundle_copy):
    # A consistent bundle (checksums updated) whose stored outputs are wrong: verify flags the output.
    with np.load(bundle_copy / "sample.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["output/probs"] = arrays["output/probs"] + 1e-3
    np.savez(bundle_copy / "sample.npz", **arrays)
    digest = file_sha256(bundle_copy / "sample.npz")
    _edit_manifest(bundle_copy, lambda m: m["files"].__setitem__("sample.npz", digest))
    report = verify_bundle(bundle_copy)
    assert not report.ok
    assert report.sample_errors[0].max_abs == pytest.approx(1e-3, rel=1e-2)
    assert [c.name for c in report.checks if not c.ok] == ["sample sample.npz"]
    assert report.problems[0].startswith("sample sample.npz: input.1 2x3x16x16: output probs: max abs")


@pytest.fixture(scope="module")
def multi_bundle(tmp_path_factory, tiny_model, tiny_feeds):
    """sample.npz at batch 2, samples/1.npz at batch 1, samples/2.npz at batch 3."""
    rng = np.random.default_rng(3)
    extra = [{"input.1": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in (1, 3)]
    out = tmp_path_factory.mktemp("safety") / "multi"
    return write_bundle(out, model=tiny_model, target=get_target("cpu-x86"), sample_inputs=tiny_feeds,
                        extra_samples=extra)


@pytest.fixture
def multi_copy(tmp_path, multi_bundle):
    return shutil.copytree(multi_bundle, tmp_path / "multi")


def _rewrite_sample(bundle, rel, edit):
    """Change a sample file's arrays and update its sha256, so only verify's numbers can catch it."""
    with np.load(bundle / rel, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    edit(arrays)
    np.savez(bundle / rel, **arrays)
    digest = file_sha256(bundle / rel)
    _edit_manifest(bundle, lambda m: m["files"].__setitem__(rel, digest))


@pytest.mark.parametrize("bad_path", ["../outside.npz", "/tmp/x.npz", "samples/../../x.npz", "C:\\x.npz"])
def test_manifest_sample_path_escaping_bundle_is_refused(multi_copy, bad_path):
    _edit_manifest(multi_copy, lambda m: m["samples"][1].__setitem__("file", bad_path))
    with pytest.raises(BundleError, match="samples: path .* escapes the bundle"):
        load_bundle(multi_copy)
    with pytest.raises(BundleError, match="escapes the bundle"):
        verify_bundle(multi_copy)


@pytest.mark.parametrize(("index", "name", "message"), [
    (1, "model.onnx", "sample file 'model.onnx' is not samples/<n>.npz"),
    (0, "samples/1.npz", "sample file 'samples/1.npz' is not sample.npz"),
    (1, "samples/9.npz", "sample file 'samples/9.npz' is not a bundle file"),
    (2, "samples/1.npz", "sample file 'samples/1.npz' is not a bundle file or is listed twice"),
])
def test_manifest_sample_list_is_checked(multi_copy, index, name, message):
    _edit_manifest(multi_copy, lambda m: m["samples"][index].__setitem__("file", name))
    with pytest.raises(BundleError, match=message):
        load_bundle(multi_copy)


def test_tampered_extra_sample_is_named(multi_copy):
    data = bytearray((multi_copy / "samples/2.npz").read_bytes())
    data[-20] ^= 0xFF
    (multi_copy / "samples/2.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="samples/2.npz does not match its sha256"):
        verify_bundle(multi_copy)


def test_extra_sample_needing_pickle_is_refused(multi_copy):
    _rewrite_sample(multi_copy, "samples/1.npz", lambda a: a.__setitem__("output/probs", np.array([{}], object)))
    with pytest.raises(BundleError, match="samples/1.npz is not a plain npz archive"):
        verify_bundle(multi_copy)


def test_verify_names_the_drifted_extra_sample(multi_copy):
    _rewrite_sample(multi_copy, "samples/2.npz", lambda a: a.__setitem__("output/probs", a["output/probs"] + 1e-3))
    report = verify_bundle(multi_copy)
    assert not report.ok
    assert report.problems == [report.problems[0]]  # one line, for the one sample that drifted
    assert report.problems[0].startswith("sample samples/2.npz: input.1 3x3x16x16: output probs: max abs 0.001")
    assert [c.ok for c in report.checks if c.name.startswith("sample")] == [True, True, False]
    assert report.sample_errors_by_file["samples/2.npz"][0].max_abs == pytest.approx(1e-3, rel=1e-2)
    assert report.sample_errors_by_file["sample.npz"][0].max_abs <= 1e-6


def test_verify_runs_the_other_samples_when_one_cannot_run(multi_copy):
    _rewrite_sample(multi_copy, "samples/1.npz",
                    lambda a: a.__setitem__("input/input.1", np.zeros((1, 4, 16, 16), np.float32)))
    report = verify_bundle(multi_copy)
    assert [c.ok for c in report.checks if c.name.startswith("sample")] == [True, False, True]
    (problem,) = report.problems
    assert problem.startswith("sample samples/1.npz: input.1 1x4x16x16: model.onnx fails: [ONNXRuntimeError]")
    assert "\n" not in problem
