"""A container's process: its argv, environment, working directory and limits, by the Docker
rules kubelet relies on.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence

from cri_api.v1 import api_pb2

from pycri.images.model import ImageConfig
from pycri.oci.common import JsonDict
from pycri.oci.host import HostFeatures

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_NOFILE_LIMIT = 1048576


def process_args(*, command: Sequence[str], args: Sequence[str], image: ImageConfig) -> list[str]:
    """The argv of a container, by the Docker rules kubelet relies on.

    A CRI ``command`` replaces the image's ENTRYPOINT and drops its CMD; CRI ``args`` replace the
    image's CMD. So: command given → command + args; only args → ENTRYPOINT + args; neither →
    ENTRYPOINT + CMD. An ENTRYPOINT of one empty string is Docker's way of clearing it.
    """
    if command:
        argv = [*command, *args]
    else:
        entrypoint = [] if list(image.entrypoint) == [""] else list(image.entrypoint)
        argv = [*entrypoint, *(args or image.cmd)]
    if not argv:
        raise ValueError("no command specified: neither the container config nor the image has one")
    return argv


def merge_env(*layers: Iterable[str]) -> list[str]:
    """Merge ``KEY=value`` lists; a later layer's key replaces the earlier value in place."""
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            key, _, _ = entry.partition("=")
            merged[key] = entry
    return list(merged.values())


def container_env(
    config: api_pb2.ContainerConfig, *, hostname: str, image: ImageConfig
) -> list[str]:
    for env in config.envs:
        if not env.key or "=" in env.key:
            raise ValueError(f"invalid environment variable name {env.key!r}")
    # HOSTNAME first so that the image or the pod spec can still override it.
    hostname_env = [f"HOSTNAME={hostname}"] if hostname else []
    return merge_env(
        [DEFAULT_PATH_ENV],
        hostname_env,
        image.env,
        (f"{env.key}={env.value}" for env in config.envs),
    )


def working_dir(config_dir: str, image_dir: str) -> str:
    if config_dir:
        if not posixpath.isabs(config_dir):
            raise ValueError(f"working_dir {config_dir!r} is not an absolute path")
        return config_dir
    if image_dir:
        # Images built by old tools may carry a relative WORKDIR; Docker anchors it at /.
        return image_dir if posixpath.isabs(image_dir) else "/" + image_dir
    return "/"


def rlimits(host: HostFeatures) -> list[JsonDict]:
    nofile = DEFAULT_NOFILE_LIMIT
    if host.nofile_hard_limit is not None:
        # Raising a hard limit needs CAP_SYS_RESOURCE; asking for more than the runtime has makes
        # runc fail at start.
        nofile = min(nofile, host.nofile_hard_limit)
    return [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]


def oom_score_adj(requested: int, *, current: int) -> int:
    # Lowering oom_score_adj below the parent's needs CAP_SYS_RESOURCE, which this machine drops;
    # runc then fails with a misleading error, so ask for no less than what we have.
    return max(requested, current)
