"""Host facts that do not come from NVML: OS facts and the installed inference runtimes.

Each runtime version is a command (run through provision.command.run) plus a pure parser of its
output; the parsers are tested on recorded outputs. The version strings we keep:

- `ollama`: the installed binary's version, e.g. "0.12.6" (from "client version is 0.12.6" when
  the CLI prints one, otherwise from "ollama version is 0.12.6"), because the binary is what
  runs after the service restarts, even when an older server is still up.
- `llama-server`: llama.cpp's build number and commit exactly as it prints them after
  "version: ", e.g. "6999 (abc1234)" (release tags are "b6999").
- `nvidia-smi`: the driver version it reports, e.g. "550.120".
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass

from provision.command import run
from provision.hardware.rig import Host


@dataclass(frozen=True)
class OsFacts:
    hostname: str
    kernel: str | None
    cpu_count: int | None
    ram_bytes: int | None


def read_os_facts() -> OsFacts:
    return OsFacts(
        hostname=socket.gethostname(),
        kernel=platform.release() or None,
        cpu_count=os.cpu_count(),
        ram_bytes=_ram_bytes(),
    )


def read_host(
    driver_version: str | None = None,
    cuda_driver_version: str | None = None,
    nvml_version: str | None = None,
) -> Host:
    """This machine's Host: OS facts, the installed runtimes, and the driver facts given."""
    facts = read_os_facts()
    return Host(
        hostname=facts.hostname,
        kernel=facts.kernel,
        cpu_count=facts.cpu_count,
        ram_bytes=facts.ram_bytes,
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        nvml_version=nvml_version,
        amdgpu_version=None,
        runtimes=detect_runtimes(),
    )


def _ram_bytes() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # the name is unknown on this platform
        return None
    if pages <= 0 or page_size <= 0:  # sysconf says -1 when it cannot tell
        return None
    return pages * page_size


_VERSION = r"\d+(?:\.\d+)+(?:[-+][0-9A-Za-z.+-]+)?"
_OLLAMA_CLIENT = re.compile(rf"^Warning: client version is ({_VERSION})\s*$", re.MULTILINE)
_OLLAMA_SERVER = re.compile(rf"^ollama version is ({_VERSION})\s*$", re.MULTILINE)
_LLAMA_SERVER = re.compile(r"^version: (\d+ \([^)\s]*\))\s*$", re.MULTILINE)
_DRIVER = re.compile(r"^\s*(\d+\.\d+(?:\.\d+)?)\s*$", re.MULTILINE)


def parse_ollama_version(output: str) -> str | None:
    """`ollama --version` (stdout and stderr) -> "0.12.6"; None when no version is printed."""
    match = _OLLAMA_CLIENT.search(output) or _OLLAMA_SERVER.search(output)
    return match.group(1) if match else None


def parse_llama_server_version(output: str) -> str | None:
    """`llama-server --version` -> "6999 (abc1234)"; backend log lines before it are skipped."""
    match = _LLAMA_SERVER.search(output)
    return match.group(1) if match else None


def parse_nvidia_smi_driver_version(output: str) -> str | None:
    """`nvidia-smi --query-gpu=driver_version --format=csv,noheader`: one line per GPU."""
    match = _DRIVER.search(output)
    return match.group(1) if match else None


@dataclass(frozen=True)
class _Runtime:
    args: tuple[str, ...]
    parse: Callable[[str], str | None]


# `--query-gpu` rather than `nvidia-smi --version`, which drivers before ~525 do not have.
RUNTIMES: dict[str, _Runtime] = {
    "llama-server": _Runtime(("--version",), parse_llama_server_version),
    "nvidia-smi": _Runtime(
        ("--query-gpu=driver_version", "--format=csv,noheader"), parse_nvidia_smi_driver_version
    ),
    "ollama": _Runtime(("--version",), parse_ollama_version),
}


def detect_runtimes(timeout_s: float = 10) -> dict[str, str | None]:
    """Installed runtimes (found on PATH) -> the version they report, or None if unreadable."""
    found: dict[str, str | None] = {}
    for name, runtime in RUNTIMES.items():
        path = shutil.which(name)
        if path is None:
            continue
        result = run([path, *runtime.args], timeout_s=timeout_s)
        # Parse whatever came out: `ollama --version` warns and llama-server logs on stderr,
        # and the patterns are strict enough that an error message yields None.
        found[name] = runtime.parse(result.stdout + "\n" + result.stderr)
    return found
