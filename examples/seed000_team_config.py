"""Fallback protocols, "Per-Team Configuration": a team's own API-quota protocol."""
# requires: buttress.FallbackAction

from buttress import FallbackAction, FallbackStrategy, ResilienceManager, ResourceType

# In team's __init__.py
resilience_config = {
    "check_interval": 20,
    "fallback_strategies": {
        ResourceType.API_QUOTA: [
            FallbackAction(FallbackStrategy.SWITCH_PROVIDER, target="anthropic"),
            FallbackAction(FallbackStrategy.USE_CACHE, priority=1)
        ]
    }
}

manager = ResilienceManager("marketing-team", resilience_config)
print("check interval:", manager.resources.check_interval)
for action in manager.fallback_strategies[ResourceType.API_QUOTA]:
    print("api_quota step:", action.strategy.name, getattr(action, "target", None) or "")
