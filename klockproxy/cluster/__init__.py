"""The API-server side: the upstream client, identity, lock sources, kubeconfigs, certificates.

Everything here talks to (or describes) a Kubernetes API server. It builds on the pure core
and never imports the mitmproxy side, the webhook or the sandbox.
"""
