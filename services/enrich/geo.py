"""Offline geolocation for the enrich stage: country, admin1 region, nearest place and geohash.

Places come from the GeoNames cities1000 extract in services/enrich/data (GeoNames data,
CC BY 4.0; data/README.md says where it is from); nothing is fetched at run time. The index is
our own flat arrays (~10 MB resident after load, against ~160 MB for reverse-geocode's dicts,
scipy and KD-tree).
"""

from __future__ import annotations

import csv
import ctypes
import gzip
import math
import sys
import threading
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


class _PlaceIndex:
    """Every place in flat arrays, sorted into latitude bands for nearest-neighbour search.

    Coordinates are stored band by band, each band sorted by longitude (``band_start[b]`` to
    ``band_start[b + 1]``), so the places of a band near a longitude are found by bisection;
    ``order`` maps that position back to the place's position in the GeoNames file, which
    indexes the name arrays. Float64 on purpose: float32 moves almost all of the 5-decimal
    coordinates and would change which place is nearest.
    """

    __slots__ = (
        "latitudes",
        "longitudes",
        "order",
        "band_start",
        "country_of",
        "countries",
        "region_of",
        "regions",
        "place_end",
        "place_names",
    )

    def __init__(
        self,
        latitudes: array[float],
        longitudes: array[float],
        order: array[int],
        band_start: array[int],
        country_of: array[int],
        countries: tuple[tuple[str, str | None], ...],
        region_of: array[int],
        regions: tuple[str | None, ...],
        place_end: array[int],
        place_names: bytes,
    ) -> None:
        self.latitudes = latitudes
        self.longitudes = longitudes
        self.order = order
        self.band_start = band_start
        self.country_of = country_of
        self.countries = countries  # (code, name) pairs, indexed by country_of
        self.region_of = region_of
        self.regions = regions
        self.place_end = place_end  # place i is place_names[place_end[i - 1]:place_end[i]]
        self.place_names = place_names  # UTF-8: half the size of a str of these names

    def nearest(self, latitude: float, longitude: float) -> int:
        """Position (in band order) of the place nearest in plain degrees, as the KD-tree had it.

        Bands are visited nearest first and each is scanned outward from the point's longitude,
        both stopping only once nothing beyond can be as near as the nearest place so far, so
        exact ties are all seen: among places at the same distance the first in the file wins.
        """
        lats, lons, order, band_start = self.latitudes, self.longitudes, self.order, self.band_start
        home = _band_of(latitude)
        north, south = home, home - 1
        # Lower bounds on the latitude distance from the point to the next band each way.
        north_gap = 0.0
        south_gap = latitude - (home * _BAND_DEGREES - 90.0) - _MARGIN if home > 0 else math.inf
        best, best_d2 = -1, math.inf
        while True:
            if north_gap <= south_gap:
                band, gap = north, north_gap
                north += 1
                north_gap = (
                    north * _BAND_DEGREES - 90.0 - latitude - _MARGIN
                    if north < _BANDS
                    else math.inf
                )
            else:
                band, gap = south, south_gap
                south -= 1
                south_gap = (
                    latitude - ((south + 1) * _BAND_DEGREES - 90.0) - _MARGIN
                    if south >= 0
                    else math.inf
                )
            gap = max(gap, 0.0)
            gap2 = gap * gap  # inf once both directions are off the globe
            if gap2 > best_d2:
                return best
            lo, hi = band_start[band], band_start[band + 1]
            split = bisect_left(lons, longitude, lo, hi)
            # East from the point's longitude, then west: each side grows away from it.
            for side in (range(split, hi), range(split - 1, lo - 1, -1)):
                for i in side:
                    d_lon = abs(lons[i] - longitude)
                    if d_lon > _MARGIN and (d_lon - _MARGIN) ** 2 + gap2 > best_d2:
                        break
                    d_lat = lats[i] - latitude
                    d2 = d_lat * d_lat + d_lon * d_lon
                    if d2 < best_d2 or (d2 == best_d2 and order[i] < order[best]):
                        best, best_d2 = i, d2

    def info(self, position: int, geohash: str) -> GeoInfo:
        index = self.order[position]
        code, country = self.countries[self.country_of[index]]
        start = self.place_end[index - 1] if index else 0
        place = self.place_names[start : self.place_end[index]].decode()
        return GeoInfo(
            country_code=code,
            country=country,
            region=self.regions[self.region_of[index]],
            place=place or None,
            geohash=geohash,
        )


# Thinner bands scan fewer places where places are dense but walk more bands for a point far
# out at sea (each empty or distant band still costs a bisection); one degree measured best.
_BANDS_PER_DEGREE = 1
_BAND_DEGREES = 1.0 / _BANDS_PER_DEGREE
_BANDS = 180 * _BANDS_PER_DEGREE
# Band arithmetic rounds, so a place within ~1e-14 degrees of a band edge may sit in the
# neighbouring band; shrinking every gap by this margin keeps such a place, or an exact tie, in.
_MARGIN = 1e-9


def _band_of(latitude: float) -> int:
    # Latitude 90 belongs to the last band.
    return min(int((latitude + 90.0) * _BANDS_PER_DEGREE), _BANDS - 1)


# The place data ships with this package (package data), so the service needs no other package.
_DATA_DIRECTORY = Path(__file__).with_name("data")


def _build_index() -> _PlaceIndex:
    with open(_DATA_DIRECTORY / "countries.csv", encoding="utf-8", newline="") as handle:
        country_names = {code: name or None for code, name in csv.reader(handle)}

    latitudes, longitudes = array("d"), array("d")
    country_of, region_of = array("H"), array("H")
    place_end = array("I")
    place_names = bytearray()
    country_ids: dict[str, int] = {}
    region_ids: dict[str | None, int] = {}

    # One line at a time, so the 155,000 places never exist as objects at once. The coordinates
    # are the shortest repr of the GeoNames floats, so float() gives back the very same values.
    with gzip.open(
        _DATA_DIRECTORY / "places.tsv.gz", "rt", encoding="utf-8", newline="\n"
    ) as lines:
        next(lines)  # the header: latitude, longitude, country_code, state, city
        for line in lines:
            latitude, longitude, country_code, state, city = line.rstrip("\n").split("\t")
            latitudes.append(float(latitude))
            longitudes.append(float(longitude))
            country_of.append(country_ids.setdefault(country_code, len(country_ids)))
            region_of.append(region_ids.setdefault(state or None, len(region_ids)))
            place_names.extend(city.encode())
            place_end.append(len(place_names))

    bands = array("H", map(_band_of, latitudes))
    # Two stable sorts, by longitude and then by band: file order among equal longitudes.
    by_longitude = sorted(range(len(bands)), key=longitudes.__getitem__)
    order = array("I", sorted(by_longitude, key=bands.__getitem__))
    del by_longitude
    band_start = array("I", bytes(4 * (_BANDS + 1)))
    for band in bands:
        band_start[band + 1] += 1
    for band in range(_BANDS):
        band_start[band + 1] += band_start[band]
    return _PlaceIndex(
        latitudes=array("d", (latitudes[i] for i in order)),
        longitudes=array("d", (longitudes[i] for i in order)),
        order=order,
        band_start=band_start,
        country_of=country_of,
        countries=tuple((code, country_names.get(code)) for code in country_ids),
        region_of=region_of,
        regions=tuple(region_ids),
        place_end=place_end,
        place_names=bytes(place_names),
    )


def _release_freed_memory() -> None:
    # Best effort, glibc only: the load's transient objects are freed, but glibc keeps some of
    # the freed heap for reuse; malloc_trim hands it back so the RSS shows the index's real size.
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # musl or another libc: no malloc_trim, nothing to release


_index: _PlaceIndex | None = None
_load_lock = threading.Lock()


def _places() -> _PlaceIndex:
    global _index
    if _index is None:
        # The lock only matters for threads (e.g. asyncio.to_thread warm-ups): two loads would
        # both pay the ~0.7 s and the transient memory.
        with _load_lock:
            if _index is None:
                _index = _build_index()
                _release_freed_memory()
    return _index


def preload() -> None:
    """Load the place index now (~0.7 s, blocking) instead of on the first lookup.

    From asyncio, call it as ``await asyncio.to_thread(preload)`` at start-up.
    """
    _places()


@lru_cache(maxsize=65_536)
def _locate(latitude: float, longitude: float, precision: int) -> GeoInfo:
    # Cached because stations do not move: a stream repeats the same few coordinates.
    geohash = geohash_encode(latitude, longitude, precision)
    places = _places()
    return places.info(places.nearest(latitude, longitude), geohash)


def locate(
    latitude: float | None, longitude: float | None, precision: int = DEFAULT_PRECISION
) -> GeoInfo | None:
    """Country, admin1 region and nearest GeoNames place (population >= 1000) of a point.

    Nearest means nearest in plain degrees (as the library's KD-tree had it), so near the poles
    and the antimeridian the "nearest" place can be a farther one; a point at sea gets the
    nearest place on land and that place's country. None when either coordinate is missing;
    ValueError when a coordinate is out of range or the precision is not in 1..12.
    """
    if latitude is None or longitude is None:
        return None
    return _locate(float(latitude), float(longitude), precision)


def locate_many(
    points: Sequence[tuple[float, float]], precision: int = DEFAULT_PRECISION
) -> list[GeoInfo]:
    """``locate`` for a batch of (latitude, longitude), sharing its cache.

    Every point is checked before any lookup, so one bad point raises ValueError for the batch.
    """
    _check_precision(precision)
    for latitude, longitude in points:
        _check_coordinates(latitude, longitude)
    return [_locate(float(lat), float(lon), precision) for lat, lon in points]
