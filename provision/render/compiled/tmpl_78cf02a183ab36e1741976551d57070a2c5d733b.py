from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'amdgpu-power-cap.sh.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    pass
    yield '#!/bin/sh\n'
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n# Sets one AMD card\'s power cap: amdgpu-power-cap DEVICE_DIR WATTS|default\n# DEVICE_DIR is the card\'s PCI directory (/sys/bus/pci/devices/<address>); its hwmon/hwmonN is\n# looked up now, since N follows probe order. The cap is written in microwatts to power1_cap\n# (amdgpu takes whole watts), clamped to power1_cap_min..power1_cap_max, and read back: a\n# mismatch fails the unit. "default" writes power1_cap_default back (amd-smi\'s reset is not\n# relied on).\nset -eu\ndevice=$1\nwatts=$2\n# amdgpu registers its hwmon late in boot: wait for it (PROVISION_HWMON_WAIT_S, default 30 s).\nwaited=0\nuntil ls "$device"/hwmon/hwmon*/power1_cap >/dev/null 2>&1; do\n    [ "$waited" -lt "${PROVISION_HWMON_WAIT_S:-30}" ] || break\n    sleep 1\n    waited=$((waited + 1))\ndone\nfor hwmon in "$device"/hwmon/hwmon*; do\n    [ -e "$hwmon/power1_cap" ] || continue\n    if [ "$watts" = default ]; then\n        cap=$(cat "$hwmon/power1_cap_default" 2>/dev/null || true)\n    else\n        cap=$((watts * 1000000))\n    fi\n    case $cap in\n        \'\' | *[!0-9]*)\n            echo "$device: power1_cap_default cannot be read: the cap is left as it is" >&2\n            exit 1\n            ;;\n    esac\n    # Unreadable or an empty line (the SMU could not tell): no bound on that side then.\n    low=$(cat "$hwmon/power1_cap_min" 2>/dev/null || true)\n    high=$(cat "$hwmon/power1_cap_max" 2>/dev/null || true)\n    case $low in \'\' | *[!0-9]*) low=0 ;; esac\n    case $high in \'\' | *[!0-9]*) high=$cap ;; esac\n    if [ "$cap" -lt "$low" ]; then cap=$low; fi\n    if [ "$cap" -gt "$high" ]; then cap=$high; fi\n    echo "$cap" > "$hwmon/power1_cap"\n    now=$(cat "$hwmon/power1_cap")\n    if [ "$now" != "$cap" ]; then\n        echo "$device: power1_cap reads $now after writing $cap" >&2\n        exit 1\n    fi\n    echo "$device: power cap $((cap / 1000000)) W"\n    exit 0\ndone\necho "$device: no hwmon power1_cap (is amdgpu loaded, is this the card\'s PCI directory?)" >&2\nexit 1\n'

blocks = {}
debug_info = '2=13'