"""Expected failures: each carries a message, a hint and the exit status the CLI returns.

Anything else that escapes is a bug and gets a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses (docs/ARCHITECTURE.md §4)."""

    OK = 0
    CHANGES_PENDING = 1
    BAD_INPUT = 2
    HOST_ERROR = 3
    ROLLED_BACK = 4


class ProvisionError(Exception):
    """An expected failure the user can act on."""

    exit_code: ExitCode = ExitCode.HOST_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(ProvisionError):
    """Bad input: a malformed file, an unknown name, an impossible value (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class ProfileFieldError(InputError):
    """Bad input in one profile field, found after the profile loaded (placement, a model
    lookup). `field` is its path (`models[1].gpus`): the pipeline adds the file and line."""

    def __init__(self, field: str, problem: str, hint: str | None = None) -> None:
        super().__init__(f"field '{field}': {problem}", hint)
        self.field = field
        self.problem = problem


class HostError(ProvisionError):
    """The host cannot do what we need: no driver, no permission, a command failed (exit 3)."""

    exit_code = ExitCode.HOST_ERROR


class RolledBack(ProvisionError):
    """Apply failed part-way and the host was restored from the backup (exit 4)."""

    exit_code = ExitCode.ROLLED_BACK
