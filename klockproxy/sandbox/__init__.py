"""The sandbox: an in-memory Kubernetes API server that real kubectl accepts.

Tests, benchmarks and ``klockproxy demo`` run on it. The proxy side never imports it
(import-linter contract in pyproject.toml).
"""
