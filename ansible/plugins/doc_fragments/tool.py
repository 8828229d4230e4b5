# Copyright: gpu-provision contributors
# MIT License (see LICENSE in the collection)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """What every module that runs the installed gpu-provision shares: where it finds it."""

    DOCUMENTATION = r"""
options:
  executable:
    description:
      - The gpu-provision command on the target, as a path or as a name looked up in
        C(/opt/provision/bin) and C(/usr/local/bin), then on E(PATH).
    type: str
    default: provision
attributes:
  platform:
    platforms: posix
notes:
  - The tool must be installed on the target first; the P(gpu_provision.fleet.host#role) role
    does that.
"""
