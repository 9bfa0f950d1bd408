"""Benchmarks of CRI runtimes: pycri side by side with containerd's own CRI plugin.

The tool drives any CRI v1 endpoint over gRPC (unix socket) and checks what it measures:
every RPC must succeed, every container must reach the state and exit code it was built to
reach, and nothing may be left behind. ``python -m bench.run`` starts both daemons on this
machine, runs every scenario on each in turn, and writes ``bench/results/<date>.json`` plus a
Markdown report and PNG plots (see ``docs/benchmarks.md``).

Modules: ``stats`` (percentiles), ``cri`` (timed CRI client), ``specs`` (pod and container
configs), ``scenarios`` (lifecycle, exit-latency, hol, rss), ``daemons`` (starting pycri and
containerd-with-CRI, images, memory), ``profiling`` (py-spy), ``report`` (JSON → Markdown and
plots), ``run`` (the runner).
"""
