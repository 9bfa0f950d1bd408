"""Security profiles for containers: seccomp filters and AppArmor profiles.

* :mod:`pycri.security.profiles` reads the CRI's profile fields (the structured ``SecurityProfile``
  and the deprecated path strings) into one :class:`~pycri.security.profiles.RequestedProfile`.
* :mod:`pycri.security.seccomp` turns that into the OCI ``linux.seccomp`` object; pycri's own
  default filter lives in :mod:`pycri.security.seccomp_default`.
* :mod:`pycri.security.apparmor` turns it into the OCI ``process.apparmorProfile`` name, and loads
  pycri's own default AppArmor profile when a container asks for it.
* :mod:`pycri.security.node` reports what this node's kernel offers, for ``pycri check`` and the
  CRI ``Status`` call.

See ``docs/security.md`` for the rules and the reasons behind them.
"""
