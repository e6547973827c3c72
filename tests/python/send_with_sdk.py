"""Sends one of each call with a real Python SDK from PyPI, plain and gzipped: Segment's
segment-analytics-python, or RudderStack's rudder-sdk-python (whose identify puts the traits in
context.traits).

Usage: send_with_sdk.py segment|rudderstack BASE_URL WRITE_KEY
Message ids start with `py-` (Segment) or `rs-` (RudderStack); the user is `user-1` or `rs-user`.
One track call holds float('nan'), which the SDKs write as `NaN`: Kith refuses that event alone.
Prints a JSON summary: the SDK's errors (must be none).
"""
import datetime
import json
import sys

sdk, base, write_key = sys.argv[1], sys.argv[2], sys.argv[3]
if sdk == "segment":
    from segment.analytics import Client

    prefix, user, anon = "py", "user-1", "anon"
elif sdk == "rudderstack":
    from rudderstack.analytics import Client

    prefix, user, anon = "rs", "rs-user", "rs-anon"
else:
    sys.exit(f"unknown SDK {sdk!r}: segment or rudderstack")
errors = []


def on_error(error, items):
    errors.append(f"{error!r} ({len(items)} items)")


when = datetime.datetime(2024, 3, 1, 16, 0, 0, tzinfo=datetime.timezone.utc)
for gzip in (False, True):
    suffix = "-gzip" if gzip else ""
    client = Client(write_key, host=base, on_error=on_error, gzip=gzip, max_retries=1)
    client.identify(user, {"email": "ana@example.com", "plan": "pro"}, message_id=f"{prefix}-identify{suffix}")
    client.track(
        user,
        "Order Completed",
        {"revenue": 349.5, "currency": "MXN", "order_id": "o-1"},
        timestamp=when,
        message_id=f"{prefix}-track{suffix}",
    )
    client.page(user, "Docs", "Pricing", {"url": "https://tienda.mx/precios", "path": "/precios"}, message_id=f"{prefix}-page{suffix}")
    client.screen(user, "Checkout", "Payment", {"step": 3}, message_id=f"{prefix}-screen{suffix}")
    client.group(user, "acme", {"name": "Acme"}, message_id=f"{prefix}-group{suffix}")
    client.alias(f"{anon}-1", user, message_id=f"{prefix}-alias{suffix}")
    client.track(anonymous_id=f"{anon}-2", event="Viewed Product", properties={"sku": "A-1"}, message_id=f"{prefix}-anon{suffix}")
    # Python's json writes float('nan') as NaN, which JSON does not allow: this event alone is
    # refused (and kept in rejected_events), not the batch the SDK sends it in.
    client.track(user, "Scored", {"score": float("nan"), "ok": 1}, message_id=f"{prefix}-nan{suffix}")
    client.flush()
    client.join()

print(json.dumps({"errors": errors}))
