"""Webhook mode: the same Locks enforced by a validating admission webhook (``klockproxy webhook``).

``review`` parses AdmissionReview v1 and maps it to the judge's ``Subject``; ``server`` is the
aiohttp HTTPS server (``POST /validate``); ``certs`` keeps the serving certificate and its CA in
a Secret and injects the CA into the ValidatingWebhookConfiguration; ``command`` is the CLI.
"""
