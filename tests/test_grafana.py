"""The Grafana dashboard cannot rot: every metric its queries name is one buttress exports.

The exposition is scraped over HTTP from an app serving ``/metrics`` under uvicorn on 127.0.0.1,
after every policy took every kind of decision (``policy_workload.exercise``); metric names are
collected from it with their series suffixes (``_total``, ``_bucket``, ``_count``, ``_sum``), and
the metric names are parsed out of every PromQL expression of the dashboard (panel targets,
template variables, annotations).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

from buttress import ResilienceManager
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.testing import FakeClock
from policy_workload import exercise

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "buttress.json"
_n = itertools.count()

# PromQL words that are not metric names: aggregation modifiers, operators, vector matching.
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENT = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")  # not the tail of 5m or 1e3


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(word)
    return names


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (name, le) (rate(buttress_x_bucket{job=~"$job",'
        ' name="a b"}[$__rate_interval]))) / on (name) group_left max(up) > bool 0.5'
    )
    assert metric_names(expr) == {"buttress_x_bucket", "up"}
    expr = "changes(buttress_tier[1m]) > 1e3 unless absent(other_metric offset 5m)"
    assert metric_names(expr) == {
        "buttress_tier",
        "other_metric",
    }


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))

    walk(dashboard["panels"])
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        assert match, f"variable {variable['name']!r}: unparsed query {query!r}"
        out.append((f"variable {variable['name']!r}", match.group(1)))
    return out


def exported_names(text: str) -> set[str]:
    """Every metric and series name of an exposition."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum"))
    return names


@pytest.fixture(scope="module")
def exposition() -> str:
    """What a Prometheus scrape of a running app returns after the workload: buttress's own
    operator app (``ResilienceManager.asgi_app``) where buttress has one, else
    prometheus_client's app on the same registry."""
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry)
    try:
        with FakeClock() as clock:
            keep = exercise(f"grafana{next(_n)}", clock)
        if hasattr(ResilienceManager, "asgi_app"):
            app = ResilienceManager(f"grafana-ops{next(_n)}").asgi_app(registry=registry)
        else:
            app = make_asgi_app(registry)
        text = _scrape(app)
        assert keep
    finally:
        metrics.disable()
    return text


def _scrape(app: Any) -> str:
    """GET /metrics from ``app`` served by uvicorn on a free port of 127.0.0.1."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):  # bounded: uvicorn says when it listens
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        (sock,) = [s for listener in server.servers for s in listener.sockets]
        host, port = sock.getsockname()[:2]
        response = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_every_query_names_only_exported_metrics(exposition: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_names(exposition)
    unknown: list[str] = []
    named: set[str] = set()
    exprs = _exprs(dashboard)
    assert len(exprs) > 20
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        named |= names
        unknown += [f"{where}: {name}" for name in sorted(names - exported)]
    assert unknown == [], "the dashboard queries metrics buttress does not export"
    # and the dashboard shows every metric buttress exports (bar the series of a histogram)
    families = {
        f.name
        for f in text_string_to_metric_families(exposition)
        if not f.name.endswith("_created")  # the client's creation timestamps of counters
    }
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in named}
    assert families - shown == set()


def test_the_workload_gives_every_dashboard_metric_a_sample(exposition: str) -> None:
    # a family with no sample would let a renamed label or a dead code path go unnoticed
    sampled = {
        sample.name for f in text_string_to_metric_families(exposition) for sample in f.samples
    }
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_names(exposition)
    missing = {
        name
        for _, expr in _exprs(dashboard)
        for name in metric_names(expr)
        if name in exported and name not in sampled
    }
    assert missing == set()


def test_the_dashboard_is_grafana_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "buttress"
    assert dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert {
        "Circuit breakers",
        "Rate limits and rejections",
        "Degradation",
        "Resources",
        "Request queue",
        "Fallback protocols",
    } <= titles
