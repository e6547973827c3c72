"""Sends one of each Segment call with the real segment-analytics-python SDK.

Usage: send_with_sdk.py BASE_URL WRITE_KEY
Prints a JSON summary: the SDK's errors (must be none).
"""
import datetime
import json
import sys

from segment.analytics import Client

base, write_key = sys.argv[1], sys.argv[2]
errors = []


def on_error(error, items):
    errors.append(f"{error!r} ({len(items)} items)")


when = datetime.datetime(2024, 3, 1, 16, 0, 0, tzinfo=datetime.timezone.utc)
for gzip in (False, True):
    suffix = "-gzip" if gzip else ""
    client = Client(write_key, host=base, on_error=on_error, gzip=gzip, max_retries=1)
    client.identify("user-1", {"email": "ana@example.com", "plan": "pro"}, message_id=f"py-identify{suffix}")
    client.track(
        "user-1",
        "Order Completed",
        {"revenue": 349.5, "currency": "MXN", "order_id": "o-1"},
        timestamp=when,
        message_id=f"py-track{suffix}",
    )
    client.page("user-1", "Docs", "Pricing", {"url": "https://tienda.mx/precios", "path": "/precios"}, message_id=f"py-page{suffix}")
    client.screen("user-1", "Checkout", "Payment", {"step": 3}, message_id=f"py-screen{suffix}")
    client.group("user-1", "acme", {"name": "Acme"}, message_id=f"py-group{suffix}")
    client.alias("anon-1", "user-1", message_id=f"py-alias{suffix}")
    client.track(anonymous_id="anon-2", event="Viewed Product", properties={"sku": "A-1"}, message_id=f"py-anon{suffix}")
    client.flush()
    client.join()

print(json.dumps({"errors": errors}))
