"""The pure core of klockproxy.

Nothing here imports mitmproxy, the kubernetes client, aiohttp or any adapter: the rule is
checked by the import-linter contract in pyproject.toml (run by tests/test_architecture.py).
Everything here is synchronous, deterministic and cheap, so the proxy, the webhook, the
sandbox and `klockproxy check` can all call it.
"""
