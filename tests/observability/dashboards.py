"""The chart's Grafana dashboards and the PromQL in them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .tools import REPO

DASHBOARD_DIR = REPO / "charts" / "kubemoe" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
# Wide enough to include the hot phase of the live test, so its counters (deadlines, agent errors) have rates.
RATE_INTERVAL = "2m"
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends with every variable at All (`.*`, the dashboards' allValue)."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL)
    return re.sub(r"\$\{?(\w+)\}?", ".*", out)


def panel_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"], f"panel {panel['title']!r} {target['refId']}"


def variable_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(metric selector, label, variable name) of each label_values() variable."""
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        assert m, f"variable {var['name']}: not a label_values() query: {query}"
        yield m.group(1), m.group(2), var["name"]
