# Copyright: gpu-provision contributors
# MIT License (see LICENSE in the collection)
"""Run the gpu-provision command line on the target and read its answers.

The modules only call the installed tool; every decision stays in it. This keeps the one
contract the tool already has with scripts: exit statuses (0 ok, 1 changes pending or checks
failed, 2 bad input, 3 host error, 4 apply failed and rolled back), one JSON document on stdout
with --json, and `warning:`, `error:` and `hint:` lines on stderr.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

# The tool's exit statuses (provision/errors.py ExitCode).
OK = 0
PENDING = 1
BAD_INPUT = 2
HOST_ERROR = 3
ROLLED_BACK = 4

# Where the collection's host role installs the tool: searched before PATH (get_bin_path opt_dirs).
INSTALL_DIRS = ["/opt/provision/bin", "/usr/local/bin"]


def find_tool(module, executable, failed=None):
    """The absolute path of the tool, or a failed task that says how to install it."""
    if "/" in executable:
        found = executable if os.access(executable, os.X_OK) else None
    else:
        found = module.get_bin_path(executable, opt_dirs=INSTALL_DIRS)
    if not found:
        result = dict(failed or {})
        result.update(
            msg="gpu-provision is not installed on this host: no executable %r" % executable,
            error="not installed",
            hint="install it with the gpu_provision.fleet.host role (run once without --check), "
            "or pass executable=PATH",
            rc=None,
        )
        module.fail_json(**result)
    return found


def messages(stderr, prefix):
    """The text of each `prefix:` line on stderr, in order."""
    tag = prefix + ":"
    return [line[len(tag):].strip() for line in stderr.splitlines() if line.startswith(tag)]


# The tool's hints name its command-line flags; a play sets the module's options instead.
FLAG_OPTIONS = [("--allow-partial", "allow_partial: true"), ("--force", "force: true")]


def error_result(rc, stderr, replace=()):
    """What a failed run of the tool says, for fail_json: its error and hint lines, with each
    (old, new) pair of ``replace`` applied (a temporary file's path, say)."""
    errors = messages(stderr, "error")
    hints = messages(stderr, "hint")
    text = "; ".join(errors) or stderr.strip() or "exit status %d" % rc
    hint = "; ".join(hints) or None
    for old, new in list(replace) + FLAG_OPTIONS:
        text = text.replace(old, new)
        hint = hint.replace(old, new) if hint else hint
    return {"msg": text, "error": text, "hint": hint, "rc": rc}


def run_json(module, argv, ok=(OK,), failed=None, replace=()):
    """Run the tool with --json; return (rc, document, stderr). A status outside ``ok`` fails
    the task with the tool's own error text (and the values in ``failed``); so does output
    that is not one JSON document."""
    rc, out, err = module.run_command(argv, environ_update={"LANG": "C.UTF-8"})
    result = dict(failed or {}, cmd=argv, stderr=err)
    if rc not in ok:
        result.update(error_result(rc, err, replace))
        module.fail_json(**result)
    try:
        document = json.loads(out)
    except ValueError:
        result.update(msg="%s printed no JSON document" % argv[1], rc=rc, stdout=out)
        module.fail_json(**result)
    return rc, document, err


def ansible_diffs(files):
    """The tool's per-file diffs as Ansible's diff return: before/after with headers."""
    return [
        {
            "before_header": f["path"] if f.get("before") is not None else "/dev/null",
            "after_header": f["path"] if f.get("after") is not None else "/dev/null",
            "before": f.get("before") or "",
            "after": f.get("after") or "",
        }
        for f in files
    ]
