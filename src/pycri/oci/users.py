"""Who a container's process runs as: the CRI security context and the image's USER,
resolved against the image's /etc/passwd and /etc/group text (the caller reads the files).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pycri.oci.common import JsonDict

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, so it is never a real id
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, kw_only=True)
class ProcessUser:
    """The identity a container's process runs as, already resolved against the image's files."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    # The passwd name of ``uid`` when the image has one; empty for an anonymous numeric uid.
    username: str = ""


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _parse_passwd(text: str) -> list[_PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        # Skip what libc skips too: comments, NIS "+" lines, short or non-numeric lines.
        if len(fields) < 4 or not fields[0] or fields[0][0] in "#+-":
            continue
        if not (_DIGITS.fullmatch(fields[2]) and _DIGITS.fullmatch(fields[3])):
            continue
        entries.append(_PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
    return entries


def _parse_group(text: str) -> list[_GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 3 or not fields[0] or fields[0][0] in "#+-":
            continue
        if not _DIGITS.fullmatch(fields[2]):
            continue
        members = (
            tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        )
        entries.append(_GroupEntry(fields[0], int(fields[2]), members))
    return entries


def _checked_id(value: int, *, what: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{what} {value} is out of range (0..{_MAX_ID})")
    return value


def resolve_user(
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: Sequence[int],
    passwd: str,
    group: str,
    strict_supplemental_groups: bool = False,
) -> ProcessUser:
    """Resolve who a container runs as, by the Docker/containerd rules.

    The CRI security context wins over the image's ``USER``: ``run_as_username`` or ``run_as_user``
    picks the user, ``run_as_group`` the primary group. Otherwise the image user applies, in one of
    the forms ``uid``, ``uid:gid``, ``name``, ``name:group`` (either side numeric or a name).
    A name must exist in ``passwd`` (the image's ``/etc/passwd`` text); a numeric uid need not, and
    then runs with gid 0 unless a group is given. With no group given the primary group is the
    passwd entry's. The additional groups are the primary group first (so dropping to them never
    loses it), then every group in ``group`` (the image's ``/etc/group`` text) that lists the user
    (unless ``strict_supplemental_groups``: the CRI "Strict" policy ignores the image's files), then
    ``supplemental_groups``; duplicates removed.

    Raises ``ValueError`` for an unknown user or group name, a group without a user (the CRI says
    the runtime must refuse it), both a uid and a username, and ids out of range.
    """
    if run_as_user is not None and run_as_username:
        raise ValueError(
            f"run_as_user ({run_as_user}) and run_as_username ({run_as_username!r}) are mutually "
            "exclusive"
        )
    if run_as_username:
        user_part, group_part = run_as_username, ""
    elif run_as_user is not None:
        user_part, group_part = str(_checked_id(run_as_user, what="run_as_user")), ""
    else:
        if run_as_group is not None:
            raise ValueError("run_as_group is set without run_as_user or run_as_username")
        user_part, _, group_part = image_user.partition(":")
    if run_as_group is not None:
        group_part = str(_checked_id(run_as_group, what="run_as_group"))

    passwd_entries = _parse_passwd(passwd)
    group_entries = _parse_group(group)

    # An empty user (no USER in the image, or USER ":gid") is root, as in Docker.
    user_part = user_part or "0"
    if _DIGITS.fullmatch(user_part):
        uid = _checked_id(int(user_part), what="uid")
        entry = next((e for e in passwd_entries if e.uid == uid), None)
        username = entry.name if entry else ""
        gid = entry.gid if entry else 0
    else:
        entry = next((e for e in passwd_entries if e.name == user_part), None)
        if entry is None:
            raise ValueError(f"user {user_part!r} not found in the image's /etc/passwd")
        uid, gid, username = entry.uid, entry.gid, entry.name

    if group_part:
        if _DIGITS.fullmatch(group_part):
            gid = _checked_id(int(group_part), what="gid")
        else:
            group_entry = next((g for g in group_entries if g.name == group_part), None)
            if group_entry is None:
                raise ValueError(f"group {group_part!r} not found in the image's /etc/group")
            gid = group_entry.gid

    additional = [gid]
    if username and not strict_supplemental_groups:
        additional.extend(g.gid for g in group_entries if username in g.members)
    additional.extend(_checked_id(g, what="supplemental group") for g in supplemental_groups)
    return ProcessUser(
        uid=uid, gid=gid, additional_gids=tuple(dict.fromkeys(additional)), username=username
    )


def user_json(user: ProcessUser) -> JsonDict:
    user_json: JsonDict = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        user_json["additionalGids"] = list(user.additional_gids)
    return user_json
