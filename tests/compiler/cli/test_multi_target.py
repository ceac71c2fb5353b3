"""edgec build --target a,b: one bundle per target in a package folder, package.json, shared builds.

Real CLI builds of zoo models; no assertion on what the host's timing decides.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgec.compiler.cli import cli
from edgec.compiler.config import device_files, make_build_config
from edgec.compiler.search.evaluate import EvaluationContext, build_and_score, make_scorer
from edgec.compiler.search.shared import SharedBuilds
from edgec.compiler.sweep_models import load_sweep_models
from edgec.models.zoo import get_zoo_model
from edgec.runtime import load
from edgec.runtime.devices import export_device_file
from edgec.targets.registry import get_target


def _build(runner, out, *args):
    return runner.invoke(cli, ["build", "zoo:mnist-resnet", "-o", str(out), "--json", *map(str, args)],
                         catch_exceptions=False)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reruns_its_sample(bundle) -> float:
    """The largest difference between the bundle's outputs on its sample and the outputs stored with it."""
    outputs = bundle.session.run(None, bundle.sample_inputs)
    names = [o.name for o in bundle.session.get_outputs()]
    return max(float(np.max(np.abs(got - bundle.sample_outputs[name])))
               for name, got in zip(names, outputs, strict=True))


@pytest.fixture(scope="module")
def phone_file(tmp_path_factory) -> str:
    """A device file swept on this host with android-arm64's session options (few shapes: the test's only)."""
    path = tmp_path_factory.mktemp("device") / "phone.json"
    export_device_file("local", path, target="android-arm64", models=load_sweep_models(["mnist-resnet"]),
                       max_per_op=2, runs=3, warmup=1)
    return str(path)


def test_a_search_per_target_writes_a_loadable_bundle_each_and_package_json(runner, tmp_path, phone_file):
    out = tmp_path / "pkg"
    result = _build(runner, out, "--target", "cpu-x86,android-arm64", "--device-file", f"android-arm64={phone_file}",
                    # A loose target (int8 alone runs at about 0.65x): reaching it is never a question of timing.
                    "--latency-ratio", 0.9, "--budget", 4, "--layer-budget", 0)
    assert result.exit_code == 0, result.stderr
    package = json.loads((out / "package.json").read_text())
    assert json.loads(result.stdout)["manifest"] == package
    assert package["targets"] == ["cpu-x86", "android-arm64"]
    assert sorted(p.name for p in out.iterdir()) == [
        "android-arm64", "android-arm64.pareto.png", "android-arm64.report.html", "android-arm64.search-choice.toml",
        "cpu-x86", "cpu-x86.pareto.png", "cpu-x86.report.html", "cpu-x86.search-choice.toml", "package.json"]
    for variant in package["variants"]:
        bundle = load(out / variant["bundle"])
        manifest = bundle.manifest
        search = manifest["metrics"]["search"]
        assert variant["bundle"] == variant["target"] == manifest["target"]["name"]
        assert variant["manifest_sha256"] == _sha256(out / variant["bundle"] / "manifest.json")
        assert variant["execution_providers"] == get_target(variant["target"]).ep_names
        assert variant["candidate"] == search["chosen"]["candidate"]
        # Accuracy: the zoo's held-out metric, as the bundle's manifest has it (same figures, same name).
        assert variant["accuracy"]["metric"] == search["metric"]
        assert variant["accuracy"]["before"] == pytest.approx(search["original"]["accuracy"], abs=1e-12)
        assert variant["accuracy"]["after"] == pytest.approx(search["chosen"]["accuracy"], abs=1e-12)
        assert variant["builds"]["built"] + variant["builds"]["shared"] >= search["evaluations"] + 1
        assert _reruns_its_sample(bundle) <= 1e-5
    host, phone = package["variants"]
    # Each its own latency source: this host's timing for cpu-x86, the device file's prediction for the phone.
    assert host["latency"]["source"] == "measured" and host["latency"]["target_is_this_host"] is True
    assert host["latency"]["ms"] == pytest.approx(
        load(out / "cpu-x86").manifest["metrics"]["search"]["chosen"]["latency_ms"]["measured"], rel=1e-12)
    assert phone["latency"]["source"] == "predicted" and phone["latency"]["device_file"] == phone_file
    phone_search = load(out / "android-arm64").manifest["metrics"]["search"]
    assert phone["latency"]["ms"] == pytest.approx(phone_search["chosen"]["latency_ms"]["predicted"], rel=1e-12)
    assert phone_file in phone_search["latency_source"]
    assert package["shared_builds"] == sum(v["builds"]["shared"] for v in package["variants"])


def test_targets_that_build_alike_share_the_build_and_force_replaces_the_package(runner, tmp_path):
    # cpu-x86 and cuda have the same contrib ops, all fuse reads of a target: the pipeline runs once.
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("an earlier package")
    args = ("--target", "cpu-x86,cuda", "--passes", "cleanup,fuse")
    refused = _build(runner, out, *args)
    assert refused.exit_code == 2 and "already exists; pass --force" in refused.stderr
    assert (out / "old.txt").exists()
    result = _build(runner, out, *args, "--force")
    assert result.exit_code == 0, result.stderr
    package = json.loads((out / "package.json").read_text())
    assert package["shared_builds"] == 1
    assert [v["builds"] for v in package["variants"]] == [{"built": 1, "shared": 0}, {"built": 0, "shared": 1}]
    assert sorted(p.name for p in out.iterdir()) == ["cpu-x86", "cpu-x86.report.html", "cuda", "cuda.report.html",
                                                      "package.json"]
    host, gpu = load(out / "cpu-x86"), load(out / "cuda")
    assert (out / "cpu-x86" / "model.onnx").read_bytes() == (out / "cuda" / "model.onnx").read_bytes()
    assert host.manifest["passes"] == gpu.manifest["passes"]
    assert gpu.manifest["execution_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _reruns_its_sample(host) <= 1e-5 and _reruns_its_sample(gpu) <= 1e-5
    # A plain build: latency is the host's timing, accuracy the zoo's metric on its evaluation split.
    for variant in package["variants"]:
        assert variant["candidate"] is None and variant["passes"] == ["cleanup", "fuse"]
        assert variant["latency"]["source"] == "measured" and variant["latency"]["ms"] > 0
        assert variant["accuracy"]["after"] == pytest.approx(variant["accuracy"]["before"], abs=1e-9)


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch=x.json", "--device-file nosuch=x.json: target 'nosuch' is not among --target cpu-x86,android-arm64"),
    ("android-arm64=missing.json", "--device-file android-arm64=missing.json: no such file"),
    ("phone.json", "--device-file phone.json: with several targets, name the one it is for"),
])
def test_a_bad_device_file_is_one_line_and_writes_nothing(runner, tmp_path, spec, message):
    out = tmp_path / "pkg"
    result = _build(runner, out, "--target", "cpu-x86,android-arm64", "--device-file", spec, "--latency-ms", 8)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_failure_on_the_second_target_leaves_no_package(runner, tmp_path):
    # cpu-x86 runs int8-dynamic and builds; android-arm64's formats refuse quantize-dynamic.
    out = tmp_path / "pkg"
    result = _build(runner, out, "--target", "cpu-x86,android-arm64", "--passes", "cleanup,quantize-dynamic")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "target android-arm64 does not run int8-dynamic" in lines[0], lines
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no package, no staging folder


def test_targets_and_device_files_from_the_config_file(tmp_path):
    (tmp_path / "phone.json").write_text("{}")
    config = tmp_path / "edgec.toml"
    config.write_text('target = ["cpu-x86", "android-arm64"]\n'
                      f'[search]\ndevice-file = ["android-arm64={tmp_path / "phone.json"}"]\n')
    cfg = make_build_config({"model": "m.onnx", "output": "out"}, config)
    assert cfg.targets == ("cpu-x86", "android-arm64")
    assert device_files(cfg) == {"android-arm64": str(tmp_path / "phone.json")}
    flag = make_build_config({"model": "m.onnx", "output": "out", "target": " ios-arm64 , cuda"}, config)
    assert flag.targets == ("ios-arm64", "cuda")  # the flag wins, spaces dropped


class _InProcess:
    """An executor that runs each build here, one after another (no worker start-up)."""

    def map(self, fn, items, on_result=None):
        return [fn(item) for item in items]

    def close(self) -> None:
        pass


def test_a_candidate_is_built_once_for_targets_that_agree_on_what_its_passes_read():
    zoo = get_zoo_model("mnist-resnet")
    model, feeds = zoo.onnx_path().read_bytes(), zoo.calibration(4)
    scorer = make_scorer(model, feeds[3:], None, None)  # the output-agreement proxy on a held-out sample
    pipelines = [(("cleanup", "fuse"), {}), (("prune-channels",), {"prune-channels": {"ratio": 0.5}})]
    shared = SharedBuilds()
    try:
        outcomes = {}
        for target in ("android-arm64", "ios-arm64", "cpu-x86"):
            context = EvaluationContext(model, target, tuple(feeds[:3]), 0, scorer)
            tasks = [context.task(i, *pipeline) for i, pipeline in enumerate(pipelines)]
            outcomes[target] = shared.executor(_InProcess(), get_target(target)).map(build_and_score, tasks)
        phone, ios, host = outcomes["android-arm64"], outcomes["ios-arm64"], outcomes["cpu-x86"]
        assert all(o.error == "" and 0 < o.accuracy <= 1 for o in phone + ios + host)
        # fuse reads the contrib ops (the same on both phones); pruning reads channel_selection (not the same).
        assert "contrib_ops" in phone[0].target_facts and "channel_selection" in phone[1].target_facts
        assert shared.shared == {"ios-arm64": 1}
        assert shared.built == {"android-arm64": 2, "ios-arm64": 1, "cpu-x86": 2}  # cpu-x86: other contrib ops
        assert ios[0].model == phone[0].model and ios[0].accuracy == phone[0].accuracy and ios[0].build_s == 0.0
        assert ios[1].index == 1 and ios[1].build_s > 0
    finally:
        shared.close()
