"""klockproxy: Klock-compatible Lock enforcement on the way to the Kubernetes API server."""

__version__ = "0.1.0"
