"""The ``pycri`` command line: serve, config default, check, images import."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycri import __version__
from pycri.config import DEFAULT_CONFIG_PATH, Config, ConfigError, default_toml, load


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help=f"TOML file ({DEFAULT_CONFIG_PATH})")
    p.add_argument("--root", help="persistent data dir (/var/lib/pycri)")
    p.add_argument("--state", help="volatile state dir (/run/pycri)")
    p.add_argument("--containerd-address", help="use this containerd instead of a managed one")
    p.add_argument("--cgroup-parent", help="cgroup of pods that name none (/pycri)")
    p.add_argument("--log-format", choices=("text", "json"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _add_cni(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cni-conf-dir", help="CNI network config dir (/etc/cni/net.d)")
    p.add_argument(
        "--cni-bin-dir",
        dest="cni_bin_dirs",
        action="append",
        help="CNI plugin dir, repeatable, searched in order (/opt/cni/bin, /usr/lib/cni)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pycri", description="CRI v1 runtime over containerd")
    top.add_argument("--version", action="version", version=f"pycri {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the CRI daemon")
    _add_common(serve)
    serve.add_argument("--socket", help="CRI socket (/run/pycri/pycri.sock)")
    serve.add_argument("--sandbox-image", help="pause image reference")
    serve.add_argument("--metrics-address", help="host:port for Prometheus metrics")
    _add_cni(serve)
    serve.add_argument(
        "--enable-fault-injection",
        action="store_true",
        default=None,
        help="honour pycri.faults/* labels (tests only)",
    )

    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("default", help="print the full default config")

    check = sub.add_parser("check", help="check this node for what pycri needs")
    _add_common(check)
    _add_cni(check)
    check.add_argument(
        "--orphans", action="store_true", help="list leftovers that belong to no pod/container"
    )

    gc = sub.add_parser("gc", help="remove leftovers that belong to no pod or container")
    _add_common(gc)

    images = sub.add_parser("images", help="image helpers")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    imp = images_sub.add_parser("import", help="import an OCI or docker-archive tarball")
    _add_common(imp)
    imp.add_argument("tarball", type=Path)
    imp.add_argument("--name", action="append", default=[], help="extra reference to tag")
    build = images_sub.add_parser(
        "build",
        help="build a busybox or pause image tarball from the host's busybox-static "
        "(for nodes without registry access)",
    )
    build.add_argument("kind", choices=("busybox", "pause"))
    build.add_argument("tarball", type=Path, help="where to write the OCI layout tarball")
    build.add_argument("--ref", help="image reference (default: the usual busybox/pause name)")
    return top


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "root",
        "state",
        "containerd_address",
        "log_format",
        "log_level",
        "socket",
        "sandbox_image",
        "metrics_address",
        "cni_conf_dir",
        "cni_bin_dirs",
        "enable_fault_injection",
        "cgroup_parent",
    )
    return {k: getattr(args, k, None) for k in keys}


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return load(path, _overrides(args))


def _build_image(kind: str, tarball: Path, *, ref: str | None) -> int:
    from pycri.testing import images

    build = images.build_busybox_image if kind == "busybox" else images.build_pause_image
    try:
        built = build(tarball, ref=ref) if ref else build(tarball)
    except OSError as err:
        print(f"pycri: building the {kind} image failed: {err}", file=sys.stderr)
        return 1
    print(f"built {built.ref} into {tarball}: image {built.image_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "config":
        sys.stdout.write(default_toml())
        return 0
    if args.command == "images" and args.images_command == "build":
        return _build_image(args.kind, args.tarball, ref=args.ref)
    try:
        config = _load(args)
    except ConfigError as err:
        print(f"pycri: {err}", file=sys.stderr)
        return 2
    from pycri import log

    log.setup(fmt=config.log_format, level=config.log_level)
    if args.command == "gc" or (args.command == "check" and args.orphans):
        from pycri import gc

        return asyncio.run(gc.run(config, remove=args.command == "gc"))
    if args.command == "check":
        from pycri.check import report, run_checks

        text, ok = report(run_checks(config))
        print(text)
        return 0 if ok else 1
    if args.command == "images":
        from pycri.images.importer import import_tarball_cli

        return asyncio.run(import_tarball_cli(config, args.tarball, extra_names=args.name))
    from pycri.daemon import serve

    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except Exception as err:
        print(f"pycri: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
