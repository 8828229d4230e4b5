#!/usr/bin/python
# Copyright: gpu-provision contributors
# MIT License (see LICENSE in the collection)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: provision
short_description: Plan, diff and apply a GPU host's inference setup with gpu-provision
version_added: "0.1.0"
description:
  - Runs the gpu-provision tool installed on the target. The host probes its own GPUs (or reads
    a recorded rig snapshot) and plans for them; every decision is the tool's, with its reasons.
  - O(state=applied) changes the host to the plan (C(provision apply)), but only when
    C(provision diff) shows changes pending, so a second run reports no change.
  - O(state=planned) computes the plan and the pending changes and touches nothing; the task
    never reports C(changed), so Ansible shows no diff for it (use C(--check --diff) with
    O(state=applied) to see the diffs).
  - In check mode C(provision diff) runs instead of C(provision apply); the task reports
    C(changed) when changes are pending and writes nothing. A change apply would refuse (a
    file gpu-provision does not manage, without O(force)) fails the check as it would fail
    the run.
  - In diff mode the task returns each file's text before and after, in Ansible's diff shape,
    so C(ansible-playbook --check --diff) shows them.
  - The plan's warnings become Ansible warnings.
  - A failed apply is restored from its backup by the tool (exit status 4) and reported as
    failed with RV(rolled_back=true) and the tool's reason.
author:
  - gpu-provision contributors (@gpu-provision)
extends_documentation_fragment:
  - action_common_attributes
  - gpu_provision.fleet.tool
options:
  profile:
    description:
      - The workload profile document (runtime, models, context, listen address), inline.
      - Mutually exclusive with O(profile_path).
    type: dict
  profile_path:
    description:
      - A profile file on the target, or the name of a profile bundled with the tool
        (for example C(ollama-auto)).
      - Without O(profile) or O(profile_path) the tool's default profile is used.
    type: str
  rig:
    description:
      - A recorded rig snapshot (YAML or JSON) on the target, read instead of probing the GPUs.
      - Mutually exclusive with O(rig_content).
    type: path
  rig_content:
    description:
      - The text of a recorded rig snapshot, for example C(lookup('ansible.builtin.file', ...))
        of a file on the controller. Written to a temporary file on the target for the run.
      - Mutually exclusive with O(rig).
    type: str
  state:
    description:
      - V(applied) makes the host match the plan; V(planned) only plans and diffs.
    type: str
    choices: [applied, planned]
    default: applied
  allow_partial:
    description:
      - Plan even when a model cannot be placed (it is left out with a warning) instead of
        failing.
    type: bool
    default: false
  force:
    description:
      - Replace files that gpu-provision does not manage (they are backed up first).
    type: bool
    default: false
  root:
    description:
      - Operate on this directory tree instead of C(/), for an image or a chroot being
        prepared. Files are written under it and unit enablement goes through
        C(systemctl --root); restarts, power limits and model creation are skipped, as
        C(provision --root) does.
    type: path
    default: /
  check_timeout:
    description:
      - Seconds a restarted service has to be active and answer on its port.
    type: float
    default: 60
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
seealso:
  - module: gpu_provision.fleet.rig_facts
"""

EXAMPLES = r"""
- name: Show what would change (run with --check --diff)
  gpu_provision.fleet.provision:
    profile:
      runtime: ollama
      listen: {address: 127.0.0.1, port: 11434}
      models:
        - {ref: "llama3.1:8b", ctx: 8192, parallel: 1}

- name: Apply the bundled default profile
  gpu_provision.fleet.provision:
    profile_path: ollama-auto
    state: applied

- name: Plan for a recorded rig without touching the host
  gpu_provision.fleet.provision:
    profile_path: /etc/provision/profile.yaml
    rig: /etc/provision/rig.yaml
    state: planned
  register: plan

- name: Say where each model runs
  ansible.builtin.debug:
    msg: "{{ plan.plan.models | map(attribute='name') | list }}"
"""

RETURN = r"""
pending:
  description: Whether changes were pending when the task started (C(provision diff) exit 1).
  returned: when the tool made the plan
  type: bool
  sample: true
summary:
  description: The tool's one-line summary of the pending changes.
  returned: when the tool made the plan
  type: str
  sample: "9 change(s) pending: 5 write-file, 1 daemon-reload, 1 restart, 1 pull-model"
actions:
  description: The actions the plan would take (or took), in order, each with its reason.
  returned: when the tool made the plan
  type: list
  elements: dict
  sample: [{"kind": "write-file", "target": "/etc/provision/modelfiles/x.Modelfile",
            "reason": "missing"}]
plan:
  description: The plan as C(provision plan --json) prints it (instances, models, reasons).
  returned: when the tool made the plan
  type: dict
done:
  description: The actions apply carried out.
  returned: when state is applied, changes were pending and not in check mode
  type: list
  elements: dict
backup:
  description: The backup apply made (C(provision rollback --to BACKUP) undoes the change).
  returned: when apply changed the host
  type: str
  sample: "20261203T101500Z"
rolled_back:
  description: Whether apply failed and the tool restored the host from its backup.
  returned: always
  type: bool
  sample: false
error:
  description: The tool's C(error:) text when it failed.
  returned: failure
  type: str
hint:
  description: The tool's C(hint:) text (null when it gave none), its flags named as this
    module's options.
  returned: failure
  type: str
rc:
  description: The tool's exit status when it failed.
  returned: failure
  type: int
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpu_provision.fleet.plugins.module_utils.tool import (
    HOST_ERROR,
    OK,
    PENDING,
    ROLLED_BACK,
    ansible_diffs,
    error_result,
    find_tool,
    run_json,
)


def _write(module, name, text):
    path = os.path.join(module.tmpdir, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def _inputs(module):
    """The arguments every command of the tool gets (rig, profile, partial placement, root),
    and what to call the temporary files of inline inputs in messages."""
    params = module.params
    args, names = [], []
    if params["rig_content"] is not None:
        path = _write(module, "rig.yaml", params["rig_content"])
        args += ["--rig", path]
        names.append((path, "rig_content (inline)"))
    elif params["rig"]:
        args += ["--rig", params["rig"]]
    if params["profile"] is not None:
        # JSON is YAML: the tool reads the document as it would a profile file, and an error
        # names a line of this text
        text = json.dumps(params["profile"], indent=2, sort_keys=True) + "\n"
        path = _write(module, "profile.yaml", text)
        args += ["--profile", path]
        names.append((path, "profile (inline)"))
    elif params["profile_path"]:
        args += ["--profile", params["profile_path"]]
    if params["allow_partial"]:
        args.append("--allow-partial")
    return args + ["--root", params["root"]], names


def _refusals(actions, force):
    """What apply would refuse to do (as the tool decides it: change/apply.py)."""
    return [
        a["refused"] for a in actions if a.get("refused") and not (force and a.get("forceable"))
    ]


def _apply(module, tool, inputs, names, result):
    argv = [tool, "apply", "--yes", "--json", "--check-timeout", str(module.params["check_timeout"])]
    if module.params["force"]:
        argv.append("--force")
    rc, out, err = module.run_command(argv + inputs, environ_update={"LANG": "C.UTF-8"})
    if rc == ROLLED_BACK:
        failure = error_result(rc, err, names)
        result.update(failure, rolled_back=True, stderr=err)
        result["msg"] = "apply failed and was rolled back: " + failure["msg"]
        module.fail_json(**result)
    if rc != OK:
        result.update(error_result(rc, err, names), stderr=err)
        module.fail_json(**result)
    outcome = module.from_json(out)
    result.update(changed=bool(outcome["changed"]), done=outcome["done"])
    result.update(backup=outcome["backup"], summary=outcome["summary"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            profile=dict(type="dict"),
            profile_path=dict(type="str"),
            rig=dict(type="path"),
            rig_content=dict(type="str"),
            state=dict(type="str", choices=["applied", "planned"], default="applied"),
            allow_partial=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            root=dict(type="path", default="/"),
            check_timeout=dict(type="float", default=60),
            executable=dict(type="str", default="provision"),
        ),
        mutually_exclusive=[("profile", "profile_path"), ("rig", "rig_content")],
        supports_check_mode=True,
    )
    not_applied = {"rolled_back": False}
    tool = find_tool(module, module.params["executable"], failed=not_applied)
    inputs, names = _inputs(module)
    plan = run_json(
        module, [tool, "plan", "--json"] + inputs, failed=not_applied, replace=names
    )[1]
    rc, diff, _stderr = run_json(
        module,
        [tool, "diff", "--json"] + inputs,
        ok=(OK, PENDING),
        failed=not_applied,
        replace=names,
    )
    for warning in plan.get("warnings", []):
        module.warn(warning)
    pending = rc == PENDING
    result = dict(
        changed=False,
        pending=pending,
        summary=diff["summary"],
        actions=diff["actions"],
        plan=plan,
        rolled_back=False,
    )
    if module._diff:
        result["diff"] = ansible_diffs(diff["files"])
    if module.params["state"] == "applied" and pending:
        if module.check_mode:
            refused = _refusals(diff["actions"], module.params["force"])
            if refused:  # the real run would stop there: say so now, not after the check
                more = " (and %d more)" % (len(refused) - 1) if len(refused) > 1 else ""
                result.update(rc=HOST_ERROR, error=refused[0], hint="force: true replaces it")
                module.fail_json(msg="apply would refuse: %s%s" % (refused[0], more), **result)
            result["changed"] = True
        else:
            _apply(module, tool, inputs, names, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
