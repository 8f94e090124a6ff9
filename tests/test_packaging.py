"""Packaging: the sdist holds every file a build needs, whatever machine makes it; one version.

tests/run_cpu_only.sh then builds a wheel from such an sdist alone, installs it into its own
virtual environment and runs a smoke test and the core tests against it.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import dropblock_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_files():
    # .git is a folder in a clone and a file in a git worktree: either is a checkout.
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("needs the git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [path for path in listing.decode().split("\0") if path and os.path.exists(os.path.join(ROOT, path))]


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory):
    pytest.importorskip("build")
    files = tracked_files()
    tree = tmp_path_factory.mktemp("tree")
    for path in files:
        os.makedirs(os.path.dirname(tree / path), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), tree / path)
    dist = tmp_path_factory.mktemp("dist")
    # As on a machine without CUDA: setup.py then compiles no CUDA source, and the sdist must still
    # carry them all.
    env = dict(os.environ, FORCE_CUDA="0", CUDA_HOME="")
    run = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist), "."],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (archive,) = list(dist.glob("dropblock_cuda-*.tar.gz"))
    assert archive.name == f"dropblock_cuda-{dropblock_cuda.__version__}.tar.gz"
    with tarfile.open(archive) as tar:
        prefix = archive.name[: -len(".tar.gz")] + "/"
        return {name[len(prefix) :] for name in tar.getnames() if name.startswith(prefix)}


def test_sdist_holds_every_source_header_and_build_file(sdist_members):
    files = tracked_files()
    needed = [f for f in files if f.startswith(("csrc/", "dropblock_cuda/"))]
    needed += ["CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in"]
    assert any(f.endswith(".cu") for f in needed) and any(f.endswith(".h") for f in needed)
    missing = sorted(set(needed) - sdist_members)
    assert not missing, missing


def test_sdist_holds_no_build_output(sdist_members):
    assert not [m for m in sdist_members if m.endswith((".so", ".o", ".pyc"))]


def test_version_has_one_source():
    from dropblock_cuda import _version

    assert dropblock_cuda.__version__ == _version.__version__
    assert importlib.metadata.version("dropblock_cuda") == dropblock_cuda.__version__
    with open(os.path.join(ROOT, "setup.py")) as setup_py, open(os.path.join(ROOT, "pyproject.toml")) as pyproject:
        setup_text, pyproject_text = setup_py.read(), pyproject.read()
    assert "version=" not in setup_text.replace(" ", "")
    assert 'dynamic = ["version"]' in pyproject_text and "dropblock_cuda._version.__version__" in pyproject_text
