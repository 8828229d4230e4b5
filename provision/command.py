"""The one way this tool runs an external command (one chokepoint per side effect).

`run()` never raises because a command failed: callers get the exit code and both outputs and
decide. A failure is described by `CompletedCommand.failure_message()`, which always names the
exact command line and the tail of its stderr, so an operator can re-run it by hand.

It uses the standard library's subprocess, not the `sh` package: importing sh costs ~75 ms
(it pulls in asyncio) and its timeout watcher ~100 ms per call, which alone put `provision diff`
(one systemctl call) past its 250 ms budget. Nothing here needs more than argv in, text out.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from provision.errors import HostError

log = logging.getLogger(__name__)

# The shell's conventions, so the numbers mean what an operator expects.
EXIT_NOT_FOUND = 127
EXIT_TIMED_OUT = 124


@dataclass(frozen=True)
class CompletedCommand:
    argv: tuple[str, ...]
    exit_code: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)

    def failure_message(self, tail_lines: int = 20) -> str:
        """`command failed (exit status N): CMD` and the last lines of stderr, indented."""
        if self.timed_out:
            status = "timed out"
        elif self.exit_code < 0:
            status = f"killed by signal {-self.exit_code}"
        else:
            status = f"exit status {self.exit_code}"
        message = f"command failed ({status}): {self.command_line}"
        tail = self.stderr.rstrip().splitlines()[-tail_lines:]
        if tail:
            message += "\n" + "\n".join(f"  {line}" for line in tail)
        return message

    def check(self, hint: str | None = None) -> CompletedCommand:
        """Return self when it succeeded; otherwise raise HostError (exit 3) describing it."""
        if not self.ok:
            raise HostError(self.failure_message(), hint=hint)
        return self


def run(argv: Sequence[str], timeout_s: float = 10) -> CompletedCommand:
    """Run argv (no shell) with stdout and stderr captured as text; never raises on failure.

    A missing executable gives exit code 127 and a timeout 124 (with `timed_out`), as in a shell.
    """
    argv = tuple(argv)
    log.debug("run: %s", shlex.join(argv))
    try:
        finished = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError:  # exec found no such program on PATH: no shutil.which walk first
        return CompletedCommand(argv, EXIT_NOT_FOUND, "", f"command not found: {argv[0]}")
    except subprocess.TimeoutExpired:
        stderr = f"no result after {timeout_s:g} s"
        return CompletedCommand(argv, EXIT_TIMED_OUT, "", stderr, timed_out=True)
    except OSError as exc:  # not executable, exec format error, ...
        return CompletedCommand(argv, EXIT_NOT_FOUND, "", f"cannot run {argv[0]}: {exc.strerror}")
    result = _completed(argv, finished.returncode, finished.stdout, finished.stderr)
    if not result.ok:
        log.debug("%s", result.failure_message())
    return result


def _completed(argv: tuple[str, ...], code: int, stdout: bytes, stderr: bytes) -> CompletedCommand:
    # Undecodable bytes must not turn a version check into a crash.
    return CompletedCommand(
        argv=argv,
        exit_code=code,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
    )
