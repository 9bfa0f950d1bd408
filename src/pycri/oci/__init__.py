"""OCI runtime specs from CRI configs, one module per job.

``sandbox_spec`` and ``container_spec`` build the two documents from the pieces: ``process``
(argv, env, cwd, rlimits), ``users`` (USER resolution), ``capabilities``, ``mounts``,
``devices``, ``resources``, ``validation`` (paths a request names) and ``common``
(annotations, masked paths, namespaces); ``host`` reads what the host lets runc do.
"""
