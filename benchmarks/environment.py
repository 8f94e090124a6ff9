"""Where a benchmark ran: the device, the library versions, the commit and the time, for every
result file (a number without its machine is no number)."""

import datetime
import importlib.metadata
import os
import platform
import subprocess

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The short commit of this checkout, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except Exception:
        return "not installed"


def environment(device: torch.device, threads: int) -> dict:
    """The environment block of every result file (its keys are part of the files' format)."""
    device = torch.device(device)
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "timm": package_version("timm"),
        "dropblock": package_version("dropblock"),
        "dropblock_cuda": package_version("dropblock_cuda"),
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
