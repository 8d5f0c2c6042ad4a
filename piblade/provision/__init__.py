"""Provisioning: bring every node of the inventory to a known state over SSH.

facts (one script per host, parsed by pure functions) → role plans (pure lists
of steps) → probes (one script per host) → changes → apply → recap. Only
``ssh.py`` imports Fabric/paramiko.
"""
