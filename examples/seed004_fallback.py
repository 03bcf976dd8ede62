"""Resilience patterns, section 3: fallbacks to the cache and to a default.

The external API and the supplier API are local stand-ins on 127.0.0.1; the external API answers
once and then goes down, the supplier API is down from the start.
"""

from _standins import ServiceClient, service

from buttress import FallbackStrategy, fallback

with service(fetch=[(200, {"steel": 1.85}), (500, "down")], fetch_all=[(500, "down")]) as api:
    external_api = supplier_api = ServiceClient(api.url)

    @fallback(strategy=FallbackStrategy.CACHED)
    def get_emission_factors(category: str):
        return external_api.fetch(category)

    @fallback(strategy=FallbackStrategy.DEFAULT, default_value=[])
    def get_suppliers():
        return supplier_api.fetch_all()

    print("live:", get_emission_factors("steel"))
    print("API down, cached:", get_emission_factors("steel"))
    try:
        get_emission_factors("glass")
    except ConnectionError as error:
        print("nothing cached for glass:", error)
    print("suppliers (default):", get_suppliers())
