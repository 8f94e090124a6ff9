"""Checks that need no GPU of code that only runs on one.

* The CUDA kernels, compiled for sm_90 by nvcc with `-Xptxas -v`: no kernel may spill registers,
  keep a stack frame or use local memory (each of these is a hidden round trip through device
  memory in a kernel meant to run at the speed of a copy). Skips without nvcc or torch's headers
  (the CPU-only CI stage).
* The headers of the mask law (those csrc/mask_logic.h includes), each compiled alone by the host
  compiler: each includes what it uses, so that a kernel may include only the ones it needs.
* The code that tests/test_cuda.py runs in fresh interpreters (its SUBPROCESS_CODE): it must
  compile, and every name it uses must be bound in it or be a builtin. Those tests skip without a
  GPU, so a NameError there would otherwise wait for the first GPU run to show.
  The GPU-only Python modules themselves get the same name check.
* The concurrency test of tests/test_cuda.py, run on the CPU kernels (a dry run of its code).
* Every shell script parses (`bash -n`): some run only on a GPU machine or by hand.
"""

import ast
import builtins
import importlib
import re
import shutil
import subprocess
import symtable
from pathlib import Path

import pytest

from helpers import cuda_toolkit_file, host_compile_command

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------
# ptxas resources
# ------------------------------------------------------------------------------------------


def _nvcc():
    nvcc = cuda_toolkit_file("bin/nvcc")
    return str(nvcc) if nvcc is not None else shutil.which("nvcc")


def _torch_include():
    """The folder holding torch's c10/macros/Macros.h (the .cu files use c10's host/device macros)."""
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    for path in include_paths():
        if (Path(path) / "c10" / "macros" / "Macros.h").is_file():
            return path
    return None


def ptxas_resource_problems(report):
    """Per function in `nvcc -Xptxas -v` output, what it keeps in device memory besides its
    registers: ["<function>: 16 bytes stack frame", ...]; [] when nothing is. ptxas prints for
    every function a `Function properties for F` block with its stack frame and spill stores and
    loads, and a `Used N registers, ...` line that names local memory (`lmem`) and the stack of
    the functions it calls (`cumulative stack size`) when there are some."""
    problems, function = [], None
    for line in report.splitlines():
        match = re.search(r"Function properties for (\S+)", line)
        if match:
            function = match.group(1)
            continue
        kinds = r"(\d+) bytes (stack frame|spill stores|spill loads|lmem|cumulative stack size)"
        for amount, what in re.findall(kinds, line):
            if int(amount) != 0:
                problems.append(f"{function}: {amount} bytes {what}")
    return problems


def ptxas_report(source, tmp_path):
    """nvcc's ptxas report (stderr) for `source` compiled to an sm_90 cubin, or skips the test."""
    nvcc, torch_include = _nvcc(), _torch_include()
    if nvcc is None or torch_include is None:
        pytest.skip("needs nvcc and torch's C++ headers")
    # -cubin for one architecture: ptxas runs once per kernel, no host code is compiled.
    command = [
        nvcc,
        "-std=c++17",
        "-O3",
        "-arch=sm_90",
        "-cubin",
        "-Xptxas",
        "-v",
        f"-I{ROOT / 'csrc'}",
        "-isystem",
        torch_include,
        str(source),
        "-o",
        str(tmp_path / (Path(source).stem + ".cubin")),
    ]
    build = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    return build.stderr


CU_FILES = sorted(ROOT.glob("csrc/**/*.cu"))


def test_there_are_cuda_sources_to_check():
    assert CU_FILES, "no .cu under csrc/: the check below would pass vacuously"


@pytest.mark.parametrize("source", CU_FILES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_cuda_kernels_for_sm90_have_no_spills_stack_or_local_memory(source, tmp_path):
    report = ptxas_report(source, tmp_path)
    kernels = re.findall(r"Compiling entry function '(\S+)' for 'sm_90'", report)
    assert kernels, "ptxas reported no kernel:\n" + report[-2000:]
    assert not ptxas_resource_problems(report), "\n".join(ptxas_resource_problems(report))


def test_ptxas_report_check_finds_a_stack_frame(tmp_path):
    # The check above, on a kernel that must keep a stack frame (an array indexed at run time
    # lives in local memory): the report's format is the one ptxas_resource_problems reads.
    source = tmp_path / "local_array.cu"
    source.write_text(
        "__global__ void local_array(const int* index, float* out) {\n"
        "  float a[256];\n"
        "  for (int i = 0; i < 256; ++i) a[i] = out[i];\n"
        "  a[index[0] & 255] = 1.0f;\n"
        "  out[0] = a[index[threadIdx.x] & 255];\n"
        "}\n"
    )
    problems = ptxas_resource_problems(ptxas_report(source, tmp_path))
    assert any("local_array" in p and "stack frame" in p for p in problems), problems


def test_ptxas_report_check_reads_every_kind_of_device_memory_use():
    report = (
        "ptxas info    : Function properties for _Z1fv\n"
        "    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 0 barriers, 16 bytes lmem\n"
        "ptxas info    : Function properties for _Z1gv\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 12 registers, used 1 barriers, 1092 bytes smem\n"
    )
    assert ptxas_resource_problems(report) == [
        "_Z1fv: 8 bytes spill stores",
        "_Z1fv: 4 bytes spill loads",
        "_Z1fv: 16 bytes lmem",
    ]


# ------------------------------------------------------------------------------------------
# The mask law's headers stand alone
# ------------------------------------------------------------------------------------------

LAW_HEADERS = re.findall(r'^#include "([a-z_]+\.h)"', (ROOT / "csrc" / "mask_logic.h").read_text(), re.MULTILINE)


def test_mask_logic_includes_the_law_headers():
    assert len(LAW_HEADERS) >= 5 and all((ROOT / "csrc" / name).is_file() for name in LAW_HEADERS), LAW_HEADERS


@pytest.mark.parametrize("header", LAW_HEADERS + ["mask_logic.h"])
def test_mask_law_header_compiles_on_its_own(header, tmp_path):
    source = tmp_path / "include_one.cpp"
    source.write_text(f'#include "{header}"\n#include "{header}"\n')  # twice: #pragma once holds
    command = host_compile_command(source, tmp_path / "include_one.o", std="c++17", flags=("-fsyntax-only", "-Werror"))
    if command is None:
        pytest.skip("needs a host C++ compiler")
    build = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]


# ------------------------------------------------------------------------------------------
# Code run in subprocesses by the GPU tests
# ------------------------------------------------------------------------------------------


def unbound_names(code, filename="<code>"):
    """Names that `code` reads but neither binds (assignment, import, def, class, parameter, for,
    with, except) nor finds among the builtins: each one a NameError when that line runs. Reads
    in functions, lambdas and comprehensions that resolve to module level count too; the order
    of binding and use is not checked."""
    compile(code, filename, "exec")  # a SyntaxError fails the caller
    top = symtable.symtable(code, filename, "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    known = bound | set(dir(builtins))
    missing = set()

    def visit(table, module_level):
        for symbol in table.get_symbols():
            # A read that reaches the module's names: at module level, or global in a nested scope
            # (a free variable is an enclosing function's, bound there by construction).
            reaches_module = module_level or symbol.is_global()
            if symbol.is_referenced() and reaches_module and symbol.get_name() not in known:
                missing.add(symbol.get_name())
        for child in table.get_children():
            visit(child, False)

    visit(top, True)
    return sorted(missing)


@pytest.mark.parametrize(
    "code,missing",
    [
        ("import torch\nassert_equal(torch.ones(1), torch.ones(1))\n", ["assert_equal"]),  # issue 11's NameError
        ("from helpers import assert_equal\nassert_equal(1, 1)\n", []),
        ("def f(a):\n    return a + b\nprint(f(1))\n", ["b"]),
        ("def f():\n    b = 1\n    return lambda: b\nf()()\n", []),  # free, bound in the enclosing function
        ("print([y for y in range(3)], len, ValueError)\n", []),
        ("print([y + z for y in range(3)])\n", ["z"]),
        ("class A:\n    n = 1\nprint(A.n)\nwith open('f') as fh, __import__('os').scandir() as d:\n    pass\n", []),
        ("try:\n    pass\nexcept Exception as e:\n    print(e)\nfor i in range(2):\n    print(i)\n", []),
    ],
)
def test_unbound_names_finds_what_would_raise_a_name_error(code, missing):
    assert unbound_names(code) == missing


def test_unbound_names_rejects_code_that_does_not_compile():
    with pytest.raises(SyntaxError):
        unbound_names("def f(:\n    pass\n")


# The GPU-only test modules: every code string they hand to a fresh interpreter (`python -c`)
# comes from their SUBPROCESS_CODE, so that the test below sees all of them.
GPU_TEST_MODULES = ["test_cuda.py", "test_ecosystem.py"]


def _code_arguments_of_python_c(path):
    """The expression after every "-c" literal in a list or tuple of `path`, as source text."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            for i, element in enumerate(node.elts[:-1]):
                if isinstance(element, ast.Constant) and element.value == "-c":
                    found.append(ast.unparse(node.elts[i + 1]))
    return found


@pytest.mark.parametrize("module", GPU_TEST_MODULES)
def test_gpu_tests_run_only_registered_code_in_subprocesses(module):
    for argument in _code_arguments_of_python_c(Path(__file__).parent / module):
        assert argument.startswith("SUBPROCESS_CODE["), f"{module}: python -c {argument} is not in SUBPROCESS_CODE"


# Python that runs on a GPU machine only, in whole or in part.
GPU_ONLY_PYTHON = [
    "tests/test_cuda.py",
    "tests/test_ecosystem.py",
    "benchmarks/gpu_bench.py",
    "benchmarks/sanitizer_smoke.py",
]


@pytest.mark.parametrize("path", GPU_ONLY_PYTHON)
def test_gpu_only_python_binds_every_name_it_uses(path):
    # A helper used but not imported in a test that skips here would be a NameError on the GPU.
    assert unbound_names((ROOT / path).read_text(), path) == []


def test_subprocess_code_of_the_gpu_tests_compiles_and_binds_every_name():
    checked = 0
    for module in GPU_TEST_MODULES:
        registry = getattr(importlib.import_module(Path(module).stem), "SUBPROCESS_CODE", {})
        for name, code in registry.items():
            assert unbound_names(code, f"{module}: SUBPROCESS_CODE[{name!r}]") == [], name
            checked += 1
    assert checked, "nothing registered: the check would pass vacuously"


def test_the_many_keys_gpu_test_runs_on_the_cpu_kernels(mask_kernel):
    # A dry run of test_cuda.check_many_keys (the concurrency test) on the CPU, on its small case:
    # its own code runs here (every comparison is then CPU against CPU, the scale against the
    # kept bits a real check), so a GPU run can only fail on what the GPU does.
    import test_cuda

    shape, block, p = test_cuda.CONCURRENCY_CASES[1]
    test_cuda.check_many_keys(shape, block, p, mask_kernel, device="cpu", keys=40)
    assert mask_kernel("auto") == "scatter"  # the last path the check set; the fixture restores the one found


# ------------------------------------------------------------------------------------------
# Shell scripts
# ------------------------------------------------------------------------------------------

# Scripts CI runs only in part (gpu_check.sh as a dry run) or not at all (the GPU-image rehearsal).
SHELL_SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix() for d in ("tests", "benchmarks", ".ci") for p in (ROOT / d).glob("*.sh")
)
SHELL_SCRIPTS += [".ci/run"]


def test_shell_scripts_are_found():
    assert {"benchmarks/gpu_check.sh", "tests/run_gpu_image_rehearsal.sh", "tests/run.sh"} <= set(SHELL_SCRIPTS)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_parses(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shell_script_check_finds_a_syntax_error(tmp_path):
    broken = tmp_path / "broken.sh"
    broken.write_text("if true; then\n  echo unclosed\n")
    assert subprocess.run(["bash", "-n", str(broken)], capture_output=True).returncode != 0
