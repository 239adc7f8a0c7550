"""Chiffon: GitOps control loops for Ansible-managed homelabs.

This core package holds the shared adapters (settings, database, git); the
product's layers live in the repository's top-level folders and are mapped
into this namespace: ``chiffon.resources``, ``chiffon.controllers``,
``chiffon.agents`` and ``chiffon.api``.
"""

__version__ = "0.1.0"
