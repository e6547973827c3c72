"""Sends one of each call with the real rudder-sdk-python SDK (RudderStack's), plain and gzipped.

Usage: send_with_rudderstack_sdk.py BASE_URL WRITE_KEY
Prints a JSON summary: the SDK's errors (must be none).
"""
import datetime
import json
import sys

from rudderstack.analytics import Client

base, write_key = sys.argv[1], sys.argv[2]
errors = []


def on_error(error, items):
    errors.append(f"{error!r} ({len(items)} items)")


when = datetime.datetime(2024, 3, 1, 16, 0, 0, tzinfo=datetime.timezone.utc)
for gzip in (False, True):
    suffix = "-gzip" if gzip else ""
    client = Client(write_key, host=base, on_error=on_error, gzip=gzip, max_retries=1)
    # RudderStack's identify puts the traits in context.traits, not at the top level.
    client.identify("rs-user", {"email": "bea@example.com", "plan": "pro"}, message_id=f"rs-identify{suffix}")
    client.track(
        "rs-user",
        "Order Completed",
        {"revenue": 99.5, "currency": "MXN"},
        timestamp=when,
        message_id=f"rs-track{suffix}",
    )
    client.page("rs-user", "Docs", "Pricing", {"url": "https://tienda.mx/precios"}, message_id=f"rs-page{suffix}")
    client.screen("rs-user", "Checkout", "Payment", {"step": 3}, message_id=f"rs-screen{suffix}")
    client.group("rs-user", "acme", {"name": "Acme"}, message_id=f"rs-group{suffix}")
    client.alias("rs-anon", "rs-user", message_id=f"rs-alias{suffix}")
    client.flush()
    client.join()

print(json.dumps({"errors": errors}))
