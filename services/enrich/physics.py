"""Derived weather quantities for the enrich stage: NWS heat index and Magnus dew point.

Plain ``math`` on purpose: these run per reading at tens of thousands of readings per second.
"""

from __future__ import annotations

import math
from typing import overload

# Alduchov & Eskridge (1996), J. Appl. Meteor. 35, 601-609, as recommended by Lawrence (2005),
# BAMS 86(2) 225-233: accurate to about 0.35 C over -40..60 C over water.
MAGNUS_B = 17.625
MAGNUS_C_DEG = 243.04
# ln(RH) - ln(100) rather than ln(RH / 100): the quotient underflows to 0 for subnormal RH.
_LN_100 = math.log(100.0)
# At or below this the WPC calculator's heat index is the air temperature.
_AIR_TEMPERATURE_ONLY_F = 40.0


@overload
def heat_index_c(temperature_c: float, humidity_pct: float) -> float: ...
@overload
def heat_index_c(temperature_c: float | None, humidity_pct: float | None) -> float | None: ...
def heat_index_c(temperature_c: float | None, humidity_pct: float | None) -> float | None:
    """Heat index (apparent temperature, C) as the NWS/WPC heat index calculator computes it.

    At or below 40 F (4.44 C) the heat index is the air temperature itself, as the WPC's web
    calculator returns it: the formulas below are fits for warm air and would put a cold reading's
    "apparent temperature" a few degrees under the thermometer. Above 40 F, the "Heat Index
    Equation" page: the Steadman simple formula ``0.5 * (T + 61 + (T - 68) * 1.2 + RH * 0.094)``
    (which already is Steadman's value averaged with T) first, in F; only if it is >= 80 F the
    Rothfusz regression, with the low-humidity adjustment (RH < 13 %, 80 <= T <= 112 F)
    subtracted or the high-humidity one (RH > 85 %, 80 <= T <= 87 F) added; both end points
    inclusive, which the NWS text leaves open. (Copies of the calculator's script switch to the
    regression above 79 F and subtract at RH <= 13 %; the published page's 80 F and 13 % are kept.)

    Returns None when either input is missing: a missing measurement is never invented.
    """
    if temperature_c is None or humidity_pct is None:
        return None
    t = temperature_c * 1.8 + 32.0
    if t <= _AIR_TEMPERATURE_ONLY_F:
        # The temperature as given, not converted there and back: equal to the last bit.
        return temperature_c
    rh = humidity_pct
    hi = 0.5 * (t + 61.0 + (t - 68.0) * 1.2 + rh * 0.094)
    if hi >= 80.0:
        hi = (
            -42.379
            + 2.04901523 * t
            + 10.14333127 * rh
            - 0.22475541 * t * rh
            - 0.00683783 * t * t
            - 0.05481717 * rh * rh
            + 0.00122874 * t * t * rh
            + 0.00085282 * t * rh * rh
            - 0.00000199 * t * t * rh * rh
        )
        if rh < 13.0 and 80.0 <= t <= 112.0:
            hi -= ((13.0 - rh) / 4.0) * math.sqrt((17.0 - abs(t - 95.0)) / 17.0)
        elif rh > 85.0 and 80.0 <= t <= 87.0:
            hi += ((rh - 85.0) / 10.0) * ((87.0 - t) / 5.0)
    return (hi - 32.0) / 1.8


def dew_point_c(temperature_c: float | None, humidity_pct: float | None) -> float | None:
    """Dew point (C) by the Magnus formula with the Alduchov & Eskridge (1996) constants.

    Returns None when either input is missing or the humidity is <= 0 %: with no water vapour
    there is no dew point (the formula takes ln(RH)), and a missing value stays missing.
    Humidity above 100 % is not clamped; range checks belong to the validate stage.
    """
    if temperature_c is None or humidity_pct is None or humidity_pct <= 0.0:
        return None
    g = math.log(humidity_pct) - _LN_100 + MAGNUS_B * temperature_c / (MAGNUS_C_DEG + temperature_c)
    return MAGNUS_C_DEG * g / (MAGNUS_B - g)
