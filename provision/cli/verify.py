"""`provision verify`: prove that each host is what the manifest of its last apply says.

One line per check (`PASS file /etc/...: sha256 ..., mode 0644, root:root`), then the summary
`N passed, N failed`. Exit status 0 when every check passed, 1 when one failed, 2 for bad input
(no manifest, a malformed one, a bad host URL), 3 when a host cannot be reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from provision.cli.options import json_option
from provision.errors import ExitCode
from provision.verify.runner import Result, load_targets, run_suite, summary


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
@json_option
@click.pass_context
def verify(
    ctx: click.Context, hosts: str, manifest_file: Path | None, root: str, as_json: bool
) -> None:
    """Check every file, unit, port, environment, endpoint, model and power limit that the
    last apply recorded in /var/lib/provision/manifest.json.

    Exit status 0 when all checks pass, 1 when any fails.
    """
    urls = [u.strip() for u in hosts.split(",") if u.strip()] or ["local://"]
    targets = load_targets(urls, root, manifest_file)
    results, pytest_output = run_suite(targets)
    if ctx.find_root().params.get("debug"):
        click.echo(pytest_output, err=True)
    counts = summary(results)
    if as_json:
        click.echo(json.dumps(_to_plain(results, counts), indent=2))
    else:
        several = len(targets) > 1
        for result in results:
            click.echo(_line(result, several))
        if counts["skip"]:
            click.echo(f"{counts['skip']} skipped")
        click.echo(f"{counts['pass']} passed, {counts['fail']} failed")
    # docs/ARCHITECTURE.md §4: 1 is "changes pending" for diff and "checks failed" for verify.
    ctx.exit(int(ExitCode.CHANGES_PENDING if counts["fail"] else ExitCode.OK))


def _line(result: Result, several: bool) -> str:
    prefix = f"{result.host}: " if several else ""
    check = result.check
    return f"{prefix}{result.status.upper()} {check.kind} {check.target}: {result.detail}"


def _to_plain(results: list[Result], counts: dict[str, int]) -> dict[str, Any]:
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
    return {
        "checks": checks,
        "passed": counts["pass"],
        "failed": counts["fail"],
        "skipped": counts["skip"],
    }
