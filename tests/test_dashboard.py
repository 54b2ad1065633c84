"""The provisioned Grafana dashboard: valid JSON whose every query names a metric the services
export, so no panel stays empty because of a typo or a renamed metric."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from consumer.metrics import PipelineMetrics, TrainerMetrics

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = REPO_ROOT / "monitoring/grafana/dashboards/streamseg.json"
DATASOURCES = REPO_ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_series() -> set[str]:
    """Every series name the consumer and the trainer can expose, from their registries."""
    names: set[str] = set()
    for registry in (PipelineMetrics().registry, TrainerMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metrics_in(expr: str) -> set[str]:
    """The streamseg series a PromQL expression names."""
    return set(re.findall(r"\bstreamseg_[a-z_]+\b", expr))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return [p for p in panels if p.get("type") != "row"]


def test_every_panel_queries_metrics_the_services_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    panels = _panels(dashboard)
    assert panels
    used: set[str] = set()
    for panel in panels:
        exprs = [t["expr"] for t in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = metrics_in(expr)
            assert names, f"{panel['title']!r}: {expr!r} names no streamseg metric"
            unknown = names - exported
            assert not unknown, f"{panel['title']!r} queries unexported {sorted(unknown)}"
            used |= names
    # What the issue asks the dashboard to show.
    for wanted in (
        "streamseg_records_consumed_total",
        "streamseg_consumer_lag_records",
        "streamseg_produce_to_segment_seconds_bucket",
        "streamseg_records_dead_lettered_total",
        "streamseg_segment_users",
        "streamseg_model_version",
    ):
        assert wanted in used, f"the dashboard does not show {wanted}"


def test_panels_use_the_provisioned_datasource_and_have_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] in provisioned, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in provisioned, panel["title"]


ALERTS = REPO_ROOT / "monitoring/prometheus/alerts.yml"
PROMETHEUS = REPO_ROOT / "monitoring/prometheus/prometheus.yml"


def test_every_alert_parses_and_queries_metrics_the_services_export() -> None:
    """The shipped alert rules: valid PromQL (a typo would only show when Prometheus loads
    them), names the services export, and what an on-call person reads first."""
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    exported = exported_series()
    assert len(rules) >= 8
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        names = metrics_in(rule["expr"])
        assert not names - exported, f"{rule['alert']} queries unexported {names - exported}"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    used = set().union(*(metrics_in(rule["expr"]) for rule in rules))
    for wanted in (  # stuck, lagging, dead letters, Redis, trainer, stale model
        "streamseg_last_poll_timestamp_seconds",
        "streamseg_consumer_lag_records",
        "streamseg_records_dead_lettered_total",
        "streamseg_consumption_paused",
        "streamseg_trainer_lease_held",
        "streamseg_model_version",
    ):
        assert wanted in used, f"no alert watches {wanted}"


def test_prometheus_loads_the_alerts_that_compose_mounts() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./monitoring/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    # A rule about a job's absence must name a job this Prometheus scrapes, or it always fires.
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    named = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert named and named <= jobs


def test_every_dashboard_query_parses() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            # Grafana's $__rate_interval is not PromQL: give it a value as Grafana does.
            promql_parser.parse(target["expr"].replace("$__rate_interval", "1m"))
