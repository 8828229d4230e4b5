"""provision.change.plan: desired vs observed -> ordered actions with reasons (pure, no host).

The builders `state_a` / `state_b` (two versions of a 2-instance Ollama rig behind nginx) are
shared with test_apply.py and test_cli_change.py.
"""

from __future__ import annotations

from dataclasses import replace

from provision.change.actions import ActionKind, Observed, ObservedFile, ObservedUnit
from provision.change.manifest import build_manifest, encode
from provision.change.plan import make_plan
from provision.desired import (
    MANAGED_HEADER,
    DesiredFile,
    DesiredModel,
    DesiredPower,
    DesiredState,
    DesiredUnit,
)
from provision.paths import MANIFEST_PATH

SYSTEMD = "/etc/systemd/system"
TEMPLATE = f"{SYSTEMD}/ollama@.service"
POWER_UNIT = "gpu-power-limits.service"
NGINX_CONF = "/etc/nginx/conf.d/provision-ollama.conf"
MODELFILE = "/etc/provision/modelfiles/llama3.1-8b-ctx.Modelfile"
GPUS = ("GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000")


def _unit(description: str, service: str) -> str:
    return (
        f"{MANAGED_HEADER}\n[Unit]\nDescription={description}\n\n[Service]\n{service}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _env(index: int, parallel: int) -> DesiredFile:
    text = (
        f"{MANAGED_HEADER}\nOLLAMA_HOST=127.0.0.1:{11500 + index}\nOLLAMA_NUM_PARALLEL={parallel}\n"
    )
    return DesiredFile(
        f"/etc/provision/ollama/{index}.env", text, restarts=(f"ollama@{index}.service",)
    )


def state(instances: tuple[int, ...] = (0, 1), parallel: int = 1, ctx: int = 8192) -> DesiredState:
    """A rig served by one Ollama per GPU behind nginx, a power unit and one model."""
    template = _unit(
        "Ollama %i", "EnvironmentFile=/etc/provision/ollama/%i.env\nExecStart=/bin/true"
    )
    power = _unit("GPU power limits", "Type=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true")
    upstreams = "".join(f"  server 127.0.0.1:{11500 + i};\n" for i in instances)
    nginx = f"{MANAGED_HEADER}\nupstream ollama {{\n  least_conn;\n{upstreams}}}\n"
    modelfile = f"{MANAGED_HEADER}\nFROM llama3.1:8b\nPARAMETER num_ctx {ctx}\n"
    files = (
        DesiredFile(TEMPLATE, template),
        DesiredFile(f"{SYSTEMD}/{POWER_UNIT}", power),
        DesiredFile(NGINX_CONF, nginx, reloads=("nginx.service",)),
        DesiredFile(MODELFILE, modelfile),
        *(_env(i, parallel) for i in instances),
    )
    units = (
        DesiredUnit(POWER_UNIT, oneshot=True),
        *(DesiredUnit(f"ollama@{i}.service", listen=("127.0.0.1", 11500 + i)) for i in instances),
        DesiredUnit("nginx.service", listen=("127.0.0.1", 11434)),
    )
    return DesiredState(
        files=files,
        units=units,
        power=tuple(DesiredPower(uuid, 300.0, 350.0, "profile: 300 W per GPU") for uuid in GPUS),
        models=(DesiredModel("llama3.1:8b-ctx", MODELFILE, "llama3.1:8b"),),
        profile_digest="p" * 64,
        rig_digest="r" * 64,
    )


def state_a() -> DesiredState:
    return state()


def state_b() -> DesiredState:
    """Another instance set, other settings: writes, a removal, an obsolete unit, a new one."""
    return state(instances=(0, 2), parallel=4, ctx=16384)


# --- observations built by hand ------------------------------------------------------------


def applied(desired: DesiredState, live: bool = False, **changes: object) -> Observed:
    """The host right after a completed apply of `desired` (then `changes` replace fields)."""
    files = {
        f.path: ObservedFile(f.path, "file", encode(f.content), f.mode, f.owner, f.group)
        for f in desired.files
    }
    units = {
        u.name: ObservedUnit(u.name, "enabled", "active" if live else None, True if live else None)
        for u in desired.units
    }
    observed = Observed(
        live=live,
        files=files,
        units=units,
        power_w={p.uuid: p.target_w for p in desired.power} if live else None,
        ollama_models=frozenset({"llama3.1:8b", "llama3.1:8b-ctx"}) if live else None,
        manifest=build_manifest(desired),
    )
    observed = replace(observed, **changes)  # type: ignore[arg-type]
    # The host layer also observes whatever the manifest lists.
    manifest = observed.manifest or {}
    for entry in manifest.get("files", ()):
        files.setdefault(entry["path"], ObservedFile(entry["path"], "missing"))
    for entry in manifest.get("units", ()):
        units.setdefault(entry["name"], ObservedUnit(entry["name"], "disabled", "inactive"))
    return observed


def fresh(desired: DesiredState) -> Observed:
    """A host where nothing was applied; nginx is installed (its package's unit), disabled."""
    units = {u.name: ObservedUnit(u.name, "not-found") for u in desired.units}
    units["nginx.service"] = ObservedUnit("nginx.service", "disabled")
    return Observed(
        live=False,
        files={f.path: ObservedFile(f.path, "missing") for f in desired.files},
        units=units,
    )


def before(desired: DesiredState, observed: Observed) -> Observed:
    """`observed` as the host layer sees it when planning `desired`: new paths are missing."""
    files = {f.path: ObservedFile(f.path, "missing") for f in desired.files}
    units = {u.name: ObservedUnit(u.name, "disabled", "inactive") for u in desired.units}
    return replace(observed, files={**files, **observed.files}, units={**units, **observed.units})


def with_file(observed: Observed, path: str, data: bytes, **attrs: object) -> Observed:
    old = observed.files.get(path) or ObservedFile(path, "file", b"", 0o644, "root", "root")
    files = {**observed.files, path: replace(old, kind="file", data=data, **attrs)}  # type: ignore[arg-type]
    return replace(observed, files=files)


def kinds(plan: object) -> list[tuple[str, str]]:
    return [(str(a.kind), a.target) for a in plan.actions]  # type: ignore[attr-defined]


# --- tests ---------------------------------------------------------------------------------


def test_a_fresh_root_gets_every_file_then_units_then_the_manifest_last() -> None:
    desired = state_a()
    plan = make_plan(desired, fresh(desired))
    order = [str(a.kind) for a in plan.actions]
    assert order[:6] == ["write-file"] * 6
    assert order.count("daemon-reload") == 1
    assert order[-1] == "write-manifest"
    assert order.index("daemon-reload") < order.index("enable") < order.index("restart")
    assert all(a.reason == "missing" for a in plan.actions if a.kind is ActionKind.WRITE_FILE)
    # Offline, the live-only steps are recorded as skipped, never dropped.
    skipped = {str(a.kind) for a in plan.actions if a.skipped_offline}
    assert skipped == {"daemon-reload", "restart", "reload", "create-model"}
    assert not plan.in_sync and not plan.refusals(force=False)
    assert "8 power" not in " ".join(plan.not_checked) and "2 power limit(s)" in plan.not_checked
    assert len(plan.diffs) == 6 and plan.diffs[0].text.startswith("--- /dev/null\n+++ b/etc/")


def test_after_a_completed_apply_the_plan_is_empty_and_every_noop_says_why() -> None:
    for live in (False, True):
        plan = make_plan(state_a(), applied(state_a(), live=live))
        assert plan.in_sync and not plan.actions, kinds(plan)
        assert plan.noops and all(n.reason for n in plan.noops)
    offline = make_plan(state_a(), applied(state_a()))
    reasons = {n.target: n.reason for n in offline.noops}
    assert reasons[GPUS[0]].startswith("offline: limit not read")
    assert reasons["llama3.1:8b-ctx"].startswith("offline: not asked")


def test_a_hand_edit_is_a_diff_and_restarts_only_the_unit_that_reads_it() -> None:
    desired = state_a()
    observed = with_file(applied(desired, live=True), "/etc/provision/ollama/1.env", b"edited\n")
    plan = make_plan(desired, observed)
    assert kinds(plan) == [
        ("write-file", "/etc/provision/ollama/1.env"),
        ("restart", "ollama@1.service"),
    ]
    write = plan.actions[0]
    assert write.reason == "content changed" and not write.refused  # listed in the manifest
    assert "-edited\n" in plan.diffs[0].text and "+OLLAMA_NUM_PARALLEL=1\n" in plan.diffs[0].text
    assert plan.actions[1].reason == "inputs changed: /etc/provision/ollama/1.env"


def test_one_daemon_reload_for_several_unit_files_and_none_for_other_files() -> None:
    desired = state_a()
    observed = applied(desired, live=True)
    for path in (TEMPLATE, f"{SYSTEMD}/{POWER_UNIT}"):
        observed = with_file(observed, path, b"old\n")
    plan = make_plan(desired, observed)
    assert [str(a.kind) for a in plan.actions].count("daemon-reload") == 1
    # The template stands for all its instances; the oneshot unit is rerun.
    restarted = [a.target for a in plan.actions if a.kind is ActionKind.RESTART]
    assert restarted == [POWER_UNIT, "ollama@0.service", "ollama@1.service"]
    plan = make_plan(desired, with_file(applied(desired, live=True), NGINX_CONF, b"x\n"))
    assert kinds(plan) == [("write-file", NGINX_CONF), ("reload", "nginx.service")]


def test_mode_and_owner_are_compared_too() -> None:
    desired = state_a()
    observed = with_file(applied(desired), MODELFILE, encode(desired.files[3].content), mode=0o600)
    plan = make_plan(desired, observed)
    assert kinds(plan)[0] == ("write-file", MODELFILE)
    assert plan.actions[0].detail == "mode 0600 -> 0644" and plan.diffs == ()


def test_a_file_that_is_not_ours_is_refused_unless_forced() -> None:
    desired = state_a()
    observed = with_file(fresh(desired), NGINX_CONF, b"upstream mine {}\n")
    plan = make_plan(desired, observed)
    write = next(a for a in plan.actions if a.target == NGINX_CONF)
    assert write.reason == "replaces a file provision does not manage"
    assert "not managed by provision" in write.refused and write.forceable
    assert plan.refusals(force=False) == (write,) and plan.refusals(force=True) == ()
    # The header alone makes it ours.
    observed = with_file(observed, NGINX_CONF, f"{MANAGED_HEADER}\nold\n".encode())
    assert not make_plan(desired, observed).refusals(force=False)


def test_a_symlink_or_a_directory_at_a_target_is_refused_even_with_force() -> None:
    desired = state_a()
    observed = fresh(desired)
    for kind, note in (
        ("symlink", ""),
        ("symlink", " (via the symlink /etc/nginx)"),
        ("other", ""),
    ):
        files = {**observed.files, NGINX_CONF: ObservedFile(NGINX_CONF, kind, note=note)}
        plan = make_plan(desired, replace(observed, files=files))
        (refused,) = plan.refusals(force=True)
        assert refused.target == NGINX_CONF and "never writes through it" in refused.refused
        assert note in refused.refused


def test_only_files_the_manifest_lists_are_removed_and_only_if_still_ours() -> None:
    a, b = state_a(), state_b()
    observed = before(b, applied(a))  # ollama/1.env is in a's manifest, not in b
    plan = make_plan(b, observed)
    removed = [a.target for a in plan.actions if a.kind is ActionKind.REMOVE_FILE]
    assert removed == ["/etc/provision/ollama/1.env"]
    assert any(d.path.endswith("1.env") and "+++ /dev/null" in d.text for d in plan.diffs)
    edited = with_file(observed, "/etc/provision/ollama/1.env", b"mine now\n")
    plan = make_plan(b, edited)
    assert not [a for a in plan.actions if a.kind is ActionKind.REMOVE_FILE]
    assert any("edited by hand" in n.reason for n in plan.noops)


def test_an_obsolete_unit_is_stopped_and_disabled_before_its_files_go() -> None:
    a, b = state_a(), state_b()
    plan = make_plan(b, before(b, applied(a, live=True)))
    order = kinds(plan)
    assert order[:2] == [("stop", "ollama@1.service"), ("disable", "ollama@1.service")]
    assert ("enable", "ollama@2.service") in order
    assert order.index(("remove-file", "/etc/provision/ollama/1.env")) > 1
    restarted = [t for k, t in order if k == "restart"]
    assert restarted == ["ollama@0.service", "ollama@2.service"]  # 0.env changed, 2 is new
    assert ("reload", "nginx.service") in order


def test_live_units_that_are_not_running_are_started_and_oneshots_that_ran_are_not() -> None:
    desired = state_a()
    observed = applied(desired, live=True)
    units = dict(observed.units)
    units["ollama@0.service"] = ObservedUnit("ollama@0.service", "enabled", "failed")
    units[POWER_UNIT] = ObservedUnit(POWER_UNIT, "enabled", "inactive", ran_ok=True)
    units["nginx.service"] = ObservedUnit("nginx.service", "disabled", "active")
    plan = make_plan(desired, replace(observed, units=units))
    assert kinds(plan) == [("enable", "nginx.service"), ("restart", "ollama@0.service")]
    assert plan.actions[1].reason == "is failed"


def test_a_killed_apply_still_restarts_what_it_changed() -> None:
    """Files already new but the manifest is old: the services never saw the change."""
    a, b = state_a(), state_b()
    observed = applied(b, live=True, manifest=build_manifest(a))
    plan = make_plan(b, observed)
    assert [str(x.kind) for x in plan.actions if x.kind is ActionKind.WRITE_FILE] == []
    assert ("daemon-reload", "systemd") not in kinds(plan)  # unit files equal in a and b
    assert ("restart", "ollama@0.service") in kinds(plan)
    assert ("create-model", "llama3.1:8b-ctx") in kinds(plan)
    assert kinds(plan)[-1] == ("write-manifest", MANIFEST_PATH)


def test_power_limits_live() -> None:
    desired = state_a()
    observed = applied(desired, live=True, power_w={GPUS[0]: 350.0, GPUS[1]: 300.2})
    plan = make_plan(desired, observed)
    (action,) = plan.actions
    assert (action.kind, action.target, action.watts) == (ActionKind.SET_POWER, GPUS[0], 300.0)
    assert action.detail == "350 W -> 300 W" and action.reason == "profile: 300 W per GPU"
    plan = make_plan(desired, replace(observed, power_w={}))
    assert all("no power limit" in a.refused for a in plan.refusals(force=True))
    # A GPU no longer managed goes back to the default the manifest recorded.
    unmanaged = replace(desired, power=desired.power[:1])
    plan = make_plan(unmanaged, applied(desired, live=True))
    power = [a for a in plan.actions if a.kind is ActionKind.SET_POWER]
    assert [(a.target, a.watts) for a in power] == [(GPUS[1], 350.0)]


def test_a_gpu_leaving_the_power_unit_gets_its_recorded_default_back() -> None:
    """The unit's restart would run the new ExecStop, which no longer names the GPU: it is
    stopped first, under the old definition, and the GPU is also set to its recorded default."""
    full = state_a()
    unit_path = f"{SYSTEMD}/{POWER_UNIT}"
    files = tuple(
        replace(f, content=f.content + f"# {GPUS[0]} only\n") if f.path == unit_path else f
        for f in full.files
    )
    one = replace(full, files=files, power=full.power[:1])
    plan = make_plan(one, applied(full, live=True))
    order = kinds(plan)
    stop = order.index(("stop", POWER_UNIT))
    assert stop < order.index(("write-file", unit_path)) < order.index(("restart", POWER_UNIT))
    assert GPUS[1] in plan.actions[stop].reason and "default" in plan.actions[stop].reason
    power = [a for a in plan.actions if a.kind is ActionKind.SET_POWER]
    assert [(a.target, a.watts) for a in power] == [(GPUS[1], 350)]
    # Whole watts, as the unit's ExecStop writes them: a recorded 115.5 W default is set as 115.
    manifest = build_manifest(replace(full, power=(replace(full.power[1], default_w=115.5),)))
    plan = make_plan(one, applied(full, live=True, manifest=manifest))
    assert [a.watts for a in plan.actions if a.kind is ActionKind.SET_POWER] == [115]
    # Nothing leaves: no stop, the restart alone applies the new limits.
    plan = make_plan(replace(full, files=files), applied(full, live=True))
    assert ("stop", POWER_UNIT) not in kinds(plan) and ("restart", POWER_UNIT) in kinds(plan)


def test_models_are_created_only_when_missing_or_their_modelfile_changed() -> None:
    desired = state_a()
    observed = applied(desired, live=True, ollama_models=frozenset({"llama3.1:8b"}))
    plan = make_plan(desired, observed)
    # The manifest then records it as provision's own: it was absent before the create.
    assert kinds(plan) == [("create-model", "llama3.1:8b-ctx"), ("write-manifest", MANIFEST_PATH)]
    assert plan.actions[0].reason == "missing" and plan.actions[0].source == MODELFILE
    assert plan.manifest["created_models"] == ["llama3.1:8b-ctx"]
    plan = make_plan(desired, replace(observed, ollama_models=frozenset()))
    assert kinds(plan)[:2] == [("pull-model", "llama3.1:8b"), ("create-model", "llama3.1:8b-ctx")]
    plan = make_plan(desired, replace(observed, ollama_models=None))
    assert "not reachable" in plan.actions[0].reason


def renamed(desired: DesiredState, name: str) -> DesiredState:
    """`desired` with its one model under another name (as a ctx-named one became stable)."""
    (model,) = desired.models
    return replace(desired, models=(replace(model, name=name),))


def test_a_model_provision_created_and_no_longer_wants_is_removed_after_the_new_one() -> None:
    old, new = state_a(), renamed(state_a(), "llama3.1:8b-provision")
    have = frozenset({"llama3.1:8b", "llama3.1:8b-ctx", "mine:latest"})
    manifest = build_manifest(old, created={"llama3.1:8b-ctx"})
    plan = make_plan(new, applied(old, live=True, ollama_models=have, manifest=manifest))
    models = [k for k in kinds(plan) if k[0].endswith("-model")]
    assert models == [
        ("create-model", "llama3.1:8b-provision"),
        ("remove-model", "llama3.1:8b-ctx"),
    ]
    assert plan.manifest["created_models"] == ["llama3.1:8b-provision"]
    # Once gone, it is not asked for again.
    have = frozenset({"llama3.1:8b", "llama3.1:8b-provision", "mine:latest"})
    again = make_plan(new, applied(new, live=True, ollama_models=have, manifest=plan.manifest))
    assert again.in_sync, kinds(again)


def test_a_model_provision_did_not_create_is_never_removed() -> None:
    old, new = state_a(), renamed(state_a(), "llama3.1:8b-provision")
    have = frozenset({"llama3.1:8b", "llama3.1:8b-ctx", "llama3.1:8b-provision"})
    # The old name existed before provision's create (the user's own): never recorded as ours.
    plan = make_plan(old, applied(old, live=True, ollama_models=have))
    assert plan.in_sync and plan.manifest["created_models"] == []
    plan = make_plan(new, applied(old, live=True, ollama_models=have))
    assert ("remove-model", "llama3.1:8b-ctx") not in kinds(plan)
    assert plan.manifest["created_models"] == []  # the new name existed too: created over


def test_offline_a_removal_is_listed_as_skipped_and_kept_for_the_next_live_apply() -> None:
    old, new = state_a(), renamed(state_a(), "llama3.1:8b-provision")
    manifest = build_manifest(old, created={"llama3.1:8b-ctx"})
    plan = make_plan(new, applied(old, manifest=manifest))
    (removal,) = [a for a in plan.actions if a.kind is ActionKind.REMOVE_MODEL]
    assert removal.target == "llama3.1:8b-ctx" and removal.skipped_offline
    assert plan.manifest["created_models"] == ["llama3.1:8b-ctx"]
    # Live with the API down: nothing is removed blindly, and it stays recorded.
    down = make_plan(new, applied(old, live=True, ollama_models=None, manifest=manifest))
    assert ("remove-model", "llama3.1:8b-ctx") not in kinds(down)
    assert down.manifest["created_models"] == ["llama3.1:8b-ctx"]


def test_a_manifest_from_before_created_models_counts_its_models_as_created() -> None:
    old, new = state_a(), renamed(state_a(), "llama3.1:8b-provision")
    manifest = {k: v for k, v in build_manifest(old).items() if k != "created_models"}
    plan = make_plan(new, applied(old, live=True, manifest=manifest))
    assert ("remove-model", "llama3.1:8b-ctx") in kinds(plan)


def test_units_that_do_not_exist_or_are_masked_are_refused() -> None:
    desired = state_a()
    observed = fresh(desired)
    units = {**observed.units, "nginx.service": ObservedUnit("nginx.service", "not-found")}
    plan = make_plan(desired, replace(observed, units=units))  # and provision does not write it
    refused = {a.target for a in plan.refusals(force=True)}
    assert refused == {"nginx.service"}
    observed = applied(desired)
    units = {**observed.units, "nginx.service": ObservedUnit("nginx.service", "masked")}
    (action,) = make_plan(desired, replace(observed, units=units)).refusals(force=True)
    assert "masked" in action.refused


def test_the_manifest_records_files_units_ports_power_models_and_digests() -> None:
    manifest = build_manifest(state_a())
    assert manifest["schema"] == 1 and manifest["profile_digest"] == "p" * 64
    entry = next(f for f in manifest["files"] if f["path"] == "/etc/provision/ollama/0.env")
    assert len(entry["sha256"]) == 64 and entry["mode"] == "0644"
    assert entry["restarts"] == ["ollama@0.service"]
    assert {"unit": "nginx.service", "host": "127.0.0.1", "port": 11434} in manifest["ports"]
    assert manifest["power"][0]["target_w"] == 300.0 and manifest["power"][0]["default_w"] == 350.0
    modelfile = next(f for f in manifest["files"] if f["path"] == MODELFILE)
    assert manifest["models"][0]["modelfile_sha256"] == modelfile["sha256"]


LLAMA_UNIT = "llama-server-llama3.1-8b.service"


def llama_state() -> DesiredState:
    unit = f"{SYSTEMD}/{LLAMA_UNIT}"
    return DesiredState(
        files=(DesiredFile(unit, _unit("llama-server", "ExecStart=/x"), restarts=(LLAMA_UNIT,)),),
        units=(DesiredUnit(LLAMA_UNIT, listen=("127.0.0.1", 8236), gpu_uuids=(GPUS[1],)),),
    )


def with_stock_ollama(
    desired: DesiredState, enabled: str, active: str, devices: tuple[str, ...] | None
) -> Observed:
    observed = applied(desired, live=True)
    units = {**observed.units, "ollama.service": ObservedUnit("ollama.service", enabled, active)}
    return replace(observed, units=units, stock_ollama_devices=devices)


def test_a_running_ollama_on_the_same_gpus_as_llama_server_is_warned_about() -> None:
    desired = llama_state()
    (warning,) = make_plan(desired, with_stock_ollama(desired, "enabled", "active", ())).warnings
    assert warning.startswith(
        f"ollama.service is running and sees every GPU, among them the GPUs of {LLAMA_UNIT}: "
    )
    assert "systemctl disable --now ollama.service" in warning
    named = with_stock_ollama(desired, "enabled", "inactive", (GPUS[1],))
    (warning,) = make_plan(desired, named).warnings
    assert f"enabled (it starts at boot) and sees {GPUS[1]}" in warning
    # Not when it is off, or sees only other cards.
    assert not make_plan(desired, with_stock_ollama(desired, "disabled", "inactive", ())).warnings
    other = with_stock_ollama(desired, "enabled", "active", (GPUS[0],))
    assert not make_plan(desired, other).warnings
