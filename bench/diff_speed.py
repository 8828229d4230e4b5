"""Wall time of `provision diff` for the 8-GPU rig with a 6-model profile, as a shell sees it.

The root is a scratch tree where that state was applied first (the usual check before a change:
17 files, 10 units, 8 power limits, 6 models, all in sync). Three cases: the whole command
(render + observe + plan), the change engine alone on the same desired state (`--desired-json`),
and the whole command on an empty root (everything pending). Target (issue 5): median below
250 ms for the first case on the CI machine. `--bound-ms` makes it exit 1 when that median is
above a bound, so CI catches an eager heavy import.

Reference: `ansible-playbook --check --diff` with one `copy` task per file, comparing the same
files under the same root. ansible-core lives only in this benchmark's own venv
(~/.cache/gpu-provision/bench-venv, created on demand); if it cannot be installed the reference
is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import REPO, python_startup_ms, report, samples_ms

RIG = REPO / "tests" / "rigs" / "synthetic-8xa100-nvlink.yaml"
VENV = Path.home() / ".cache" / "gpu-provision" / "bench-venv"
PROFILE = """\
description: six models, one Ollama per GPU behind nginx, power capped
runtime: ollama
replicas: auto
listen: {address: 127.0.0.1, port: 11434}
power: {psu_w: 3000, platform_w: 400}
models:
  - {ref: llama3.1:8b, ctx: 8192, parallel: 4, keep_alive: 30m}
  - {ref: qwen2.5:14b, ctx: 8192, parallel: 2, keep_alive: 30m}
  - {ref: gemma3:12b, ctx: 8192, parallel: 2, keep_alive: 30m}
  - {ref: phi4:14b, ctx: 8192, parallel: 2, keep_alive: 30m}
  - {ref: qwen3:8b, ctx: 8192, parallel: 4, keep_alive: 30m}
  - {ref: mistral-small3.1:24b, ctx: 8192, parallel: 1, keep_alive: 30m}
"""
# What the packages would have installed: units provision configures but does not write.
PACKAGE_UNIT = (
    "[Unit]\nDescription={}\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\n"
)


def scratch_root(path: Path) -> Path:
    for unit in ("ollama.service", "nginx.service"):
        target = path / "lib/systemd/system" / unit
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PACKAGE_UNIT.format(unit))
    return path


def ansible_playbook(venv: Path) -> Path | None:
    """ansible-playbook from this benchmark's own venv, installed on first use; else None."""
    binary = venv / "bin" / "ansible-playbook"
    if binary.exists():
        return binary
    print(f"installing ansible-core into {venv} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet", "ansible-core"]
        subprocess.run(pip, check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"  cannot install ansible-core ({exc}); reference skipped")
        print("  " + detail.decode(errors="replace").strip()[-500:])
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return binary


def write_playbook(desired_json: Path, root: Path, path: Path) -> int:
    """One `copy` task per desired file, its content marked !unsafe (no Jinja evaluation)."""
    files = json.loads(desired_json.read_text())["files"]
    lines = ["- hosts: localhost", "  gather_facts: false", "  tasks:"]
    for f in files:
        lines += [
            f"    - name: {json.dumps(f['path'])}",
            "      ansible.builtin.copy:",
            f"        dest: {json.dumps(str(root) + f['path'])}",
            f"        content: !unsafe {json.dumps(f['content'])}",
            f"        mode: '{f['mode']:04o}'",
            f"        owner: {f['owner']}",
            f"        group: {f['group']}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--ansible-runs", type=int, default=5)
    parser.add_argument("--no-ansible", action="store_true", help="Skip the reference.")
    parser.add_argument("--bound-ms", type=float, default=None)
    args = parser.parse_args()
    provision = [str(Path(sys.executable).with_name("provision"))]
    with tempfile.TemporaryDirectory(prefix="diff-speed-") as tmp:
        tmp_path = Path(tmp)
        profile = tmp_path / "six-models.yaml"
        profile.write_text(PROFILE)
        root, empty = scratch_root(tmp_path / "root"), scratch_root(tmp_path / "empty")
        render = ["--rig", str(RIG), "--profile", str(profile)]
        apply = [*provision, "apply", "--yes", *render, "--root", str(root)]
        subprocess.run(apply, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        desired = tmp_path / "desired.json"
        desired.write_text(_desired_json(render))
        print(f"provision diff: {RIG.name} + a 6-model profile ({args.runs} runs each)")
        full = report(
            "diff --rig --profile, in sync (render + observe + plan)",
            samples_ms([*provision, "diff", *render, "--root", str(root)], args.runs),
        )
        engine = ["diff", "--desired-json", str(desired), "--root", str(root)]
        samples = samples_ms([*provision, *engine], args.runs)
        report("diff --desired-json, in sync (observe + plan only)", samples)
        pending = [*provision, "diff", *render, "--root", str(empty)]
        report(
            "diff --rig --profile, empty root (all pending, exit 1)",
            samples_ms(pending, args.runs, ok=(1,)),
        )
        baseline = python_startup_ms()
        print(f"  (bare python startup: median {baseline:.1f} ms; target < 250 ms, first case)")
        if not args.no_ansible:
            _reference(desired, root, tmp_path, args.ansible_runs)
    if args.bound_ms is not None and full > args.bound_ms:
        print(f"FAIL: median {full:.1f} ms is above the bound {args.bound_ms:.0f} ms")
        return 1
    return 0


def _desired_json(render: list[str]) -> str:
    """The rendered desired state, as `--desired-json` reads it."""
    code = (
        "import os, sys\n"
        "from provision.cli.options import desired_to_json, read_rig\n"
        "from provision.pipeline import desired_state\n"
        "_, d = desired_state(read_rig(__import__('pathlib').Path(sys.argv[1])), sys.argv[2], "
        "os.environ)\n"
        "print(desired_to_json(d))\n"
    )
    command = [sys.executable, "-c", code, render[1], render[3]]
    result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return result.stdout


def _reference(desired: Path, root: Path, tmp_path: Path, runs: int) -> None:
    binary = ansible_playbook(VENV)
    if binary is None:
        return
    playbook = tmp_path / "files.yml"
    count = write_playbook(desired, root, playbook)
    quiet = {"ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}
    env = {**os.environ, "LC_ALL": "C.UTF-8", **quiet}
    python = f"ansible_python_interpreter={binary.with_name('python')}"
    command = [str(binary), "-i", "localhost,", "-c", "local", "-e", python, "--check", "--diff"]
    command.append(str(playbook))
    check = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    if check.returncode != 0 or "changed=0" not in check.stdout:
        print(f"  ansible reference failed or saw changes; skipped:\n{check.stdout[-800:]}")
        return
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, cwd=tmp_path, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    print(f"reference: ansible-playbook --check --diff, {count} copy tasks ({runs} runs)")
    report("same files, same root, in sync (changed=0)", samples)


if __name__ == "__main__":
    sys.exit(main())
