"""The docs stay true to the code: every config key and metric documented, links resolve."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pycri.config import default_toml
from pycri.metrics import LIVE_METRICS, Metrics

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"


def _table_rows(text: str, header: str) -> dict[str, list[str]]:
    """First-column code name → the row's cells, for the table whose header starts so."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([^`]+)`", cells[0])
        assert name is not None, f"first cell is not a `name`: {line}"
        rows[name.group(1)] = cells[1:]
    return rows


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value and (not prefix or prefix.startswith("runtimes.")):
            # tables ([registry], [runtimes.NAME]) are flattened; a leaf table stays one key
            keys.update(_flatten(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def test_every_config_key_is_in_the_table_with_its_default() -> None:
    defaults = _flatten(tomllib.loads(default_toml()))
    rows = _table_rows(OPERATIONS.read_text(), "| key | default | meaning |")
    missing = sorted(set(defaults) - set(rows))
    assert not missing, f"config keys missing from docs/operations.md: {missing}"
    stale = sorted(set(rows) - set(defaults))
    assert not stale, f"docs/operations.md lists keys pycri does not have: {stale}"
    for key, value in defaults.items():
        assert rows[key][0] == f"`{_toml(value)}`", f"default of {key} differs from the docs"
        assert rows[key][1], f"{key} has no meaning in the docs"


def test_every_metric_is_in_the_table() -> None:
    metrics = Metrics()
    for live in LIVE_METRICS:  # exposed once the daemon binds their readers
        metrics.bind(live.name, lambda: 0)
    body = metrics.render()
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M):
        # the library names a counter family without _total; its samples carry it
        exposed.add(f"{name}_total" if kind == "counter" and not name.endswith("_total") else name)
    rows = _table_rows(OPERATIONS.read_text(), "| metric | type | meaning |")
    missing = sorted(exposed - set(rows))
    assert not missing, f"metrics missing from docs/operations.md: {missing}"
    stale = sorted(set(rows) - exposed)
    assert not stale, f"docs/operations.md lists metrics pycri does not expose: {stale}"


def test_links_in_the_docs_point_into_the_repo() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text, f"{page.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_unit_file_runs_pycri_and_spares_the_shims() -> None:
    unit = (REPO / "contrib" / "systemd" / "pycri.service").read_text()
    assert "ExecStart=/opt/pycri/.venv/bin/pycri serve" in unit
    assert "KillMode=process" in unit and "Delegate=yes" in unit
    assert "contrib/systemd/pycri.service" in (REPO / "README.md").read_text()
