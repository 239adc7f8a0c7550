"""Control loops: the git source, reconcilers, the manager."""
