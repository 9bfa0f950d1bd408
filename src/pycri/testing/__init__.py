"""Support for pycri's tests, benchmarks and demos; not used by the daemon.

``images`` builds small OCI images (busybox, pause) from the host's busybox-static without a
registry (also behind ``pycri images build``, for nodes without registry access); ``push``
uploads an OCI layout to a registry, for the pull tests; ``registry`` runs local
docker-registry processes (plain, TLS, basic or token auth) for the pull tests and benchmark.
"""
