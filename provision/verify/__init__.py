"""`provision verify`: prove that a host is what the last apply's manifest says.

See docs/ARCHITECTURE.md §1 and §4.

- `checks`: the manifest -> the list of checks, each with a stable id `KIND:TARGET`, and the
  pure verdicts on what a check saw (`systemctl show`, `ss`, HTTP replies);
- `environment`: what systemd gives a service from its unit files and environment files;
- `suite`: the pytest-testinfra test module shipped in the package, parametrized with those
  checks (one test per check and host);
- `runner`: connects to the hosts, reads their manifests, runs the suite with pytest in-process
  and collects one result per check.
"""
