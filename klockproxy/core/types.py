"""Plain value types shared by the core and every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Operation(StrEnum):
    """Admission operations, as Klock (and the API server's admission chain) names them."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    CONNECT = "CONNECT"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who is calling, as the API server would authenticate (or impersonate) them."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """An API resource: ``("apps", "v1", "deployments", "scale")``. Core group is ``""``."""

    group: str
    version: str
    resource: str
    subresource: str = ""

    @property
    def group_resource(self) -> str:
        """``deployments.apps`` / ``pods``: the way Status details and RBAC name it."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


@dataclass(frozen=True, slots=True)
class AdmissionInput:
    """Everything the decision engine needs to judge one operation on one object.

    ``old_labels`` is None when there is no old object (CREATE), ``new_labels`` is None when
    there is no new object (DELETE, CONNECT). For a subresource (scale, status, eviction,
    exec...) the labels are the parent object's.
    """

    operation: Operation
    namespace: str
    resource: ResourceRef
    name: str
    user: UserInfo
    old_labels: Mapping[str, str] | None = None
    new_labels: Mapping[str, str] | None = None
    dry_run: bool = False
    kind: str = ""
