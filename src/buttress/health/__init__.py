"""Watching the resources a service depends on (see :mod:`buttress.health.types`)."""
