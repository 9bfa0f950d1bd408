"""Generate Python stubs for containerd's gRPC API from Debian's packaged .proto files.

Run with the project venv's python (it needs grpcio-tools). It is idempotent: it does
nothing when the output already carries a stamp for the same inputs.

The .proto files come from Debian's ``golang-github-containerd-containerd-dev`` and
``golang-github-gogo-protobuf-dev`` packages, fetched with ``apt-get download`` and
unpacked with ``dpkg -x`` into a build folder -- never installed, never committed.

Only message modules (``*_pb2.py`` + ``*_pb2.pyi``) are generated: pycri's typed client
calls the services through ``grpc.aio`` multi-callables built from the method paths, so
no untyped ``*_pb2_grpc`` modules are needed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "golang-github-containerd-containerd-dev",
    "golang-github-gogo-protobuf-dev",
    "golang-github-containerd-cgroups-dev",  # task metrics (cgroups v1 and v2 stats)
)
GOCODE = Path("usr/share/gocode/src")
CONTAINERD = Path("github.com/containerd/containerd")
# The .proto files pycri uses, relative to the gocode src root.
PROTO_GLOBS = (
    "github.com/containerd/containerd/api/types/*.proto",
    "github.com/containerd/containerd/api/types/task/*.proto",
    "github.com/containerd/containerd/api/services/*/v1/*.proto",
    "github.com/containerd/containerd/api/events/*.proto",
    "github.com/containerd/containerd/protobuf/plugin/fieldpath.proto",
    "github.com/containerd/containerd/runtime/v2/runc/options/oci.proto",
    "github.com/containerd/cgroups/stats/v1/metrics.proto",
    "github.com/containerd/cgroups/v2/stats/metrics.proto",
)
STAMP = ".pycri-stamp"


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "build").resolve()
    debs, tree, out = root / "debs", root / "proto", root / "gen"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        download = ["apt-get", "-o", "APT::Sandbox::User=root", "download", *missing]
        if subprocess.run(download, cwd=debs, check=False, stdout=subprocess.DEVNULL).returncode:
            # No package lists yet (a new machine whose packages were all present): fetch them.
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(download, cwd=debs, check=True, stdout=subprocess.DEVNULL)
    deb_files = sorted(debs.glob("*.deb"))
    digest = hashlib.sha256(b"v2" + b"".join(p.name.encode() for p in deb_files)).hexdigest()
    if (out / STAMP).exists() and (out / STAMP).read_text() == digest:
        return 0
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    for deb in deb_files:
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
    src = tree / GOCODE
    gogo_root = src / "github.com/gogo/protobuf"
    protos = sorted({p for g in PROTO_GLOBS for p in glob.glob(g, root_dir=src)})
    # The ttrpc events service duplicates the gRPC one under the same package name.
    protos = [p for p in protos if "/ttrpc/" not in p]

    import google.rpc.status_pb2
    import grpc_tools

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    gapi = Path(google.rpc.status_pb2.__file__).parents[2]
    out.mkdir(parents=True)
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{gogo_root}",
        f"-I{wkt}",
        f"-I{gapi}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        "gogoproto/gogo.proto",
        *protos,
    ]
    done = subprocess.run(args, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    # Make every generated directory a regular package so imports and mypy see them.
    for dirpath, _dirs, _files in os.walk(out):
        if Path(dirpath) == out:
            continue
        init = Path(dirpath) / "__init__.py"
        if not init.exists():
            init.touch()
    (out / STAMP).write_text(digest)
    print(f"generated {len(protos) + 1} containerd API modules into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
