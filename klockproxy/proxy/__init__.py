"""The mitmproxy side: the addon, the lean TLS tweaks, local mode (``serve``) and the gateway.

Everything that imports mitmproxy lives here; it calls the judge for every covered request.
"""
