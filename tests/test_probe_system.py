"""Host facts outside NVML: the command chokepoint, the runtime version parsers, OS facts."""

from __future__ import annotations

import os
import platform
import socket
import stat
from pathlib import Path

import pytest

from provision.command import EXIT_NOT_FOUND, EXIT_TIMED_OUT, run
from provision.errors import ExitCode, HostError
from provision.hardware.system import (
    detect_runtimes,
    parse_llama_server_version,
    parse_nvidia_smi_driver_version,
    parse_ollama_version,
    read_os_facts,
)

# Outputs as the real programs print them (stdout and stderr joined, as detect_runtimes does).
OLLAMA_OUTPUTS = {
    "server-up": ("ollama version is 0.12.6\n", "0.12.6"),
    "server-down": (
        "Warning: could not connect to a running Ollama instance\n"
        "Warning: client version is 0.12.6\n",
        "0.12.6",
    ),
    # An upgraded binary while the old server still runs: the binary is what will run next.
    "server-older": ("ollama version is 0.11.4\nWarning: client version is 0.12.6\n", "0.12.6"),
    "release-candidate": ("ollama version is 0.13.0-rc1\n", "0.13.0-rc1"),
    "not-ollama": ("bash: ollama: command not found\n", None),
    "empty": ("", None),
}

LLAMA_SERVER_OUTPUTS = {
    "cpu-build": (
        "version: 6999 (abc1234)\nbuilt with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu\n",
        "6999 (abc1234)",
    ),
    "cuda-build-logs-first": (
        "ggml_cuda_init: GGML_CUDA_FORCE_MMQ:    no\n"
        "ggml_cuda_init: GGML_CUDA_FORCE_CUBLAS: no\n"
        "ggml_cuda_init: found 1 CUDA devices:\n"
        "  Device 0: NVIDIA GeForce RTX 3090, compute capability 8.6, VMM: yes\n"
        "load_backend: loaded CUDA backend from /usr/local/lib/libggml-cuda.so\n"
        "version: 7011 (4f6d3a2b)\n"
        "built with cc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0 for x86_64-linux-gnu\n",
        "7011 (4f6d3a2b)",
    ),
    "source-tarball": ("version: 0 (unknown)\nbuilt with cc for x86_64-linux-gnu\n", "0 (unknown)"),
    "usage-error": ("error: invalid argument: --versio\n", None),
}

NVIDIA_SMI_OUTPUTS = {
    "two-gpus": ("550.120\n550.120\n", "550.120"),
    "three-part": ("535.183.01\n", "535.183.01"),
    "no-driver": (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n",
        None,
    ),
    "mismatch": (
        "Failed to initialize NVML: Driver/library version mismatch\n"
        "NVML library version: 570.86\n",
        None,
    ),
}


def _table(outputs: dict[str, tuple[str, str | None]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(("output", "version"), outputs.values(), ids=outputs.keys())


@_table(OLLAMA_OUTPUTS)
def test_ollama_version(output: str, version: str | None) -> None:
    assert parse_ollama_version(output) == version


@_table(LLAMA_SERVER_OUTPUTS)
def test_llama_server_version(output: str, version: str | None) -> None:
    assert parse_llama_server_version(output) == version


@_table(NVIDIA_SMI_OUTPUTS)
def test_nvidia_smi_driver_version(output: str, version: str | None) -> None:
    assert parse_nvidia_smi_driver_version(output) == version


def _fake_program(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_runtimes_are_found_on_path_and_their_versions_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_program(
        tmp_path,
        "ollama",
        "echo 'Warning: could not connect to a running Ollama instance'\n"
        "echo 'Warning: client version is 0.12.6'",
    )
    _fake_program(tmp_path, "llama-server", "echo 'version: 6999 (abc1234)' >&2")
    # nvidia-smi is installed but the driver is not loaded: present, version unknown.
    _fake_program(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_runtimes() == {
        "llama-server": "6999 (abc1234)",
        "nvidia-smi": None,
        "ollama": "0.12.6",
    }


def test_no_runtimes_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_runtimes() == {}


def test_os_facts_are_this_machines() -> None:
    facts = read_os_facts()
    assert facts.hostname == socket.gethostname()
    assert facts.kernel == platform.release()
    assert facts.cpu_count == os.cpu_count()
    assert facts.ram_bytes is not None and facts.ram_bytes > 2**27


def test_run_success() -> None:
    result = run(["sh", "-c", "echo hello"])
    assert (result.ok, result.exit_code, result.stdout, result.stderr) == (True, 0, "hello\n", "")
    assert run(["true"]).ok


def test_run_failure_is_returned_not_raised() -> None:
    result = run(["false"])
    assert not result.ok and result.exit_code == 1


def test_failure_message_names_the_command_and_stderr_tail() -> None:
    result = run(["sh", "-c", "echo out; echo x >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "x\n")
    message = result.failure_message()
    assert message == "command failed (exit status 3): sh -c 'echo out; echo x >&2; exit 3'\n  x"
    with pytest.raises(HostError) as info:
        result.check(hint="try again")
    assert info.value.message == message and info.value.hint == "try again"
    assert info.value.exit_code == ExitCode.HOST_ERROR


def test_failure_message_keeps_only_the_tail() -> None:
    result = run(["sh", "-c", "for i in $(seq 1 50); do echo line$i >&2; done; exit 1"])
    lines = result.failure_message(tail_lines=5).splitlines()
    assert lines[1:] == [f"  line{i}" for i in range(46, 51)]


def test_missing_command_is_exit_127() -> None:
    result = run(["no-such-command-for-provision-tests", "--version"])
    assert result.exit_code == EXIT_NOT_FOUND and not result.ok
    assert "command not found: no-such-command-for-provision-tests" in result.failure_message()


def test_timeout_is_exit_124() -> None:
    result = run(["sleep", "5"], timeout_s=0.2)
    assert result.timed_out and result.exit_code == EXIT_TIMED_OUT
    assert result.failure_message().startswith("command failed (timed out): sleep 5")


def test_killed_by_a_signal() -> None:
    result = run(["sh", "-c", "kill -9 $$"])
    assert result.exit_code == -9
    assert "killed by signal 9" in result.failure_message()


def test_undecodable_output_is_replaced_not_fatal() -> None:
    result = run(["printf", "\\377ok"])
    assert result.stdout == "\ufffdok"
