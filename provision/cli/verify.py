"""`provision verify`: prove that each host is what the manifest of its last apply says.

One line per check (`PASS file /etc/...: sha256 ..., mode 0644, root:root`), then the summary
`N passed, N failed`. Exit status 0 when every check passed, 1 when one failed, 2 for bad input
(no manifest, a malformed one, a bad host URL), 3 when a host cannot be reached.

Several hosts (a list, or an `ansible://GROUP` of an inventory) get the host's name before each
line and a summary per host. A host of several that cannot be verified (unreachable, no
manifest) gets one FAIL line and the others are still checked; the exit status is then 3 for an
unreachable host, else 1.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import click

from provision.cli import envelope
from provision.cli.options import json_option
from provision.cli.terminal import echo
from provision.errors import ExitCode, InputError
from provision.verify.runner import (
    Result,
    Target,
    Unverified,
    load_targets,
    per_host,
    run_suite,
    summary,
)


@click.command()
@click.option(
    "--hosts",
    metavar="URL,...",
    default="local://",
    show_default=True,
    help="testinfra hosts: local://, ssh://user@host, paramiko://host, ansible://GROUP, ...",
)
@click.option(
    "--manifest",
    "manifest_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check against this manifest instead of each host's own.",
)
@click.option(
    "--root",
    default="/",
    show_default=True,
    help="The tree the manifest was applied under (not /: files and enablement only).",
)
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The Ansible inventory that ansible://GROUP hosts are read from.",
)
@click.option(
    "--loaded",
    is_flag=True,
    help="Also load each planned model (Ollama: an empty generate with the planned keep_alive, "
    "after unloading it; llama-server: /health) and check it sits on the planned GPUs, spills "
    "nothing to the CPU unless planned, and uses each GPU within 10% of the plan or 512 MiB, "
    "whichever is larger (nvidia-smi's memory.used). Live hosts only; it loads models.",
)
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    hosts: str,
    manifest_file: Path | None,
    root: str,
    inventory: Path | None,
    loaded: bool,
    as_json: bool,
) -> None:
    """Check every file, unit, port, environment, endpoint, model and power limit that the
    last apply recorded in /var/lib/provision/manifest.json.

    Exit status 0 when all checks pass, 1 when any fails.
    """
    urls = [u.strip() for u in hosts.split(",") if u.strip()] or ["local://"]
    if loaded and posixpath.normpath(root) != "/":
        raise InputError(
            f"--loaded needs a running host, not the tree {root}", hint="drop --root or --loaded"
        )
    targets, unverified = load_targets(urls, root, manifest_file, inventory, loaded)
    results, pytest_output = run_suite(targets) if targets else ([], "")
    if ctx.find_root().params.get("debug"):
        click.echo(pytest_output, err=True)  # --debug: pytest's own output, as it is
    counts = summary(results)
    counts["fail"] += len(unverified)
    if as_json:
        envelope.emit(_to_plain(results, targets, unverified, counts))
        for host in unverified:
            error = host.error
            envelope.add_error(
                envelope.error_to_plain(
                    error.message, error.hint, int(error.exit_code), host=host.host
                )
            )
    else:
        several = len(targets) + len(unverified) > 1
        for result in results:
            echo(_line(result, several))
        for host in unverified:
            echo(f"{host.host}: FAIL host: {_unverified_detail(host)}")
        if several:
            for name, mine in per_host(results, [t.name for t in targets]).items():
                echo(f"{name}: {_counts_line(mine)}")
            for host in unverified:
                echo(f"{host.host}: not verified")
        echo(_counts_line(counts))
    unreachable = any(h.error.exit_code == ExitCode.HOST_ERROR for h in unverified)
    # docs/ARCHITECTURE.md §4: 1 is "changes pending" for diff and "checks failed" for verify.
    failed = ExitCode.CHANGES_PENDING if counts["fail"] else ExitCode.OK
    ctx.exit(int(ExitCode.HOST_ERROR if unreachable else failed))


def _counts_line(counts: dict[str, int]) -> str:
    skipped = f", {counts['skip']} skipped" if counts["skip"] else ""
    return f"{counts['pass']} passed, {counts['fail']} failed{skipped}"


def _unverified_detail(host: Unverified) -> str:
    hint = f" ({host.error.hint})" if host.error.hint else ""
    return f"{host.error.message}{hint}"


def _line(result: Result, several: bool) -> str:
    prefix = f"{result.host}: " if several else ""
    check = result.check
    return f"{prefix}{result.status.upper()} {check.kind} {check.target}: {result.detail}"


def _to_plain(
    results: list[Result],
    targets: list[Target],
    unverified: list[Unverified],
    counts: dict[str, int],
) -> dict[str, Any]:
    checks = [
        {
            "id": r.check.id,
            "kind": str(r.check.kind),
            "target": r.check.target,
            "host": r.host,
            "ok": None if r.status == "skip" else r.status == "pass",
            "status": r.status,
            "detail": r.detail,
        }
        for r in results
    ]
    hosts = [
        {"host": name, "verified": True, "passed": c["pass"], "failed": c["fail"]}
        | {"skipped": c["skip"], "error": None}
        for name, c in per_host(results, [t.name for t in targets]).items()
    ]
    hosts += [
        {"host": h.host, "verified": False, "passed": 0, "failed": 1, "skipped": 0}
        | {"error": _unverified_detail(h)}
        for h in unverified
    ]
    return {
        "checks": checks,
        "hosts": hosts,
        "passed": counts["pass"],
        "failed": counts["fail"],
        "skipped": counts["skip"],
    }
