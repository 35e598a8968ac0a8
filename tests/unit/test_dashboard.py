"""The Grafana dashboard is valid and queries only metrics slurmft exports."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest

from slurmft.observe import metrics

DASHBOARD = files("slurmft") / "templates" / "grafana-dashboard.json"   # package data
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, ranges, groupings, calls removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                       # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                                # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                               # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)                                    # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        name, call = match.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_name_parser():
    expr = ('histogram_quantile(0.95, sum by (le) (rate(slurmft_x_bucket{job="a b"}[5m]))) '
            '/ on (dir) group_left sum without (le) (other_metric offset 1h) > bool 2e3')
    assert metric_names(expr) == {"slurmft_x_bucket", "other_metric"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_schema(dashboard):
    assert dashboard["title"] and dashboard["uid"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "bargauge", "gauge", "table", "heatmap"}
        assert p["title"]
        pos = p["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"}
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        assert p["targets"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        assert all(t["expr"].strip() for t in p["targets"])


def test_dashboard_covers_the_issue(dashboard):
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needed in ("slurmft_checkpoint_age_seconds", "slurmft_reschedules_total",
                   "slurmft_node_health", "slurmft_detection_seconds_bucket",
                   "slurmft_recovery_seconds_bucket"):
        assert needed in exprs


def test_every_query_uses_exported_metrics(dashboard):
    exported = metrics.exported_names(metrics.build_metrics().registry)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
