"""What this node offers for security profiles: seccomp filters, AppArmor, runc's libseccomp.

:func:`probe_node_security` reads it once at start-up (a few small files, no subprocess) into a
:class:`NodeSecurity`, which then feeds three consumers:

* the resolution code: :meth:`NodeSecurity.seccomp_settings` and ``NodeSecurity.apparmor``;
* ``pycri check``: :meth:`NodeSecurity.check_lines` gives ``(ok, what, fix)`` triples, the shape
  of ``pycri.check.Finding``; a missing AppArmor is not a failure (it is optional), missing
  seccomp filters or a missing parser on an AppArmor kernel are;
* the CRI ``Status`` call: :meth:`NodeSecurity.runtime_condition` (an extra ``SeccompReady``
  condition, which kubelet ignores but ``crictl info`` shows) and :meth:`NodeSecurity.info`
  (a JSON-ready dict for the verbose ``info`` map).

How seccomp support is told: ``/proc/self/status`` has a ``Seccomp:`` line only with
``CONFIG_SECCOMP``, and a ``Seccomp_filters:`` line only with ``CONFIG_SECCOMP_FILTER`` (Linux
5.9 and later). On an older kernel without that line, ``prctl(PR_SET_SECCOMP,
SECCOMP_MODE_FILTER, NULL)`` tells: ``EFAULT`` (it tried to read the filter) means filters are
supported, ``EINVAL`` means not. The probe installs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cri_api.v1 import api_pb2

from pycri.security.apparmor import AppArmorHost, probe_apparmor
from pycri.security.seccomp import SeccompSettings

__all__ = [
    "SECCOMP_CONDITION",
    "NodeSecurity",
    "probe_node_security",
    "probe_runc_libseccomp",
    "runc_check_line",
    "seccomp_filter_by_prctl",
]

SECCOMP_CONDITION = "SeccompReady"

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_LIBSECCOMP_LINE = re.compile(r"^libseccomp:\s*(\S+)", re.MULTILINE)


@dataclass(frozen=True, kw_only=True)
class NodeSecurity:
    """The kernel's seccomp and AppArmor support, as pycri sees it from its own process."""

    seccomp: bool = False  # CONFIG_SECCOMP
    seccomp_filter: bool = False  # CONFIG_SECCOMP_FILTER: what runc needs
    # pycri's own seccomp mode (0 none, 2 filtered: pycri itself runs in a container).
    own_seccomp_mode: int | None = None
    apparmor: AppArmorHost = field(default_factory=AppArmorHost)

    def seccomp_settings(self, *, unset_profile: str = "") -> SeccompSettings:
        return SeccompSettings(kernel_supported=self.seccomp_filter, unset_profile=unset_profile)

    def check_lines(self) -> list[tuple[bool, str, str]]:
        """``(ok, what, fix)`` for ``pycri check``."""
        lines = []
        if self.seccomp_filter:
            lines.append((True, "kernel seccomp filters (RuntimeDefault and Localhost work)", ""))
        else:
            missing = "seccomp filters" if self.seccomp else "seccomp"
            lines.append(
                (
                    False,
                    f"kernel {missing}: missing (RuntimeDefault containers run unfiltered, "
                    "Localhost seccomp profiles are refused)",
                    "a kernel with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
                )
            )
        if not self.apparmor.kernel_enabled:
            lines.append(
                (
                    True,
                    "AppArmor: not enabled in the kernel (RuntimeDefault skipped, Localhost "
                    "AppArmor profiles refused)",
                    "",
                )
            )
        elif self.apparmor.parser:
            lines.append((True, f"AppArmor: enabled, parser {self.apparmor.parser}", ""))
        else:
            lines.append(
                (
                    False,
                    "AppArmor: enabled but apparmor_parser is missing (containers asking for "
                    "RuntimeDefault fail to be created)",
                    "apt-get install apparmor",
                )
            )
        return lines

    def summary(self) -> str:
        """One line for humans: a Status message, a log line at start-up."""
        if self.seccomp_filter:
            seccomp = "seccomp filters available"
        elif self.seccomp:
            seccomp = "seccomp without filter support"
        else:
            seccomp = "no seccomp"
        if not self.apparmor.kernel_enabled:
            apparmor = "AppArmor not enabled"
        elif self.apparmor.parser:
            apparmor = "AppArmor enabled"
        else:
            apparmor = "AppArmor enabled, apparmor_parser missing"
        return f"{seccomp}; {apparmor}"

    def runtime_condition(self) -> api_pb2.RuntimeCondition:
        """An extra Status condition: true when seccomp profiles can be enforced."""
        if self.seccomp_filter:
            return api_pb2.RuntimeCondition(
                type=SECCOMP_CONDITION, status=True, message=self.summary()
            )
        return api_pb2.RuntimeCondition(
            type=SECCOMP_CONDITION,
            status=False,
            reason="KernelWithoutSeccompFilters",
            message=self.summary(),
        )

    def info(self) -> dict[str, Any]:
        """JSON-ready facts for ``StatusResponse.info`` (verbose)."""
        return {
            "seccomp": self.seccomp,
            "seccompFilter": self.seccomp_filter,
            "ownSeccompMode": self.own_seccomp_mode,
            "apparmorEnabled": self.apparmor.kernel_enabled,
            "apparmorParser": self.apparmor.parser,
        }


def seccomp_filter_by_prctl() -> bool:
    """Ask the kernel whether it has seccomp filters (see the module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, None, 0, 0)
    return result == -1 and ctypes.get_errno() == errno.EFAULT


def _status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def probe_node_security(
    *,
    status_path: str = "/proc/self/status",
    filter_probe: Callable[[], bool] = seccomp_filter_by_prctl,
    apparmor: AppArmorHost | None = None,
) -> NodeSecurity:
    """Read :class:`NodeSecurity` from this process's status and sysfs.

    ``filter_probe`` is asked only on kernels too old to print ``Seccomp_filters``;
    ``apparmor`` defaults to :func:`pycri.security.apparmor.probe_apparmor`.
    """
    with open(status_path, encoding="ascii", errors="replace") as status:
        fields = _status_fields(status.read())
    mode_text = fields.get("Seccomp")
    seccomp = mode_text is not None
    if not seccomp:
        seccomp_filter = False
    elif "Seccomp_filters" in fields:
        seccomp_filter = True
    else:
        seccomp_filter = filter_probe()
    own_mode = int(mode_text) if mode_text is not None and mode_text.isdigit() else None
    return NodeSecurity(
        seccomp=seccomp,
        seccomp_filter=seccomp_filter,
        own_seccomp_mode=own_mode,
        apparmor=apparmor if apparmor is not None else probe_apparmor(),
    )


def probe_runc_libseccomp(runc: str, *, timeout: float = 10.0) -> str | None:
    """The libseccomp version runc was built with (``runc --version``), or ``None`` if runc
    has no seccomp support (then every filtered container fails to start) or cannot run.

    A subprocess: for ``pycri check``, not for the daemon's hot paths.
    """
    try:
        out = subprocess.run(
            [runc, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _LIBSECCOMP_LINE.search(out.stdout)
    return match.group(1) if match else None


def runc_check_line(runc: str) -> tuple[bool, str, str]:
    """``(ok, what, fix)`` for ``pycri check``: whether runc can install seccomp filters."""
    version = probe_runc_libseccomp(runc)
    if version:
        return (True, f"runc built with libseccomp {version}", "")
    return (
        False,
        f"runc ({runc}) reports no libseccomp: containers with a seccomp profile will not start",
        "install a runc built with seccomp support (Debian's runc is)",
    )
