"""Federated wrappers (NVIDIA FLARE) around the same engine the centralised CLI uses.

client.py and site_config.py run at hospitals and never import server.py/jobs.py (server/admin side).
"""
