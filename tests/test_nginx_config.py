"""`nginx -t` on the rendered site of every golden case with a balancer; any output fails.

The site goes into an `http {}` block as Debian's nginx.conf includes /etc/nginx/conf.d/*.conf,
with the pid file, logs and temp paths inside a temp directory so that nothing on the host is
read or written (nginx comes from Debian: `apt-get install nginx`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.golden_cases import CASES, Case, rendered
from tests.systemd_root import require

BALANCED = [
    c
    for c in CASES
    if (r := rendered(c)).placement is not None and r.placement.balancer is not None
]


def nginx_test(tmp_path: Path, site: str) -> subprocess.CompletedProcess[str]:
    site_path = tmp_path / "etc/nginx/conf.d/provision-ollama.conf"
    site_path.parent.mkdir(parents=True)
    site_path.write_text(site, encoding="utf-8")
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events { worker_connections 768; }\n"
        "http {\n"
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    types_hash_max_size 2048;\n"
        "    default_type application/octet-stream;\n"
        "    gzip on;\n"
        "    access_log off;\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + f"    include {site_path.parent}/*.conf;\n"
        "}\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [
            require("nginx"),
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nginx_is_installed() -> None:
    require("nginx")


def test_some_cases_have_a_balancer() -> None:
    assert len(BALANCED) >= 5


@pytest.mark.parametrize("case", BALANCED, ids=lambda c: c.id)
def test_rendered_site_passes_nginx_t(case: Case, tmp_path: Path) -> None:
    desired = rendered(case).desired
    assert desired is not None
    placement = rendered(case).placement
    assert placement is not None and placement.balancer is not None
    (site,) = [f for f in desired.files if f.path == placement.balancer.path]
    result = nginx_test(tmp_path, site.content)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_nginx_t_reports_a_broken_site(tmp_path: Path) -> None:
    result = nginx_test(tmp_path, "server { listen 127.0.0.1:11434 }\n")
    assert result.returncode != 0 and "emerg" in result.stderr


def test_nginx_t_warnings_are_output(tmp_path: Path) -> None:
    """Warnings exit 0: the output check is what catches them."""
    twice = "server { listen 127.0.0.1:11434; }\n" * 2
    result = nginx_test(tmp_path, twice)
    assert result.returncode == 0 and "[warn]" in result.stderr
