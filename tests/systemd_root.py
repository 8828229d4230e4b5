"""A throwaway root tree for `systemd-analyze verify`, and systemd's own unit parser, offline.

`systemd-analyze verify --root=DIR UNIT...` needs no running systemd (PID 1 is not systemd on
our machines): it loads units from DIR/etc/systemd/system and DIR/usr/lib/systemd/system and
checks every executable a unit names inside DIR. What the root must hold:
- the stock targets (sysinit, basic, shutdown, multi-user, network-online, ...): a service's
  default dependencies pull them in, and without them verify fails with "Unit sysinit.target
  not found". They are copied from the systemd package that ships systemd-analyze itself;
- the units ours refer to: a stock ollama.service exactly as Ollama's install.sh writes it, and
  nvidia-persistenced.service;
- stub executables at every path the units name, and passwd/group entries for their users.

`systemd --test --system` (run as an unprivileged user) loads units like PID 1 would and dumps
them, parsed: the Environment= entries and ExecStart= argv as systemd sees them. That is how the
quoting filters are checked against the real parser rather than against our reading of it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from provision.desired import SYSTEMD_DIR, DesiredState
from provision.paths import LLAMA_SERVER_BIN, NVIDIA_SMI, OLLAMA_BIN

# The runtimes, and the two system programs every Debian host has (the AMD power unit runs its
# script with /bin/sh; the resume unit calls /bin/systemctl).
STUB_EXECUTABLES = (
    OLLAMA_BIN,
    LLAMA_SERVER_BIN,
    NVIDIA_SMI,
    "/usr/bin/nvidia-persistenced",
    "/bin/sh",
    "/bin/systemctl",
)

# What Ollama's scripts/install.sh writes (BINDIR=/usr/local/bin, its own $PATH baked in); the
# demo's scratch root starts from the same file.
STOCK_OLLAMA_SERVICE = (
    Path(__file__).parent / "data/stock-root/etc/systemd/system/ollama.service"
).read_text()

# The unit of NVIDIA's nvidia-persistenced sample (init/systemd), runtime directory under /run.
NVIDIA_PERSISTENCED_SERVICE = """\
[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --verbose

[Install]
WantedBy=multi-user.target
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
ollama:x:998:998::/usr/share/ollama:/bin/false
"""
GROUP = """\
root:x:0:
video:x:44:ollama
render:x:105:ollama
nogroup:x:65534:
ollama:x:998:
"""


def require(program: str) -> str:
    """The path of a program the tests need: missing is a failure, never a skip."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; install the system test dependencies")
    return path


def host_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").is_file():
            return candidate
    pytest.fail("no systemd unit directory with sysinit.target on this machine")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def make_root(root: Path, desired: DesiredState | None = None) -> Path:
    """Populate `root` as a minimal host with Ollama and the NVIDIA driver installed."""
    lib = root / "usr/lib/systemd/system"
    lib.mkdir(parents=True)
    for target in host_unit_dir().glob("*.target"):
        shutil.copyfile(target, lib / target.name)  # follows default.target's symlink
    _write(root / "etc/systemd/system/ollama.service", STOCK_OLLAMA_SERVICE)
    _write(lib / "nvidia-persistenced.service", NVIDIA_PERSISTENCED_SERVICE)
    for program in STUB_EXECUTABLES:
        _write(root / program.lstrip("/"), "#!/bin/sh\nexit 0\n", 0o755)
    _write(root / "etc/passwd", PASSWD)
    _write(root / "etc/group", GROUP)
    if desired is not None:
        for file in desired.files:
            _write(root / file.path.lstrip("/"), file.content, file.mode)
    return root


def units_to_verify(desired: DesiredState) -> list[str]:
    """Every rendered unit; a drop-in through the unit it extends, a template through its
    instances."""
    names: list[str] = []
    for file in desired.files:
        if not file.is_systemd_unit:
            continue
        relative = file.path.removeprefix(SYSTEMD_DIR + "/")
        if "/" in relative:
            names.append(relative.split("/")[0].removesuffix(".d"))
        elif "@." in relative:
            prefix = relative.split("@")[0] + "@"
            names += [u.name for u in desired.units if u.name.startswith(prefix)]
        else:
            names.append(relative)
    return names


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}


def verify(root: Path, units: Iterable[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("systemd-analyze"), "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )


def systemd_binary() -> str:
    for candidate in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("the systemd binary is not installed")


def parsed_unit(files: dict[str, str], unit: str) -> dict[str, list[str]]:
    """Load `unit` (from `files`: unit name -> text) with systemd's own parser; its dumped
    settings by name.

    `systemd --test --system` as root tries to set up the real system manager and exits
    silently, so it runs as nobody when we are root (from a directory nobody can read).
    """
    with tempfile.TemporaryDirectory(prefix="provision-units-") as folder:
        unit_dir = Path(folder)
        unit_dir.chmod(0o755)
        for target in host_unit_dir().glob("*.target"):  # default dependencies need them
            shutil.copyfile(target, unit_dir / target.name)
            (unit_dir / target.name).chmod(0o644)
        for name, text in files.items():
            _write(unit_dir / name, text)
        command = [systemd_binary(), "--test", "--system", f"--unit={unit}", "--no-pager"]
        if os.geteuid() == 0:
            drop = [require("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
            command = [*drop, *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**_clean_env(), "SYSTEMD_UNIT_PATH": str(unit_dir), "HOME": "/"},
            cwd="/",
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    return _unit_section(result.stdout, unit)


def _unit_section(dump: str, unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    inside = False
    pending = None
    for line in dump.splitlines():
        if line.startswith("\t-> Unit "):
            inside = line == f"\t-> Unit {unit}:"
            continue
        if not inside:
            continue
        stripped = line.strip()
        if stripped.startswith("-> ") and stripped.endswith(":"):
            pending = stripped[3:-1]  # e.g. "ExecStart": its command line follows
            continue
        key, _, value = stripped.partition(": ")
        if pending and key == "Command Line":
            settings.setdefault(pending, []).append(value)
            pending = None
        else:
            settings.setdefault(key, []).append(value)
    assert settings, f"{unit} not in systemd's dump"
    return settings


def argv(command_line: str) -> list[str]:
    """A dumped command line back to its words. systemd prints each word bare or in double
    quotes with `"`, `\\`, `` ` `` and `$` backslash-escaped (shell style, though it leaves `#`
    bare, so a real shell would read a comment)."""
    words = []
    for quoted, bare in re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', command_line):
        words.append(bare or re.sub(r"\\(.)", r"\1", quoted))
    return words
