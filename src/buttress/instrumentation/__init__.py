"""Optional instrumentation: Prometheus metrics (``buttress.instrumentation.prometheus``) and
OpenTelemetry metrics and spans (``buttress.instrumentation.otel``).

Nothing here is imported by the core; each exporter imports its client library when enabled.
"""
