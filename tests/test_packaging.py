"""The wheel `pip install .` builds: everything under edgec/, every subpackage and data file, no warnings.

It is built offline from a copy of the checkout (setuptools writes build/ and *.egg-info next to the
sources; a copy keeps parallel runs apart), then installed into a fresh venv that borrows this one's
dependencies, where `edgec targets` must run from the installed files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
# What a build prints when something is off: setuptools' warning classes (BuildBackendWarning,
# SetuptoolsDeprecationWarning, ...) and pip's own "WARNING:" lines.
WARNING_LINE = re.compile(r"\w*Warning\b|WARNING")
ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", "out", ".pytest_cache")


def _source_files() -> dict[str, Path]:
    """Every file of the package folders, by the path the wheel must give it (edgec/...)."""
    files = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                rel = path.relative_to(ROOT / folder).as_posix()
                files[f"{package.replace('.', '/')}/{rel}"] = path
    return files


def test_packages_list_names_every_folder_with_files() -> None:
    # setuptools ships a folder only if `packages` names it: code (__init__.py) and data folders alike.
    expected = {path.rsplit("/", 1)[0].replace("/", ".") for path in _source_files()}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert sorted(expected - listed) == [], "folders missing from [tool.setuptools] packages"
    assert sorted(listed - expected) == [], "packages listed that have no folder"
    assert len(listed) == len(expected)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built offline from a copy of the checkout, and everything the build printed."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in [*PACKAGE_DIRS.values(), "tests", "bench"]:
        shutil.copytree(ROOT / folder, src / folder, ignore=SKIP)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(work / "dist"), str(src)], capture_output=True, text=True, env=ENV,
                          cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (work / "dist").glob("edgec-*.whl")
    return built, proc.stdout + proc.stderr


def test_wheel_builds_without_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    assert [line for line in log.splitlines() if WARNING_LINE.search(line)] == [], log


def test_wheel_holds_every_file_under_edgec_and_nothing_else(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        meta = {n for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        assert {n.split("/", 1)[0] for n in names - meta} == {"edgec"}  # no top-level passes/, models/, tests/
        assert not [n for n in names if n.split("/")[1] in ("tests", "bench")]
        top_level = next(n for n in meta if n.endswith("top_level.txt"))
        assert zf.read(top_level).decode().split() == ["edgec"]
        sources = _source_files()
        assert sorted(set(sources) - names) == []
        assert sorted(names - meta - set(sources)) == []
        # Data files arrive byte for byte: target profiles, app templates, the zoo's data.
        data = {n: p for n, p in sources.items() if not n.endswith(".py")}
        assert sum(n.startswith("edgec/targets/profiles/") and n.endswith(".toml") for n in data) >= 5
        assert any(n.startswith("edgec/runtime/templates/") for n in data)
        assert any(n.startswith("edgec/models/data/") for n in data)
        for name, source in data.items():
            assert zf.read(name) == source.read_bytes(), name
        assert not any(n.endswith(".pyc") for n in names)


def test_wheel_installs_in_a_fresh_venv_and_edgec_targets_runs(wheel: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    # The dependencies come from this venv's site-packages (a plain path: its .pth files, among them the
    # editable edgec's finder, are not run), so edgec itself can only come from the wheel.
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              str(path)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    assert [line for line in install.stdout.splitlines() + install.stderr.splitlines()
            if WARNING_LINE.search(line)] == [], install.stdout + install.stderr
    where = subprocess.run([str(python), "-c", "import edgec.targets.registry as r; print(r.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    targets = subprocess.run([str(venv / "bin" / "edgec"), "targets", "--json"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
    assert targets.returncode == 0, targets.stderr
    profiles = json.loads(targets.stdout)
    assert len(profiles) == len(list((ROOT / "targets" / "profiles").glob("*.toml")))
    assert {"android-arm64", "cpu-x86"} <= set(profiles)
