"""One place that imports containerd's generated protobuf modules under short names.

The modules are generated at set-up time from Debian's packaged .proto files (see
``scripts/gen_containerd_api.py``) into ``build/gen``, which the venv puts on ``sys.path``.
Nothing else in pycri imports the long ``github.com...`` paths, so a change of generator
or layout touches this file only.
"""

from __future__ import annotations

from github.com.containerd.cgroups.stats.v1 import metrics_pb2 as cgroups_v1
from github.com.containerd.cgroups.v2.stats import metrics_pb2 as cgroups_v2
from github.com.containerd.containerd.api.events import (
    image_pb2 as image_events,
)
from github.com.containerd.containerd.api.events import (
    task_pb2 as task_events,
)
from github.com.containerd.containerd.api.services.containers.v1 import (
    containers_pb2 as containers,
)
from github.com.containerd.containerd.api.services.content.v1 import (
    content_pb2 as content,
)
from github.com.containerd.containerd.api.services.diff.v1 import (
    diff_pb2 as diff,
)
from github.com.containerd.containerd.api.services.events.v1 import (
    events_pb2 as events,
)
from github.com.containerd.containerd.api.services.images.v1 import (
    images_pb2 as images,
)
from github.com.containerd.containerd.api.services.introspection.v1 import (
    introspection_pb2 as introspection,
)
from github.com.containerd.containerd.api.services.leases.v1 import (
    leases_pb2 as leases,
)
from github.com.containerd.containerd.api.services.namespaces.v1 import (
    namespace_pb2 as namespaces,
)
from github.com.containerd.containerd.api.services.snapshots.v1 import (
    snapshots_pb2 as snapshots,
)
from github.com.containerd.containerd.api.services.tasks.v1 import (
    tasks_pb2 as tasks,
)
from github.com.containerd.containerd.api.services.version.v1 import (
    version_pb2 as version,
)
from github.com.containerd.containerd.api.types import (
    descriptor_pb2 as descriptor,
)
from github.com.containerd.containerd.api.types import (
    metrics_pb2 as types_metrics,
)
from github.com.containerd.containerd.api.types import (
    mount_pb2 as mount,
)
from github.com.containerd.containerd.api.types.task import (
    task_pb2 as task_types,
)
from github.com.containerd.containerd.runtime.v2.runc.options import (
    oci_pb2 as runc_options,
)

__all__ = [
    "cgroups_v1",
    "cgroups_v2",
    "containers",
    "content",
    "descriptor",
    "diff",
    "events",
    "image_events",
    "images",
    "introspection",
    "leases",
    "mount",
    "namespaces",
    "runc_options",
    "snapshots",
    "task_events",
    "task_types",
    "tasks",
    "types_metrics",
    "version",
]
