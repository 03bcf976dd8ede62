"""Every program in ``examples/`` runs, as a subprocess, and prints what it promises.

Each example is run with this checkout's ``src`` first on the path and a timeout; its output must
hold the lines listed here (so an example that runs but stops showing what it is about fails).
An example whose first lines say ``# requires: buttress.X`` needs a part of the API that may not
exist yet; it is skipped until it does, and then must pass like the others.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 90

# Fragments each example's output must contain, in order.
EXPECTED: dict[str, list[str]] = {
    "seed004_retry.py": [
        "emission factor for steel: 2.5",
        "requests to the factor API: 3",
        "retries: 2",
    ],
    "seed004_timeout.py": [
        "factor: 0.42",
        "timed out: ",
        "did not finish within 30.000s",
        "virtual seconds elapsed: 30",
    ],
    "seed004_fallback.py": [
        "live: {'steel': 1.85}",
        "API down, cached: {'steel': 1.85}",
        "nothing cached for glass: HTTP 500: down",
        "suppliers (default): []",
    ],
    "seed004_rate_limit.py": [
        "admitted 20 at once, then refused: rate limit factor_api exceeded; retry after 0.100s",
        "admitted again after waiting retry_after",
    ],
    "seed004_circuit_breaker.py": [
        "call 5: failed: HTTP 500: down; breaker OPEN",
        "call 6: rejected without calling: circuit breaker 'external_api' is open",
        "after 60 s: ok; breaker CLOSED; API called 6 times",
    ],
    "seed004_degradation.py": [
        "llm_api probe: HTTP 504: Timeout",
        "tier: TIER_2_CORE",
        "core operation: calculated",
        "database down, tier: TIER_4_MAINTENANCE",
        "core operation: None",
    ],
    "seed004_calculator_agent.py": [
        "steel: 1.85 (2 requests, 1 retry)",
        "API down, cached steel: 1.85",
        "tier TIER_3_READ_ONLY -> glass: None (0 requests)",
    ],
    "seed004_llm_provider.py": [
        "answer: Scope 3 covers the value chain.",
        "provider failing, cached: Scope 3 covers the value chain.",
        "nothing cached: HTTP 500: overloaded after 2 retries",
        "tier TIER_2_CORE -> [LLM unavailable]",
    ],
    "seed004_erp_connector.py": [
        "fetched 12 suppliers with 12 ERP requests",
        "rate-limit waits: ",
    ],
    "seed000_circuit_breaker.py": [
        "call 5: HTTP 503",
        "call 6: circuit breaker 'external_api' is open",
        "requests that reached the API: 5",
    ],
    "seed000_retry_policy.py": ["users: [{'id': 1, 'name': 'ada'}]", "attempts: 5 waits: 4"],
    "seed000_a2a_client.py": ["sales team: {'status': 'accepted'}", "requests: 2"],
    "seed000_health_report.py": [
        "api_quota:openai unknown -> degraded (usage 85.5% >= 80%)",
        '"team": "marketing-team"',
        '"overall_health": "degraded"',
        '"mcp_server:supabase": {',
        '"status": "healthy"',
        '"server_name": "supabase-standin"',
        '"api_quota:openai": {',
        '"status": "degraded"',
        '"usage": 85.5',
    ],
    "seed000_marketing_team.py": [
        "post 0: Power your day with the sun.",
        "post 2: Power your day with the sun.",
        "provider openai: cooling ServiceError",
        "provider anthropic: cooling ServiceError",
        "provider local: healthy",
        "requests: {'openai': 1, 'anthropic': 1, 'local': 3}",
    ],
    "seed000_full_stack.py": ["result: {'status': 'processed'}", "requests: 2"],
    "seed000_mcp_client.py": [
        "tool result: {'rows': 1}",
        "tool result: {'rows': 1}",
        "requests: {'primary': 1, 'secondary': 2}",
    ],
    "seed000_team_config.py": [
        "check interval: 20",
        "api_quota step: SWITCH_PROVIDER anthropic",
        "api_quota step: CACHED",  # USE_CACHE is CACHED's alias
    ],
    "fastapi_service.py": [
        "serving on http://127.0.0.1:<port>",
        "GET /factors/steel [acme] -> 200 {'category': 'steel', 'factor': 1.85}",
        "-- the upstream goes down",
        "GET /factors/steel [globex] -> 200 {'category': 'steel', 'factor': 1.85}",
        "GET /factors/glass [globex] -> 503 {'error': \"circuit breaker 'factor_api' is open;",
        "Retry-After: 30",
        "acme burst: [200, 200, 200, 200, 429]",
        'metric: buttress_circuit_breaker_state{name="factor_api"} 1.0',
        'policy="ratelimit",reason="rate_limited"} 1.0',
        "GET /health -> 200",
        "breaker=open",
        "upstream requests: 4",
    ],
}

PROGRAMS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_every_example_has_its_expectations() -> None:
    assert sorted(EXPECTED) == PROGRAMS


def _missing_requirements(program: Path) -> list[str]:
    head = program.read_text(encoding="utf-8").split("\n\n\n", 1)[0]
    missing = []
    for line in re.findall(r"^# requires: (.+)$", head, re.MULTILINE):
        for dotted in (name.strip() for name in line.split(",")):
            module, _, path = dotted.partition(".")
            owner: object = importlib.import_module(module)
            for attribute in path.split("."):
                owner = getattr(owner, attribute, None)
            if owner is None:
                missing.append(dotted)
    return missing


@pytest.mark.parametrize("name", PROGRAMS)
def test_example_runs_and_prints_what_it_shows(name: str) -> None:
    program = EXAMPLES / name
    missing = _missing_requirements(program)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not in buttress yet")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.pop("MCP_CONFIG", None)
    done = subprocess.run(
        [sys.executable, str(program)],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, f"{name} failed:\n{output}\n{done.stderr}"
    position = 0
    for fragment in EXPECTED[name]:
        found = output.find(fragment, position)
        assert found >= 0, f"{name}: {fragment!r} missing (in order) from:\n{output}"
        position = found + len(fragment)
