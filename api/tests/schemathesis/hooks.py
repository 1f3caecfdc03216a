"""Rules of the API that OpenAPI 3.0 cannot state, applied to generated request bodies so that
"valid" means what the API's parsers mean. Each rule is documented where the API states it."""

import re

import schemathesis

# Metadata keys: 1 to 40 characters, no brackets or control characters (API.md, catalog).
_BAD_KEY = re.compile(r"[\[\]\x00-\x1f\x7f-\x9f]")
# The longest interval per unit (one year), as `shared::domain::interval` checks it.
_MAX_COUNT = {"day": 365, "week": 52, "month": 12, "quarter": 4, "year": 1}


def _metadata(value):
    if not isinstance(value, dict):
        return value
    fixed = {}
    for key, item in value.items():
        key = _BAD_KEY.sub("", str(key))[:40] or "key"
        fixed[key] = item
    return fixed


def _count(unit, count):
    limit = _MAX_COUNT.get(unit) if isinstance(unit, str) else None
    if limit is not None and isinstance(count, int) and count > limit:
        return limit
    return count


def _tiers(tiers):
    """Tiers ascend by `up_to`, and only the last one is open (`up_to: null`)."""
    if not isinstance(tiers, list) or not tiers:
        return tiers
    bounds = sorted({t["up_to"] for t in tiers if isinstance(t, dict) and isinstance(t.get("up_to"), int)})
    for index, tier in enumerate(tiers):
        if not isinstance(tier, dict):
            continue
        last = index == len(tiers) - 1
        tier["up_to"] = None if last else (bounds[index] if index < len(bounds) else index + 1)
    ups = [t["up_to"] for t in tiers[:-1] if isinstance(t, dict)]
    for index in range(1, len(ups)):
        if ups[index] is not None and ups[index - 1] is not None and ups[index] <= ups[index - 1]:
            ups[index] = ups[index - 1] + 1
            tiers[index]["up_to"] = ups[index]
    return tiers


def _distinct_prices(items):
    """A bundle lists each price once."""
    if not isinstance(items, list):
        return items
    seen = set()
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("price_id"), str):
            price = item["price_id"]
            while price in seen:
                price = price[:-1] + "0123456789abcdefghjkmnpqrstvwxyz"[index % 32] if price[-1] != "0123456789abcdefghjkmnpqrstvwxyz"[index % 32] else price[:-1] + "z"
                index += 1
            item["price_id"] = price
            seen.add(price)
    return items


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict):
        return body
    if "metadata" in body:
        body["metadata"] = _metadata(body["metadata"])
    if isinstance(body.get("percentage"), float):
        # A tax rate's percentage has at most four decimals (`percentage` of tax rates).
        body["percentage"] = round(body["percentage"], 4)
    if isinstance(body.get("tax_rates"), list):
        # A customer's tax rates must exist in the tenant and mode (`400 tax_rates`).
        body["tax_rates"] = []
    if isinstance(body.get("usage_limits"), list):
        # A plan's limits name billable metrics of the tenant and mode (`400 usage_limits`).
        body["usage_limits"] = []
    if "billing_interval" in body and "interval_count" in body:
        body["interval_count"] = _count(body["billing_interval"], body["interval_count"])
    if isinstance(body.get("usage"), dict) and not isinstance(body.get("recurring"), dict):
        # Usage is billed per period.
        body["recurring"] = {"interval": "month"}
    recurring = body.get("recurring")
    if isinstance(recurring, dict) and "interval_count" in recurring:
        recurring["interval_count"] = _count(recurring.get("interval"), recurring["interval_count"])
    if "items" in body and "discount_bps" in body:
        body["items"] = _distinct_prices(body["items"])
    pricing = body.get("pricing")
    if isinstance(pricing, dict) and "tiers" in pricing:
        pricing["tiers"] = _tiers(pricing["tiers"])
    return body
