#!/usr/bin/python
# Copyright: gpu-provision contributors
# MIT License (see LICENSE in the collection)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rig_facts
short_description: Read a host's GPUs and rig traits as facts, with gpu-provision
version_added: "0.1.0"
description:
  - Runs C(provision probe --json) on the target (NVML for NVIDIA cards, sysfs for AMD cards)
    and returns the snapshot as the fact C(gpu_rig), with a short summary as C(gpu_rig_summary)
    so that plays can group hosts by GPU count, VRAM or traits (M(ansible.builtin.group_by)).
  - Reads only; changes nothing.
author:
  - gpu-provision contributors (@gpu-provision)
extends_documentation_fragment:
  - action_common_attributes
  - gpu_provision.fleet.tool
  - action_common_attributes.facts
options:
  rig:
    description:
      - A recorded rig snapshot on the target, read instead of probing the GPUs.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
seealso:
  - module: gpu_provision.fleet.provision
"""

EXAMPLES = r"""
- name: Read the GPUs
  gpu_provision.fleet.rig_facts:

- name: Group hosts by GPU count (gpus_1, gpus_2, ...)
  ansible.builtin.group_by:
    key: "gpus_{{ gpu_rig_summary.gpu_count }}"

- name: Hosts with an NVLink bridge
  ansible.builtin.group_by:
    key: nvlink
  when: "'nvlink' in gpu_rig_summary.traits"
"""

RETURN = r"""
ansible_facts:
  description: The facts set on the host.
  returned: always
  type: complex
  contains:
    gpu_rig:
      description: The rig snapshot as C(provision probe --json) prints it (schema, host, gpus,
        traits).
      returned: always
      type: dict
    gpu_rig_summary:
      description: A few figures for grouping hosts.
      returned: always
      type: dict
      contains:
        gpu_count:
          description: The number of GPUs.
          type: int
          sample: 2
        vram_total_bytes:
          description: The VRAM of all GPUs together.
          type: int
          sample: 51527024640
        vram_min_bytes:
          description: The VRAM of the smallest GPU (0 without a GPU).
          type: int
          sample: 25757220864
        vendors:
          description: The GPU vendors, sorted.
          type: list
          elements: str
          sample: [nvidia]
        models:
          description: Each GPU's model name, in probe order.
          type: list
          elements: str
          sample: [NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 3090]
        traits:
          description: The kinds of the rig's traits (for example C(nvlink), C(asymmetric_vram)).
          type: list
          elements: str
          sample: [gpu_count, mixed_compute]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpu_provision.fleet.plugins.module_utils.tool import find_tool, run_json


def summarize(rig):
    """The figures plays group hosts by, from a probe document."""
    gpus = rig.get("gpus", [])
    sizes = [g["memory_total_bytes"] for g in gpus]
    return {
        "gpu_count": len(gpus),
        "vram_total_bytes": sum(sizes),
        "vram_min_bytes": min(sizes) if sizes else 0,
        "vendors": sorted(set(g["vendor"] for g in gpus)),
        "models": [g["name"] for g in gpus],
        "traits": sorted(set(t["kind"] for t in rig.get("traits", []))),
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            rig=dict(type="path"),
            executable=dict(type="str", default="provision"),
        ),
        supports_check_mode=True,
    )
    argv = [find_tool(module, module.params["executable"]), "probe", "--json"]
    if module.params["rig"]:
        argv += ["--rig", module.params["rig"]]
    rig = run_json(module, argv)[1]
    module.exit_json(
        changed=False, ansible_facts={"gpu_rig": rig, "gpu_rig_summary": summarize(rig)}
    )


if __name__ == "__main__":
    main()
