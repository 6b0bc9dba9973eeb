"""The one judgement every mode calls, in two phases.

* Gathering (mode-specific): which objects and which caller a request is about. The proxy's
  is ``gathering.Judge.judge`` (the old object read as the caller, the new one computed);
  the webhook reads them from its AdmissionReview.
* Deciding (shared, ``deciding``): ``Judge.decide(Subject, Caller) -> Verdict`` runs the
  engine on the operation's inputs and every consequence check.

No mitmproxy here: the proxy, the gateway and the webhook act on the verdict.
"""

from klockproxy.judge.deciding import (
    LABEL_SUBRESOURCES,
    MAX_NAMED_OBJECTS,
    Caller,
    Decider,
    Lookups,
    Subject,
    Verdict,
    covers_or_consequences,
    has_delete_locks,
    is_crd_delete,
    is_namespace_delete,
    needs_judgement,
    orphans,
)
from klockproxy.judge.gathering import Body, Judge, query_pairs, write_path

__all__ = [
    "LABEL_SUBRESOURCES",
    "MAX_NAMED_OBJECTS",
    "Body",
    "Caller",
    "Decider",
    "Judge",
    "Lookups",
    "Subject",
    "Verdict",
    "covers_or_consequences",
    "has_delete_locks",
    "is_crd_delete",
    "is_namespace_delete",
    "needs_judgement",
    "orphans",
    "query_pairs",
    "write_path",
]
