"""Placement rules by name (docs/ARCHITECTURE.md §5, issue 4): each decision and its reason."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from provision.cli.report import placement_text, placement_to_plain
from provision.errors import InputError
from provision.models.refs import resolve
from provision.placement.decisions import Placement
from provision.placement.fit import Verdict
from provision.placement.place import place
from provision.placement.profile import load_profile
from provision.render.files import render
from tests.helpers import load_named_rig, rig_file, run_provision


def _place(rig_name: str, profile_ref: str) -> Placement:
    profile = load_profile(profile_ref)
    specs = {m.ref: resolve(m.ref, os.environ) for m in profile.models}
    return place(load_named_rig(rig_name), profile, specs)


def _profile(tmp_path: Path, text: str) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return str(path)


def _env(placement: Placement, unit: str = "ollama.service") -> dict[str, str]:
    instance = next(i for i in placement.instances if i.unit == unit)
    return dict(instance.env)


def test_models_that_fit_one_gpu_are_never_split() -> None:
    plan = _place("synthetic-2x3090-x16-x8", "ollama-auto")
    assert [m.fit.verdict for m in plan.models] == [Verdict.SINGLE_GPU] * 2
    assert sorted(m.gpu_indices for m in plan.models) == [(0,), (1,)]  # side by side
    env = _env(plan)
    assert "OLLAMA_SCHED_SPREAD" not in env
    assert env["OLLAMA_MAX_LOADED_MODELS"] == "2"


def test_70b_at_8k_on_2x3090_splits_across_both_with_spread(tmp_path: Path) -> None:
    ref = _profile(tmp_path, "models: [{ref: llama3.3:70b, ctx: 8192}]\n")
    plan = _place("synthetic-2x3090-x16-x8", ref)
    (model,) = plan.models
    assert model.fit.verdict == Verdict.SPLIT and sorted(model.gpu_indices) == [0, 1]
    assert model.fit.reason.startswith("split across 0,1 because")
    env = _env(plan)
    assert env["OLLAMA_SCHED_SPREAD"] == "1"
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192"
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    assert env["CUDA_VISIBLE_DEVICES"].split(",") == [g.uuid for g in rig.gpus]
    assert "spread evenly" in plan.instances[0].reason


def test_spread_is_not_set_when_another_model_fits_one_gpu(tmp_path: Path) -> None:
    text = "models: [{ref: llama3.3:70b, ctx: 2048}, {ref: llama3.2:3b, ctx: 2048}]\n"
    plan = _place("synthetic-2xa6000", _profile(tmp_path, text))
    assert "OLLAMA_SCHED_SPREAD" not in _env(plan)


def test_4090_comes_first_on_4090_plus_3090(tmp_path: Path) -> None:
    rig = load_named_rig("synthetic-4090-3090")
    uuid_4090 = next(g.uuid for g in rig.gpus if "4090" in g.name)
    ref = _profile(tmp_path, "models: [{ref: llama3.3:70b, ctx: 8192}]\n")
    env = _env(_place("synthetic-4090-3090", ref))
    assert env["CUDA_VISIBLE_DEVICES"].split(",")[0] == uuid_4090
    server = _place("synthetic-4090-3090", "llama-server").instances[0]
    assert server.gpu_uuids[0] == uuid_4090
    args = list(server.args)
    assert args[args.index("--device") + 1] == "CUDA0,CUDA1"
    split = [int(x) for x in args[args.index("-ts") + 1].split(",")]
    assert sum(split) == 81  # 80 blocks + the output head
    assert "--fit" not in args and args[args.index("-ngl") + 1] == "all"


def test_asymmetric_split_on_new_ollama_gets_an_explicit_tensor_split(tmp_path: Path) -> None:
    # This rig runs Ollama 0.30.x: llama.cpp places layers, we pass the decided split.
    ref = _profile(tmp_path, "models: [{ref: qwen2.5:32b, ctx: 32768}]\n")
    plan = _place("synthetic-2060-3090", ref)
    (model,) = plan.models
    if model.fit.verdict == Verdict.SPLIT:
        env = _env(plan)
        assert env["LLAMA_ARG_FIT_TARGET"] == "512"
        assert len(env["LLAMA_ARG_TENSOR_SPLIT"].split(",")) == 2
        # The plan's layer counts are what Ollama runs, and it says so.
        assert f"LLAMA_ARG_TENSOR_SPLIT={env['LLAMA_ARG_TENSOR_SPLIT']} enforces" in (
            model.ollama_reason
        )
    else:
        pytest.fail(f"expected a split, got {model.fit.verdict}")


def test_legacy_ollama_gets_no_llama_cpp_variables() -> None:
    plan = _place("synthetic-2x3090-x16-x8", "ollama-auto")  # Ollama 0.12.6
    assert not any(k.startswith("LLAMA_ARG_") for k in _env(plan))


def test_replicas_with_an_8b_model_on_2x3090_give_two_instances_and_nginx() -> None:
    plan = _place("synthetic-2x3090-x16-x8", "ollama-replicas")
    assert [i.unit for i in plan.instances] == ["ollama@0.service", "ollama@1.service"]
    assert plan.disabled_units == ("ollama.service",)
    assert plan.balancer is not None and plan.balancer.port == 11434
    assert {port for _, port in plan.balancer.upstreams} == {i.port for i in plan.instances}
    uuids = [i.gpu_uuids for i in plan.instances]
    assert len({u for (u,) in uuids}) == 2
    for instance in plan.instances:
        env = dict(instance.env)
        assert env["OLLAMA_HOST"] == f"127.0.0.1:{instance.port}"
        assert env["OLLAMA_MODELS"] == "/usr/share/ollama/.ollama/models"  # stored once


def test_replicas_fall_back_to_one_instance_when_only_one_gpu_can_hold_the_model() -> None:
    plan = _place("synthetic-1x4090", "ollama-replicas")
    assert [i.unit for i in plan.instances] == ["ollama.service"]
    assert plan.balancer is None


def test_k80_rig_is_warned_about_and_still_placed() -> None:
    plan = _place("synthetic-2xk80", "ollama-auto")
    assert any("legacy GPU" in w for w in plan.warnings)
    assert any("below Ollama's support floor" in w for w in plan.warnings)
    assert all(m.placed for m in plan.models)
    share = plan.models[0].fit.shares[0]
    assert share.gpu.compute_capability == "3.7"


def test_x4_riser_is_warned_about() -> None:
    plan = _place("synthetic-4x3090-x4-riser", "ollama-auto")
    assert any("GPU 3 (RTX 3090) at most PCIe 3.0 x4" in w for w in plan.warnings)


def test_psu_budget_is_shared_and_clamped_to_nvml_limits(tmp_path: Path) -> None:
    plan = _place("synthetic-2x3090-x16-x8", "power-capped")  # 850 - 250 = 600 W over two
    assert [d.target_w for d in plan.power] == [300.0, 300.0]
    assert all(d.default_w == 350.0 for d in plan.power)
    low = _profile(tmp_path, "extends: ollama-auto\npower: {per_gpu_w: 80}\n")
    clamped = _place("synthetic-2x3090-x16-x8", low)  # below the 100 W minimum
    assert [d.target_w for d in clamped.power] == [100.0, 100.0]
    assert all("raised to NVML's minimum 100 W" in d.reason for d in clamped.power)
    high = _profile(tmp_path, "extends: ollama-auto\npower: {per_gpu_w: 500}\n")
    assert [d.target_w for d in _place("synthetic-2x3090-x16-x8", high).power] == [400.0, 400.0]


def test_a_budget_below_the_cards_minimum_is_refused(tmp_path: Path) -> None:
    """400 - 250 = 150 W for two 3090s whose minimum is 100 W each: no limit keeps the PSU
    inside its budget, so nothing is planned."""
    tight = _profile(tmp_path, "extends: ollama-auto\npower: {psu_w: 400, platform_w: 250}\n")
    result = run_provision("plan", "--rig", str(rig_file("synthetic-2x3090-x16-x8")),
                           "--profile", str(tight))  # fmt: skip
    assert result.returncode == 2
    assert f"error: {tight}:2: field 'power.psu_w': 400 W PSU - 250 W platform leaves " \
        "150 W for the GPUs, below the 200 W" in result.stderr  # fmt: skip
    assert "raise psu_w (or lower platform_w) to at least 450 W" in result.stderr


def test_budget_never_raises_a_card_above_its_default(tmp_path: Path) -> None:
    roomy = _profile(tmp_path, "extends: ollama-auto\npower: {psu_w: 2000, platform_w: 250}\n")
    plan = _place("synthetic-2x3090-x16-x8", roomy)
    assert [d.target_w for d in plan.power] == [350.0, 350.0]


def test_too_large_model_is_left_out_with_suggestions(tmp_path: Path) -> None:
    profile = load_profile(
        _profile(tmp_path, "models: [{ref: mixtral:8x22b, ctx: 8192}, {ref: llama3.1:8b}]\n")
    )
    rig = load_named_rig("synthetic-4090-4060ti16")
    small_ram = replace(rig, host=replace(rig.host, ram_bytes=32 * 1024**3))
    plan = place(small_ram, profile, {m.ref: resolve(m.ref, os.environ) for m in profile.models})
    big = next(m for m in plan.models if m.entry.ref == "mixtral:8x22b")
    assert big.fit.verdict == Verdict.NO_FIT
    assert big.units == () and big.modelfile_path is None
    assert big.name not in plan.instances[0].models
    assert any(w.startswith("mixtral:8x22b left out") and "context" in w for w in plan.warnings)


def test_exposed_listen_address_warns(tmp_path: Path) -> None:
    text = "expose: true\nlisten: {address: 0.0.0.0}\nmodels: [{ref: llama3.1:8b}]\n"
    plan = _place("synthetic-1x4090", _profile(tmp_path, text))
    assert any("no authentication" in w and "OLLAMA_ORIGINS" in w for w in plan.warnings)
    assert _env(plan)["OLLAMA_HOST"] == "0.0.0.0:11434"


def test_exposed_llama_server_warns_about_its_api_key_not_ollamas_settings(tmp_path: Path) -> None:
    text = (
        "runtime: llama-server\nexpose: true\nlisten: {address: 0.0.0.0, port: 8080}\n"
        "models: [{ref: llama3.1:8b, path: /srv/models/llama.gguf}]\n"
    )
    plan = _place("synthetic-1x4090", _profile(tmp_path, text))
    (warning,) = [w for w in plan.warnings if w.startswith("listening on 0.0.0.0")]
    assert "--api-key" in warning and "OLLAMA" not in warning


def test_pinned_model_stays_on_its_gpus(tmp_path: Path) -> None:
    plan = _place(
        "synthetic-2x3090-x16-x8", _profile(tmp_path, "models: [{ref: llama3.1:8b, gpus: [1]}]\n")
    )
    assert plan.models[0].gpu_indices == (1,)
    with pytest.raises(InputError, match="GPU 5 is not in this rig"):
        _place(
            "synthetic-2x3090-x16-x8",
            _profile(tmp_path, "models: [{ref: llama3.1:8b, gpus: [5]}]\n"),
        )


def test_ollama_kv_type_must_agree_across_models(tmp_path: Path) -> None:
    text = "models: [{ref: llama3.1:8b, kv_type: q8_0}, {ref: llama3.2:3b}]\n"
    with pytest.raises(InputError, match="OLLAMA_KV_CACHE_TYPE is server-wide"):
        _place("synthetic-2x3090-x16-x8", _profile(tmp_path, text))


def test_quantized_kv_turns_flash_attention_on(tmp_path: Path) -> None:
    text = "models: [{ref: llama3.1:8b, kv_type: q8_0}]\n"
    env = _env(_place("synthetic-2x3090-x16-x8", _profile(tmp_path, text)))
    assert env["OLLAMA_FLASH_ATTENTION"] == "1" and env["OLLAMA_KV_CACHE_TYPE"] == "q8_0"


def test_partial_offload_sets_num_gpu_and_ngl() -> None:
    plan = _place("synthetic-1x4090", "llama-server")
    (model,) = plan.models
    assert model.fit.verdict == Verdict.PARTIAL_OFFLOAD
    args = list(plan.instances[0].args)
    layers_on_gpu = len(model.fit.shares[0].footprint.layers) + 1  # + the output head
    assert args[args.index("-ngl") + 1] == str(layers_on_gpu) == str(model.num_gpu)


def test_ollama_parallel_is_server_wide_so_every_model_is_estimated_with_the_widest(
    tmp_path: Path,
) -> None:
    """A model planned at parallel 1 under OLLAMA_NUM_PARALLEL=4 allocates four streams."""
    text = "models: [{ref: llama3.1:8b, parallel: 1}, {ref: qwen2.5:7b, parallel: 4}]\n"
    plan = _place("synthetic-2x3090-x16-x8", _profile(tmp_path, text))
    assert [m.settings.parallel for m in plan.models] == [4, 4]
    assert [m.fit.settings.parallel for m in plan.models] == [4, 4]
    assert _env(plan)["OLLAMA_NUM_PARALLEL"] == "4"
    assert any("OLLAMA_NUM_PARALLEL is server-wide" in w for w in plan.warnings)
    alone = _place("synthetic-2x3090-x16-x8", _profile(tmp_path, "models: [{ref: llama3.1:8b}]\n"))
    kv = [s.footprint.kv_bytes for m in (plan.models[0], alone.models[0]) for s in m.fit.shares]
    assert kv[0] == 4 * kv[1]  # the 8B's cache holds four streams of 8192 cells, not one


def test_llama_server_keeps_each_models_own_parallel(tmp_path: Path) -> None:
    text = (
        "runtime: llama-server\nmodels:\n"
        "  - {ref: llama3.1:8b, parallel: 1, path: /srv/a.gguf}\n"
        "  - {ref: qwen2.5:7b, parallel: 4, path: /srv/b.gguf}\n"
    )
    plan = _place("synthetic-2x3090-x16-x8", _profile(tmp_path, text))
    assert [m.settings.parallel for m in plan.models] == [1, 4]
    assert not any("server-wide" in w for w in plan.warnings)


def _with_ollama(rig_name: str, version: str | None) -> Placement:
    rig = load_named_rig(rig_name)
    runtimes = {**rig.host.runtimes, "ollama": version}
    rig = replace(rig, host=replace(rig.host, runtimes=runtimes))
    profile = load_profile("ollama-auto")  # qwen2.5:32b and llama3.1:8b at 8K
    specs = {m.ref: resolve(m.ref, os.environ) for m in profile.models}
    return place(rig, profile, specs)


def test_32b_on_2x3090_is_pinned_where_ollama_0_31_would_spread_it() -> None:
    """Issue 9's case: Ollama >= 0.30 keeps a model on one GPU only when its prediction (file +
    f16 KV: 22.0 GB here) is within 80% of that GPU's free memory (~25.5 GB): it would spread
    qwen2.5:32b over both cards, which the plan keeps on one. main_gpu 0 pins it."""
    plan = _with_ollama("synthetic-2x3090-x16-x8", "0.31.0")
    big, small = plan.models
    assert big.fit.verdict == Verdict.SINGLE_GPU and big.gpu_indices == (0,)
    assert big.main_gpu == 0 and big.ollama_gpus == (0,)
    assert "would spread it over GPU 0 (RTX 3090), GPU 1 (RTX 3090)" in big.ollama_reason
    assert "22.0 GB against 80% of 25.5 GB free" in big.ollama_reason  # this rig idles at 25.5
    # The 8B fits 80% of GPU 1, which holds nothing else: Ollama agrees, no pin.
    assert small.gpu_indices == (1,) and small.ollama_gpus == (1,) and small.main_gpu is None
    assert "as planned" in small.ollama_reason


def test_the_pin_is_the_position_in_cuda_visible_devices_not_the_gpu_index() -> None:
    """GPU 0 drives the desktop, so GPU 1 is listed first (fastest first) and gets the 32B."""
    plan = _with_ollama("synthetic-3090-display-3090", "0.32.1")
    visible = _env(plan)["CUDA_VISIBLE_DEVICES"].split(",")
    rig = load_named_rig("synthetic-3090-display-3090")
    big = plan.models[0]
    assert big.gpu_indices == (1,) and big.main_gpu == 0
    assert visible[big.main_gpu] == rig.gpus[1].uuid


def test_older_ollama_follows_the_plan_where_its_own_estimate_agrees() -> None:
    plan = _with_ollama("synthetic-2x3090-x16-x8", "0.12.6")
    assert all(m.main_gpu is None and m.ollama_shares is None for m in plan.models)
    big, small = plan.models
    assert big.ollama_gpus == (0,) and small.ollama_gpus == (1,)
    assert "Ollama will put all 65 layers (64 blocks + output) on GPU 0 (RTX 3090) as planned" in (
        big.ollama_reason
    )
    assert "llm/memory.go estimate" in big.ollama_reason


def test_older_ollama_puts_a_model_on_the_most_free_gpu_and_the_bars_show_it() -> None:
    """Ollama 0.12.6 (llm/memory.go pickBestFullFitByLibrary) tries the GPUs most free first: the
    RTX 3090 has more free memory than the 4090, so the 32B goes there and the 8B to the 4090.
    No per-model setting moves it before 0.30, so the plan says so and draws Ollama's placement."""
    plan = _with_ollama("synthetic-4090-3090", "0.12.6")
    big, small = plan.models
    assert big.gpu_indices == (0,) and big.ollama_gpus == (1,) and big.main_gpu is None
    assert small.gpu_indices == (1,) and small.ollama_gpus == (0,)
    assert big.ollama_shares is not None and big.ollama_shares[0].gpu.index == 1
    assert "Ollama will put all 65 layers (64 blocks + output) on GPU 1 (RTX 3090)" in (
        big.ollama_reason
    )
    assert "not as planned" in big.ollama_reason and "memory bars show Ollama's" in (
        big.ollama_reason
    )
    desired = render(plan)
    bars = placement_text(plan, desired).split("memory per GPU:")[1]
    assert "where Ollama will put them, not the plan" in bars
    gpu1 = next(line for line in bars.splitlines() if "GPU 1" in line)
    assert "20.9 GiB" in gpu1  # the 32B, drawn where Ollama puts it (its logits peak included)
    plain = placement_to_plain(plan, desired)["models"]
    assert plain[0]["ollama_gpus"] == [1] and plain[0]["ollama_layers_per_gpu"] == [64]
    assert plain[0]["gpus"] == [0]  # the plan's own placement is still reported


def test_ollama_0_13_to_0_25_is_placed_by_the_layout() -> None:
    """memory.go is gone from 0.12.11; LLAMA_ARG_FIT_TARGET means nothing before 0.30."""
    plan = _with_ollama("synthetic-4090-3090", "0.20.4")
    assert all("llm/server.go layout" in m.ollama_reason for m in plan.models)
    assert "LLAMA_ARG_FIT_TARGET" not in _env(plan)


def test_num_gpu_is_labelled_as_enforced(tmp_path: Path) -> None:
    plan = _place("synthetic-1x4090", _profile(tmp_path, "models: [{ref: llama3.3:70b}]\n"))
    (model,) = plan.models
    assert model.fit.verdict == Verdict.PARTIAL_OFFLOAD and model.num_gpu is not None
    assert f"PARAMETER num_gpu {model.num_gpu} enforces" in model.ollama_reason


def test_one_visible_gpu_needs_no_lever(tmp_path: Path) -> None:
    plan = _place("synthetic-1x4090", _profile(tmp_path, "models: [{ref: llama3.1:8b}]\n"))
    (model,) = plan.models
    assert model.main_gpu is None and model.ollama_gpus == (0,)
    assert "sees only GPU 0" in model.ollama_reason


def test_a_split_model_has_no_per_model_lever_and_the_plan_says_so(tmp_path: Path) -> None:
    ref = _profile(tmp_path, "models: [{ref: llama3.3:70b, ctx: 8192}]\n")
    rig = load_named_rig("synthetic-2x4090")
    profile = load_profile(ref)
    plan = place(rig, profile, {m.ref: resolve(m.ref, os.environ) for m in profile.models})
    (model,) = plan.models
    assert model.fit.verdict == Verdict.SPLIT and model.main_gpu is None
    assert model.ollama_gpus == (0, 1) and "no per-model split" in model.ollama_reason


def test_flash_attention_is_rendered_as_the_estimate_assumes_it(tmp_path: Path) -> None:
    """On by default where Ollama enables it (an RTX 4090), and said so explicitly."""
    plan = _place("synthetic-1x4090", _profile(tmp_path, "models: [{ref: llama3.1:8b}]\n"))
    assert plan.models[0].settings.flash_attention
    assert _env(plan)["OLLAMA_FLASH_ATTENTION"] == "1"
    off = "flash_attention: false\nmodels: [{ref: llama3.1:8b}]\n"
    plan_off = _place("synthetic-1x4090", _profile(tmp_path, off))
    assert not plan_off.models[0].settings.flash_attention
    assert _env(plan_off)["OLLAMA_FLASH_ATTENTION"] == "0"
    # Without flash attention llama.cpp's compute buffer is larger: the estimate follows.
    on_share, off_share = plan.models[0].fit.shares[0], plan_off.models[0].fit.shares[0]
    assert off_share.footprint.compute_bytes > on_share.footprint.compute_bytes


def test_flash_attention_is_off_where_ollama_will_not_enable_it() -> None:
    """Tesla K80s (CC 3.7) with a current Ollama: below its CC 6.0 rule."""
    plan = _place("synthetic-2xk80", "ollama-auto")
    assert not any(m.settings.flash_attention for m in plan.models)
    assert _env(plan)["OLLAMA_FLASH_ATTENTION"] == "0"
    assert any(w.startswith("flash attention off: Ollama") for w in plan.warnings)


def test_a_quantized_kv_cache_is_refused_where_flash_attention_is_off(tmp_path: Path) -> None:
    text = "models: [{ref: llama3.2:3b, kv_type: q8_0}]\n"
    with pytest.raises(InputError, match=r"kv_type': q8_0 needs flash attention") as caught:
        _place("synthetic-2xk80", _profile(tmp_path, text))
    assert "kv_type: f16" in (caught.value.hint or "")


def test_a_context_above_the_trained_length_is_clamped_with_a_warning(tmp_path: Path) -> None:
    spec = resolve("llama3.1:8b", os.environ)
    assert spec.ctx_train is not None
    asked = 2 * spec.ctx_train
    text = f"models: [{{ref: llama3.1:8b, ctx: {asked}}}]\n"
    plan = _place("synthetic-1x4090", _profile(tmp_path, text))
    (model,) = plan.models
    assert model.settings.ctx_tokens == spec.ctx_train == model.fit.settings.ctx_tokens
    assert _env(plan)["OLLAMA_CONTEXT_LENGTH"] == str(spec.ctx_train)
    assert any(f"ctx {asked} is above the {spec.ctx_train} tokens" in w for w in plan.warnings)


def test_models_that_swap_are_judged_on_emptied_gpus(tmp_path: Path) -> None:
    """Under OLLAMA_MAX_LOADED_MODELS=1 Ollama unloads one model before the next: none of them
    is judged against memory another would hold."""
    text = "models: [{ref: qwen2.5:32b}, {ref: qwen2.5-coder:32b}, {ref: deepseek-r1:32b}]\n"
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    rig = replace(rig, host=replace(rig.host, runtimes={**rig.host.runtimes, "ollama": "0.32.1"}))
    profile = load_profile(_profile(tmp_path, text))
    plan = place(rig, profile, {m.ref: resolve(m.ref, os.environ) for m in profile.models})
    assert _env(plan)["OLLAMA_MAX_LOADED_MODELS"] == "1"
    for model in plan.models:
        assert "of 25.5 GB free" in model.ollama_reason, model.ollama_reason


def test_gpus_left_idle_get_a_replicas_hint() -> None:
    """The default profile on 8 A100s uses two cards; each could hold every model alone."""
    plan = _place("synthetic-8xa100-nvlink", "ollama-auto")
    hints = [w for w in plan.warnings if "idle" in w]
    assert len(hints) == 1
    assert hints[0].startswith("6 of 8 GPUs idle: one Ollama serves every model from GPU 0")
    assert "`replicas: auto` would run one Ollama per GPU" in hints[0]
    busy = _place("synthetic-2x3090-x16-x8", "ollama-auto")  # both cards hold a model
    assert not any("idle" in w for w in busy.warnings)


def test_a_replica_count_the_rig_cannot_build_is_warned_about(tmp_path: Path) -> None:
    more = _profile(tmp_path, "extends: ollama-replicas\nreplicas: 4\n")
    plan = _place("synthetic-2x3090-x16-x8", more)
    assert len(plan.instances) == 2
    assert "replicas: 4 asked, 2 built: only GPUs 0, 1 each hold every model alone" in plan.warnings
    # Two replicas asked, but the 32B fits the 4090 alone, not the 16 GB card.
    none = _profile(tmp_path, "extends: ollama-auto\nreplicas: 2\n")
    single = _place("synthetic-4090-4060ti16", none)
    assert len(single.instances) == 1
    assert any(w.startswith("replicas: 2 not built: replicas need two or more GPUs") for w in
               single.warnings)  # fmt: skip
    ignored = _profile(tmp_path, "extends: llama-server\nreplicas: 2\n")
    served = _place("synthetic-2x3090-x16-x8", ignored)
    assert any(w.startswith("replicas: 2 is ignored: llama-server") for w in served.warnings)


def test_a_mig_enabled_gpu_is_refused_with_the_fix(tmp_path: Path) -> None:
    """CUDA sees only MIG devices on such a card, and the snapshot lists none of them."""
    with pytest.raises(InputError) as refused:
        _place("synthetic-1xa100-mig", "ollama-auto")
    assert "GPU 0 (A100 80GB PCIe) has MIG enabled" in refused.value.message
    assert "nvidia-smi -i 0 -mig 0" in (refused.value.hint or "")
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    mixed = replace(rig, gpus=(rig.gpus[0], replace(rig.gpus[1], mig_enabled=True)))
    profile = load_profile(_profile(tmp_path, "extends: ollama-replicas\n"))
    specs = {m.ref: resolve(m.ref, os.environ) for m in profile.models}
    with pytest.raises(InputError) as refused:
        place(mixed, profile, specs)
    assert "`gpus: [0]`" in (refused.value.hint or "")
    # Kept off the card by the profile: placed on the other GPU only, no replica on the MIG one.
    pinned = "extends: ollama-replicas\nmodels: [{ref: llama3.1:8b, gpus: [0]}]\n"
    profile = load_profile(_profile(tmp_path, pinned))
    plan = place(mixed, profile, {m.ref: resolve(m.ref, os.environ) for m in profile.models})
    assert [i.gpu_uuids for i in plan.instances] == [(rig.gpus[0].uuid,)]


def test_a_vision_model_counts_its_projector_and_pads_the_fit_target(tmp_path: Path) -> None:
    # Our unit sets LLAMA_ARG_FIT_TARGET, so Ollama (>= 0.31.2) keeps it without adding its
    # projector pad (llm/llama_server.go extraEnvsForStart): the margin carries it.
    ref = _profile(tmp_path, "models: [{ref: gemma3:12b, ctx: 8192}]\n")
    plan = _place("synthetic-2060-3090", ref)  # Ollama 0.30.x: the fit variables are rendered
    (model,) = plan.models
    first = model.fit.shares[0].footprint
    assert first.projector_bytes == model.spec.projector_bytes + (1 << 30)
    pad = -(-(model.spec.projector_bytes + (1 << 30)) // 2**20)
    assert _env(plan)["LLAMA_ARG_FIT_TARGET"] == str(512 + pad)
    text = "models: [{ref: qwen2.5:32b, ctx: 32768}]\n"
    assert (
        _env(_place("synthetic-2060-3090", _profile(tmp_path, text)))["LLAMA_ARG_FIT_TARGET"]
        == "512"
    )


def test_llama_server_loads_the_mmproj_file_it_was_given(tmp_path: Path) -> None:
    mmproj = tmp_path / "mmproj-f16.gguf"
    mmproj.write_bytes(b"\0" * 4096)
    text = (
        "runtime: llama-server\nmodels:\n"
        f"  - {{ref: gemma3:4b, ctx: 4096, path: /srv/g.gguf, mmproj: {mmproj}}}\n"
    )
    profile = load_profile(_profile(tmp_path, text))
    from provision.models.refs import mmproj_spec

    specs = {m.ref: mmproj_spec(resolve(m.ref, os.environ), str(m.mmproj)) for m in profile.models}
    plan = place(load_named_rig("synthetic-1x4090"), profile, specs)
    args = list(plan.instances[0].args)
    assert args[args.index("--mmproj") + 1] == str(mmproj)
    # The file here says how large the projector is.
    assert plan.models[0].spec.projector_bytes == 4096


def test_an_unmodelled_architecture_is_named_in_the_plan(tmp_path: Path) -> None:
    ref = _profile(tmp_path, "models: [{ref: llama4:16x17b, ctx: 8192}]\n")
    plan = _place("synthetic-8xa100-nvlink", ref)
    assert any("architecture 'llama4' is not modelled" in w for w in plan.warnings)
    plain = _place("synthetic-8xa100-nvlink", _profile(tmp_path, "models: [{ref: qwen3:14b}]\n"))
    assert not any("not modelled" in w for w in plain.warnings)
