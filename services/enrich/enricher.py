"""The enrich stage's pure step: a validated reading plus registry, place, heat index, dew point."""

from __future__ import annotations

from typing import Any

from services.enrich.geo import locate
from services.enrich.physics import dew_point_c, heat_index_c
from services.enrich.registry import DeviceRegistry

_NO_PLACE = {"country_code": None, "country": None, "region": None, "place": None, "geohash": None}


def enrich(
    reading: dict[str, Any], registry: DeviceRegistry, geohash_precision: int
) -> dict[str, Any]:
    """Return the EnrichedReading fields; a missing input leaves its derived fields NULL."""
    temperature, humidity = reading.get("temperature"), reading.get("humidity")
    reading["heat_index"] = _round(heat_index_c(temperature, humidity))
    reading["dew_point"] = _round(dew_point_c(temperature, humidity))

    device = registry.get(reading["device_id"])
    reading["device_known"] = device is not None
    reading["model"] = device.model if device else None
    reading["site"] = device.site if device else None
    reading["owner"] = device.owner if device else None

    geo = locate(reading.get("latitude"), reading.get("longitude"), geohash_precision)
    if geo is None:
        reading.update(_NO_PLACE)
    else:
        reading["country_code"] = geo.country_code
        reading["country"] = geo.country
        reading["region"] = geo.region
        reading["place"] = geo.place
        reading["geohash"] = geo.geohash
    return reading


def _round(value: float | None) -> float | None:
    # Two decimals: the sensors are not better than a tenth of a degree.
    return None if value is None else round(value, 2)
