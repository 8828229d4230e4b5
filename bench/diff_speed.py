"""Wall time of `provision diff` for the 8-GPU rig with a 6-model profile, as a shell sees it.

The root is a scratch tree where that state was applied first (the usual check before a change:
17 files, 10 units, 8 power limits, 6 models, all in sync). Three cases: the whole command
(render + observe + plan), the change engine alone on the same desired state (`--desired-json`),
and the whole command on an empty root (everything pending). Each sample of the first case is
taken in turn with one of the bare interpreter (`python -c pass`, the same venv), and the
median is printed as a multiple of the bare start-up's median. Target (issue 10): at most 4x.
`--bound-ratio` and `--bound-ms` make it exit 1 above a bound, so CI catches an eager heavy
import.

Then the series: the same command, in sync, on the first 1/2/4/8 GPUs of that rig with the
first 1/6/24 models of a 24-model profile, and the cost of 8 GPUs x 24 models as a multiple of
8 x 6. Target: at most linear growth in GPUs x models, 8 x 24 within 2x of 8 x 6.

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from timing import REPO, paired_ms, report, samples_ms

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
# The series' 24 models: every one fits one A100 80GB alone, so no case leaves a model out.
SERIES_MODELS = (
    "llama3.1:8b",
    "qwen2.5:14b",
    "gemma3:12b",
    "phi4:14b",
    "qwen3:8b",
    "mistral-small3.1:24b",
    "deepseek-r1:32b",
    "gemma3:27b",
    "gemma3:4b",
    "gpt-oss:20b",
    "llama3.2:3b",
    "mistral-small3.2:24b",
    "mixtral:8x7b",
    "qwen2.5-coder:32b",
    "qwen2.5:32b",
    "qwen2.5:7b",
    "qwen3:30b-a3b",
    "qwen3:32b",
    "llama3.1:8b@q8_0",
    "qwen3:8b@q8_0",
    "gemma3:4b@q8_0",
    "llama3.2:3b@q8_0",
    "qwen2.5:7b@q8_0",
    "phi4:14b@q8_0",
)
SERIES_GPUS = (1, 2, 4, 8)
SERIES_COUNTS = (1, 6, 24)
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
    parser.add_argument("--series-runs", type=int, default=7)
    parser.add_argument("--ansible-runs", type=int, default=5)
    parser.add_argument("--no-ansible", action="store_true", help="Skip the reference.")
    parser.add_argument("--no-series", action="store_true", help="Skip the GPUs x models series.")
    parser.add_argument("--bound-ms", type=float, default=None)
    parser.add_argument("--bound-ratio", type=float, default=None)
    args = parser.parse_args()
    provision = [str(Path(sys.executable).with_name("provision"))]
    with tempfile.TemporaryDirectory(prefix="diff-speed-") as tmp:
        tmp_path = Path(tmp)
        profile = tmp_path / "six-models.yaml"
        profile.write_text(PROFILE)
        root, empty = scratch_root(tmp_path / "root"), scratch_root(tmp_path / "empty")
        render = ["--rig", str(RIG), "--profile", str(profile)]
        _apply(provision, render, root)
        desired = tmp_path / "desired.json"
        desired.write_text(_desired_json(render))
        print(f"provision diff: {RIG.name} + a 6-model profile ({args.runs} runs each)")
        in_sync, bare = paired_ms([*provision, "diff", *render, "--root", str(root)], args.runs)
        full = report("diff --rig --profile, in sync (render + observe + plan)", in_sync)
        startup = statistics.median(bare)
        ratio = full / startup
        print(f"    = {ratio:.1f}x the bare interpreter start-up (median {startup:.1f} ms, ")
        print("      python -c pass, taken in turn with each sample; target: at most 4x)")
        engine = ["diff", "--desired-json", str(desired), "--root", str(root)]
        samples = samples_ms([*provision, *engine], args.runs)
        report("diff --desired-json, in sync (observe + plan only)", samples)
        pending = [*provision, "diff", *render, "--root", str(empty)]
        report(
            "diff --rig --profile, empty root (all pending, exit 1)",
            samples_ms(pending, args.runs, ok=(1,)),
        )
        if not args.no_series:
            _series(provision, tmp_path, args.series_runs)
        if not args.no_ansible:
            _reference(desired, root, tmp_path, args.ansible_runs)
    failed = args.bound_ms is not None and full > args.bound_ms
    if failed:
        print(f"FAIL: median {full:.1f} ms is above the bound {args.bound_ms:.0f} ms")
    if args.bound_ratio is not None and ratio > args.bound_ratio:
        print(f"FAIL: {ratio:.1f}x the bare start-up is above the bound {args.bound_ratio:g}x")
        failed = True
    return 1 if failed else 0


def _apply(provision: list[str], render: list[str], root: Path) -> None:
    apply = [*provision, "apply", "--yes", *render, "--root", str(root)]
    subprocess.run(apply, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def _series(provision: list[str], tmp_path: Path, runs: int) -> None:
    """diff in sync for GPUs x models; how its cost grows with the size of the plan."""
    print(f"series: diff --rig --profile in sync, GPUs x models ({runs} runs each)")
    rig_data = yaml.safe_load(RIG.read_text())
    medians: dict[tuple[int, int], float] = {}
    print("  GPUs  models  median ms  x bare  files")
    for gpus in SERIES_GPUS:
        rig = tmp_path / f"rig-{gpus}.yaml"
        rig.write_text(yaml.safe_dump({**rig_data, "gpus": rig_data["gpus"][:gpus]}))
        for count in SERIES_COUNTS:
            profile = tmp_path / f"series-{count}.yaml"
            profile.write_text(_series_profile(SERIES_MODELS[:count]))
            root = scratch_root(tmp_path / f"series-{gpus}x{count}")
            render = ["--rig", str(rig), "--profile", str(profile)]
            _apply(provision, render, root)
            diff, bare = paired_ms([*provision, "diff", *render, "--root", str(root)], runs)
            medians[gpus, count] = statistics.median(diff)
            files = sum(1 for p in root.rglob("*") if p.is_file()) - 2  # less the package units
            ratio = medians[gpus, count] / statistics.median(bare)
            row = f"{gpus:>4}  {count:>6}  {medians[gpus, count]:>9.1f}  {ratio:>6.1f}  {files:>5}"
            print("  " + row)
    growth = medians[8, 24] / medians[8, 6]
    print(f"  8 GPUs x 24 models = {growth:.2f}x 8 x 6 (target: at most 2x)")


def _series_profile(models: list[str]) -> str:
    lines = [
        "description: the diff benchmark's series",
        "runtime: ollama",
        "replicas: auto",
        "listen: {address: 127.0.0.1, port: 11434}",
        "power: {psu_w: 3000, platform_w: 400}",
        "models:",
    ]
    lines += [f"  - {{ref: {m}, ctx: 8192, parallel: 1, keep_alive: 30m}}" for m in models]
    return "\n".join(lines) + "\n"


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
