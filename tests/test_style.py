"""The sources keep one style: ruff's formatter and its pyflakes checks (pyproject.toml) for Python,
clang-format (.clang-format) for C++ and CUDA. Fix with `ruff format . && ruff check --fix .` and
`clang-format -i` on the files named."""

import shutil
import subprocess
import sys

import pytest

from helpers import ROOT


def tracked(*patterns):
    """The files git tracks under ROOT matching `patterns`; skips outside a git checkout (an sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [line for line in listed.stdout.splitlines() if line]
    assert files, f"no tracked file matches {patterns}: the check would pass vacuously"
    return files


def ruff_command():
    if shutil.which("ruff"):
        return ["ruff"]
    probe = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("ruff is not installed (tests/requirements.txt has it)")
    return [sys.executable, "-m", "ruff"]


def test_python_is_ruff_formatted_and_lint_clean():
    files = tracked("*.py")
    ruff = ruff_command()
    formatted = subprocess.run([*ruff, "format", "--check", *files], cwd=ROOT, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    checked = subprocess.run(
        [*ruff, "check", "--output-format", "concise", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_cpp_and_cuda_are_clang_formatted():
    files = tracked("csrc/*.h", "csrc/*.cpp", "csrc/*.cu", "csrc/*.cuh", "tests/cpp/*.h", "tests/cpp/*.cpp")
    clang_format = shutil.which("clang-format")
    if clang_format is None:
        pytest.skip("clang-format is not installed (tests/requirements.txt has it)")
    run = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
