"""Provisioning: bring every node of the inventory to a known state over SSH.

facts (one script per host, parsed by pure functions) → a host plan (pure: the
role's steps with their desired state, ``plan.py``) → probes (one script per
host) decide it: a typed change or an "ok, because" per step → apply → recap.
Only ``ssh.py`` imports Fabric/paramiko.
"""
