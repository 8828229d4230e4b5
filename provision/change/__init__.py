"""DesiredState vs the host -> Plan -> apply, backup, rollback: the change engine."""
