"""Which security profile the CRI asks for: one answer from two generations of fields.

kubelet describes a seccomp or AppArmor profile in one of two ways, and may send both:

* the structured ``SecurityProfile`` message (``seccomp`` / ``apparmor`` in the Linux security
  contexts): ``RuntimeDefault``, ``Unconfined``, or ``Localhost`` with ``localhost_ref`` naming
  the profile (for seccomp an absolute file path, for AppArmor a profile name);
* the deprecated strings (``seccomp_profile_path`` / ``apparmor_profile``): ``runtime/default``,
  ``docker/default``, ``unconfined``, ``localhost/<ref>``, or empty.

:func:`requested_profile` folds them into one :class:`RequestedProfile`, or ``None`` when the CRI
set neither. The rules are containerd's (``generateSecurityProfile`` in its CRI plugin):

* The structured field wins whenever it is set; the string is then not even parsed, so a stale
  string next to a valid structure is harmless. (kubelet fills both with the same meaning.)
* Empty string: not set. ``runtime/default`` and ``docker/default``: RuntimeDefault.
  ``unconfined``: Unconfined. ``localhost/<ref>``: Localhost with ``<ref>``. Anything else, a bare
  path included, is refused: a typo must not silently run a container unconfined.
* A ``localhost_ref`` on a non-Localhost structure is refused, so is a Localhost without one. A
  ``localhost/`` prefix inside ``localhost_ref`` is dropped, as containerd does.

What a profile *means* (privileged containers, a kernel without seccomp or AppArmor, reading the
file) is decided by the seccomp and AppArmor modules; this one only parses. Errors are
:class:`pycri.errors.InvalidArgument` with a message meant for the CRI client.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument

__all__ = [
    "LOCALHOST_PREFIX",
    "ProfileKind",
    "RequestedProfile",
    "parse_profile_string",
    "requested_profile",
]

log = logging.getLogger(__name__)

LOCALHOST_PREFIX = "localhost/"
_RUNTIME_DEFAULT_STRINGS = frozenset({"runtime/default", "docker/default"})
_UNCONFINED_STRING = "unconfined"


class ProfileKind(enum.Enum):
    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


_KIND_OF_TYPE = {
    api_pb2.SecurityProfile.RuntimeDefault: ProfileKind.RUNTIME_DEFAULT,
    api_pb2.SecurityProfile.Unconfined: ProfileKind.UNCONFINED,
    api_pb2.SecurityProfile.Localhost: ProfileKind.LOCALHOST,
}


@dataclass(frozen=True)
class RequestedProfile:
    """A profile the CRI asked for. ``ref`` is set for (and only for) Localhost."""

    kind: ProfileKind
    ref: str = ""

    def __post_init__(self) -> None:
        if (self.kind is ProfileKind.LOCALHOST) != bool(self.ref):
            raise ValueError(f"a {self.kind.value} profile with ref {self.ref!r}")

    def __str__(self) -> str:
        return f"{LOCALHOST_PREFIX}{self.ref}" if self.ref else self.kind.value


RUNTIME_DEFAULT = RequestedProfile(ProfileKind.RUNTIME_DEFAULT)
UNCONFINED = RequestedProfile(ProfileKind.UNCONFINED)


def parse_profile_string(value: str, *, what: str) -> RequestedProfile | None:
    """The profile a deprecated string names; ``None`` for the empty string.

    ``what`` ("seccomp", "AppArmor") only words the error message.
    """
    if not value:
        return None
    if value in _RUNTIME_DEFAULT_STRINGS:
        return RUNTIME_DEFAULT
    if value == _UNCONFINED_STRING:
        return UNCONFINED
    if not value.startswith(LOCALHOST_PREFIX):
        raise InvalidArgument(
            f"invalid {what} profile {value!r}: expected runtime/default, docker/default, "
            f"unconfined or {LOCALHOST_PREFIX}<profile>"
        )
    ref = value.removeprefix(LOCALHOST_PREFIX)
    if not ref:
        raise InvalidArgument(f"invalid {what} profile {value!r}: nothing after {LOCALHOST_PREFIX}")
    return RequestedProfile(ProfileKind.LOCALHOST, ref)


def _from_message(profile: api_pb2.SecurityProfile, *, what: str) -> RequestedProfile:
    kind = _KIND_OF_TYPE.get(profile.profile_type)
    if kind is None:
        raise InvalidArgument(f"unknown {what} profile type {profile.profile_type}")
    ref = profile.localhost_ref
    if kind is not ProfileKind.LOCALHOST:
        if ref:
            raise InvalidArgument(
                f"{what} profile {kind.value} has localhost_ref {ref!r}: "
                "localhost_ref is only for Localhost profiles"
            )
        return RequestedProfile(kind)
    ref = ref.removeprefix(LOCALHOST_PREFIX)
    if not ref:
        raise InvalidArgument(f"{what} profile Localhost needs a localhost_ref")
    return RequestedProfile(kind, ref)


def _quiet_parse(value: str, *, what: str) -> RequestedProfile | None:
    try:
        return parse_profile_string(value, what=what)
    except InvalidArgument:
        return None


def requested_profile(
    structured: api_pb2.SecurityProfile | None, deprecated: str, *, what: str
) -> RequestedProfile | None:
    """The profile asked for by the structured field (if set) or else by the deprecated string.

    Pass ``None`` for ``structured`` when the message field is not set (``HasField`` is false):
    an unset message field reads as a default instance, which would mean RuntimeDefault.
    """
    if structured is not None:
        requested = _from_message(structured, what=what)
        if deprecated and _quiet_parse(deprecated, what=what) != requested:
            log.debug(
                "%s: structured profile %s wins over the deprecated string %r",
                what,
                requested,
                deprecated,
            )
        return requested
    return parse_profile_string(deprecated, what=what)
