"""Resilience patterns, section 2: operation-specific timeouts.

``factor_db`` is a local stand-in HTTP service on 127.0.0.1; ``long_running_task`` takes 45 s.
Time is virtual (``buttress.testing.FakeClock``), so the 30 s timeout fires at once.
"""

from _standins import ServiceClient, service

from buttress import OperationTimeout, OperationType, timeout
from buttress.testing import FakeClock

with service(query=[(200, 0.42)]) as db, FakeClock() as clock:
    factor_db = ServiceClient(db.url)

    def long_running_task():
        clock.sleep(45.0)  # a report that takes 45 s
        return "report"

    @timeout(operation_type=OperationType.FACTOR_LOOKUP)
    def lookup_factor(category: str):
        return factor_db.query(category)

    @timeout(timeout_seconds=30.0)
    def custom_timeout_operation():
        return long_running_task()

    print("factor:", lookup_factor("cement"))
    try:
        custom_timeout_operation()
    except OperationTimeout as error:
        print("timed out:", error)
    print(f"virtual seconds elapsed: {clock.now():.0f}")
