"""Tier 3's price and carbon signals: each reader on a small hand-written document, the checks,
resampling and merging (gridtao/tier3/signals.py, gridtao/tier3/adapters.py)."""

from __future__ import annotations

import calendar
import json
import math
import time

import numpy as np
import pytest

from gridtao.errors import GridtaoError
from gridtao.tier3 import Series, SignalError, Signals, merge, parse_signals
from gridtao.tier3.signals import CARBON, ENERGY, RESERVE


def utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M"))


NOW = utc("2026-03-01T12:00")
H = 3600

ENTSOE_NS = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"


def entsoe(*series: str, created: str = "2026-03-01T11:00:00Z") -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n'
            f'<Publication_MarketDocument xmlns="{ENTSOE_NS}">\n'
            f"  <mRID>f1a4</mRID><revisionNumber>1</revisionNumber><type>A44</type>\n"
            f"  <createdDateTime>{created}</createdDateTime>\n"
            + "".join(series) + "</Publication_MarketDocument>\n")


def entsoe_series(resolution: str, start: str, end: str, points: dict[int, float],
                  curve: str = "A03", currency: str = "EUR") -> str:
    pts = "".join(f"<Point><position>{p}</position><price.amount>{v}</price.amount></Point>"
                  for p, v in points.items())
    return (f"<TimeSeries><mRID>1</mRID><businessType>A62</businessType>"
            f'<in_Domain.mRID codingScheme="A01">10YFI-1--------U</in_Domain.mRID>'
            f"<currency_Unit.name>{currency}</currency_Unit.name>"
            f"<price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>{curve}</curveType>"
            f"<Period><timeInterval><start>{start}</start><end>{end}</end></timeInterval>"
            f"<resolution>{resolution}</resolution>{pts}</Period></TimeSeries>\n")


def values(s: Series | None) -> list[float]:
    assert s is not None
    return [round(x, 9) if math.isfinite(x) else x for x in s.values.tolist()]


def test_entsoe_a44_hourly_with_omitted_positions_filled_forward() -> None:
    doc = entsoe(entsoe_series("PT60M", "2026-03-01T23:00Z", "2026-03-02T03:00Z",
                               {1: 40.5, 3: -5.25}))
    sig = parse_signals(doc.encode(), now_s=NOW)
    e = sig.energy_price_eur_per_mwh
    assert e is not None and (e.start_s, e.step_s) == (utc("2026-03-01T23:00"), H)
    # curve type A03: position 2 repeats position 1, position 4 repeats position 3
    assert values(e) == [40.5, 40.5, -5.25, -5.25]
    assert sig.issued_at_s == utc("2026-03-01T11:00")
    assert sig.source == "entsoe:10YFI-1--------U"
    assert sig.warnings == () and sig.carbon_g_per_kwh is None


def test_entsoe_a44_quarter_hours_keep_gaps_and_the_finest_resolution() -> None:
    quarter = entsoe_series("PT15M", "2026-03-01T23:00Z", "2026-03-02T00:00Z",
                            {1: 10, 3: 30, 4: 40}, curve="A01")
    hourly = entsoe_series("PT60M", "2026-03-01T23:00Z", "2026-03-02T00:00Z", {1: 99})
    sig = parse_signals(entsoe(quarter, hourly), now_s=NOW, fmt="entsoe")
    e = sig.energy_price_eur_per_mwh
    assert e is not None and e.step_s == 900
    # curve type A01: a missing position is unknown, not repeated
    assert values(e)[0] == 10 and math.isnan(values(e)[1]) and values(e)[2:] == [30, 40]
    assert sig.warnings == (f"{ENERGY}: ENTSO-E prices at 3600 s left out, the 900 s ones kept",)
    # the hour containing an unknown quarter is unknown
    assert math.isnan(e.resample(utc("2026-03-01T23:00"), H, 1)[0])


def test_entsoe_periods_are_stitched_and_conflicts_keep_the_first() -> None:
    first = entsoe_series("PT60M", "2026-03-01T23:00Z", "2026-03-02T01:00Z", {1: 1, 2: 2})
    second = entsoe_series("PT60M", "2026-03-02T01:00Z", "2026-03-02T02:00Z", {1: 3})
    clash = entsoe_series("PT60M", "2026-03-01T23:00Z", "2026-03-02T00:00Z", {1: 9})
    sig = parse_signals(entsoe(first, second, clash), now_s=NOW)
    assert values(sig.energy_price_eur_per_mwh) == [1, 2, 3]
    assert sig.warnings == (f"{ENERGY}: 1 ENTSO-E prices given twice with different values; "
                            "the first in document order kept",)


def test_entsoe_refusals() -> None:
    ack = ('<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:'
           'acknowledgementdocument:7:0"><mRID>x</mRID><Reason><code>999</code>'
           "<text>No matching data found</text></Reason></Acknowledgement_MarketDocument>")
    with pytest.raises(SignalError, match="No matching data found"):
        parse_signals(ack, now_s=NOW)
    with pytest.raises(SignalError, match="not well-formed XML"):
        parse_signals("<Publication_MarketDocument><type>", now_s=NOW)
    usd = entsoe(entsoe_series("PT60M", "2026-03-01T23:00Z", "2026-03-02T01:00Z",
                               {1: 1, 2: 2}, currency="USD"))
    with pytest.raises(SignalError, match=r"no usable series: .*USD/MWH"):
        parse_signals(usd, now_s=NOW)


def test_watttime_moer_in_lbs_per_mwh_becomes_g_per_kwh() -> None:
    doc = {"data": [{"point_time": "2026-03-01T12:00:00+00:00", "value": 1000.0},
                    {"point_time": "2026-03-01T12:05:00+00:00", "value": 500.0},
                    {"point_time": "2026-03-01T12:10:00+00:00", "value": 0.0}],
           "meta": {"data_point_period_seconds": 300, "region": "CAISO_NORTH",
                    "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
                    "generated_at": "2026-03-01T11:55:00+00:00", "warnings": []}}
    sig = parse_signals(json.dumps(doc), now_s=NOW)
    c = sig.carbon_g_per_kwh
    assert c is not None and (c.start_s, c.step_s) == (NOW, 300)
    assert values(c) == [453.59237, 226.796185, 0.0]  # 1 lb = 453.59237 g, 1 MWh = 1000 kWh
    assert sig.issued_at_s == NOW - 300 and sig.source == "watttime:co2_moer:CAISO_NORTH"
    assert c.resample(NOW, 900, 1)[0] == pytest.approx((453.59237 + 226.796185) / 3)
    doc["meta"]["signal_type"] = "health_damage"  # type: ignore[index]
    with pytest.raises(SignalError, match="not a carbon intensity"):
        parse_signals(json.dumps(doc), now_s=NOW)


def test_electricity_maps_forecast() -> None:
    doc = {"zone": "FI", "updatedAt": "2026-03-01T11:38:10.419Z",
           "forecast": [{"carbonIntensity": 120, "datetime": "2026-03-01T12:00:00.000Z"},
                        {"carbonIntensity": 80, "datetime": "2026-03-01T13:00:00.000Z"}]}
    sig = parse_signals(json.dumps(doc), now_s=NOW)
    c = sig.carbon_g_per_kwh
    assert c is not None and (c.start_s, c.step_s) == (NOW, H) and values(c) == [120, 80]
    assert sig.issued_at_s == pytest.approx(utc("2026-03-01T11:38") + 10.419)
    assert sig.source == "electricitymaps:FI"


CSV = """# issued_at: 2026-03-01T11:00:00Z
# source: test-feed
time,energy_price_eur_per_mwh,carbon_g_per_kwh,reserve_price_eur_per_mw_h.ffr
2026-03-01T12:00:00Z,10,100,5
2026-03-01T12:15:00Z,20,,
2026-03-01T12:30:00Z,30,,
2026-03-01T12:45:00Z,40,,
2026-03-01T13:00:00Z,50,200,7
"""


def test_csv_columns_each_on_their_own_step() -> None:
    sig = parse_signals(CSV, now_s=NOW)
    assert (sig.source, sig.issued_at_s, sig.warnings) == ("test-feed", NOW - H, ())
    e, c = sig.energy_price_eur_per_mwh, sig.carbon_g_per_kwh
    ffr = sig.reserve_price_eur_per_mw_h["ffr"]
    assert e is not None and e.step_s == 900 and values(e) == [10, 20, 30, 40, 50]
    assert c is not None and c.step_s == H and values(c) == [100, 200]
    assert ffr.step_s == H and values(ffr) == [5, 7] and ffr.start_s == NOW
    irregular = CSV.replace("12:30:00Z,30", "12:35:00Z,30")
    sig = parse_signals(irregular, now_s=NOW)
    assert sig.energy_price_eur_per_mwh is None
    assert any(w.startswith(ENERGY) and "irregular" in w for w in sig.warnings)
    assert sig.carbon_g_per_kwh is not None  # the other columns are kept
    no_time = CSV.replace("# issued_at: 2026-03-01T11:00:00Z\n", "")
    with pytest.raises(SignalError, match="no issue time"):
        parse_signals(no_time, now_s=NOW)
    assert parse_signals(no_time, now_s=NOW, issued_at_s=NOW - 60).issued_at_s == NOW - 60


def normalized(**series: object) -> str:
    return json.dumps({"version": 1, "issued_at": "2026-03-01T11:00:00Z", "source": "unit",
                       "start": NOW, "mtu_s": H, **series})


def test_normalized_schema_with_its_own_steps_per_series() -> None:
    sig = parse_signals(normalized(
        energy_price_eur_per_mwh=[50, None, 70],
        reserve_price_eur_per_mw_h={"ffr": {"start": "2026-03-01T12:00:00Z", "mtu_s": 900,
                                            "values": [1, 2, 3, 4]},
                                    "fcr-d-up": [9, 9]},
        carbon_g_per_kwh=[300, 310]), now_s=NOW)
    assert sig.warnings == ()
    assert values(sig.energy_price_eur_per_mwh)[::2] == [50, 70]
    assert math.isnan(values(sig.energy_price_eur_per_mwh)[1])  # null: unknown
    assert sorted(sig.reserve_price_eur_per_mw_h) == ["fcr-d-up", "ffr"]
    grid = sig.resample(NOW, H, 3)
    assert grid[f"{RESERVE}.ffr"][0] == pytest.approx(2.5) and math.isnan(grid[f"{RESERVE}.ffr"][1])
    assert grid[CARBON].tolist()[:2] == [300, 310] and math.isnan(grid[CARBON][2])


def test_resampling_down_by_mean_and_up_by_repeating() -> None:
    t = utc("2026-03-02T00:00")
    quarters = Series(t, 900, np.array([10.0, 20, 30, 40, 50, 60, 70, 80]))
    assert quarters.resample(t, H, 2).tolist() == pytest.approx([25.0, 65.0])
    shifted = quarters.resample(t + 900, H, 2)  # the second hour runs past the end
    assert shifted[0] == pytest.approx(35.0) and math.isnan(shifted[1])
    hours = Series(t, H, np.array([1.0, 2.0]))
    assert hours.resample(t, 900, 8).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    prices = np.random.default_rng(1).uniform(-500, 4000, 96)
    day = Series(t, H, prices).resample(t, 900, 4 * 96)
    assert np.array_equal(day, np.repeat(prices, 4))  # the values themselves, bit for bit
    before = hours.resample(t - 900, 900, 2)
    assert math.isnan(before[0]) and before[1] == 1.0
    assert hours.resample(t + 1800, H, 1)[0] == pytest.approx(1.5)  # straddling two values
    gap = Series(t, 900, np.array([1.0, np.nan, 3.0, 4.0]))
    assert math.isnan(gap.resample(t, H, 1)[0])
    assert gap.resample(t + 1800, 900, 2).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError):
        hours.values[0] = 5.0  # read-only


def test_stale_future_and_past_documents_are_refused() -> None:
    stale = normalized(energy_price_eur_per_mwh=[1, 2]).replace("2026-03-01T11", "2026-02-27T11")
    with pytest.raises(SignalError, match=r"stale: .*older than 36 h") as err:
        parse_signals(stale, now_s=NOW)
    assert isinstance(err.value, GridtaoError)
    assert parse_signals(stale, now_s=NOW, max_age_s=100 * H).energy_price_eur_per_mwh is not None
    future = normalized(energy_price_eur_per_mwh=[1, 2]).replace("T11:00", "T14:00")
    with pytest.raises(SignalError, match="check the clocks"):
        parse_signals(future, now_s=NOW)
    past = json.dumps({"version": 1, "issued_at": NOW - H, "start": NOW - 5 * H, "mtu_s": H,
                       "energy_price_eur_per_mwh": [1, 2, 3], "carbon_g_per_kwh": [1, 2]})
    with pytest.raises(SignalError, match="everything in the past"):
        parse_signals(past, now_s=NOW)


def test_a_bad_series_is_left_out_with_a_warning_and_the_rest_kept() -> None:
    doc = normalized(energy_price_eur_per_mwh=[50, 20_000],
                     carbon_g_per_kwh=[100, -5],
                     reserve_price_eur_per_mw_h={"ffr": [3, 4], "fcr-x": [1, 1],
                                                 "fcr-n": [-10_001, 1]})
    sig = parse_signals(doc, now_s=NOW)
    assert sig.energy_price_eur_per_mwh is None and sig.carbon_g_per_kwh is None
    assert list(sig.reserve_price_eur_per_mw_h) == ["ffr"]
    text = "\n".join(sig.warnings)
    assert "energy_price_eur_per_mwh: 20000 at 2026-03-01T13:00:00Z is outside [-10000, 10000]" \
        in text
    assert "carbon_g_per_kwh: -5 at" in text and "outside [0, 2000]" in text
    assert f"{RESERVE}.fcr-x: unknown product kind" in text and "fcr-d-up" in text
    assert f"{RESERVE}.fcr-n: -10001" in text
    nan = normalized(carbon_g_per_kwh=[100, float("nan")], energy_price_eur_per_mwh=[1, 2])
    sig = parse_signals(nan, now_s=NOW)  # json writes NaN, which is not JSON's null
    assert sig.carbon_g_per_kwh is None and "is not a number" in sig.warnings[0]
    assert sig.warnings[0].endswith("; the whole series left out")
    assert sig.energy_price_eur_per_mwh is not None
    with pytest.raises(SignalError, match="no usable series: carbon_g_per_kwh"):
        parse_signals(normalized(carbon_g_per_kwh=[-1]), now_s=NOW)


def test_documents_that_are_nothing_known() -> None:
    for text, reason in (("hello", "not JSON, XML or CSV"), ("{nope", "not valid JSON"),
                         ('{"zone": "FI"}', "unknown JSON shape"),
                         ("[1, 2]", "not an object"),
                         ('{"version": 2, "issued_at": 1}', "version 2"),
                         (b"\xff\xfe\x00", "not UTF-8")):
        with pytest.raises(SignalError, match=reason):
            parse_signals(text, now_s=NOW)
    with pytest.raises(SignalError, match="unknown format"):
        parse_signals("{}", now_s=NOW, fmt="yaml")  # type: ignore[arg-type]
    with pytest.raises(SignalError, match="milliseconds"):
        parse_signals(normalized(energy_price_eur_per_mwh=[1]).replace(
            '"2026-03-01T11:00:00Z"', str(NOW * 1000)), now_s=NOW)


def test_merge_takes_each_series_from_the_newest_document() -> None:
    prices = parse_signals(entsoe(entsoe_series("PT60M", "2026-03-01T23:00Z",
                                                "2026-03-02T01:00Z", {1: 40, 2: 41})), now_s=NOW)
    carbon = parse_signals(json.dumps(
        {"zone": "FI", "updatedAt": "2026-03-01T11:50:00.250Z",
         "forecast": [{"carbonIntensity": 120, "datetime": "2026-03-01T12:00:00Z"},
                      {"carbonIntensity": 80, "datetime": "2026-03-01T13:00:00Z"}]}), now_s=NOW)
    both = json.dumps({"version": 1, "issued_at": "2026-03-01T11:30:00Z", "source": "feed",
                       "start": NOW, "mtu_s": H, "energy_price_eur_per_mwh": [60, 61],
                       "carbon_g_per_kwh": [500, 500],
                       "reserve_price_eur_per_mw_h": {"fcr-d-up": [12, 13]}})
    mid = parse_signals(both, now_s=NOW)
    for merged in (merge(merge(prices, carbon), mid), merge(mid, merge(carbon, prices))):
        assert values(merged.energy_price_eur_per_mwh) == [60, 61]  # 11:30 beats 11:00
        assert values(merged.carbon_g_per_kwh) == [120, 80]  # 11:50 beats 11:30
        assert values(merged.reserve_price_eur_per_mw_h["fcr-d-up"]) == [12, 13]
        assert merged.provenance[CARBON].source == "electricitymaps:FI"
        assert merged.provenance[ENERGY].issued_at_s == utc("2026-03-01T11:30")
        assert merged.issued_at_s == utc("2026-03-01T11:50") + 0.25
        assert set(merged.source.split("+")) == {"entsoe:10YFI-1--------U",
                                                 "electricitymaps:FI", "feed"}
    # the normalized form keeps each series' provenance through a round trip
    merged = merge(merge(prices, carbon), mid)
    again = parse_signals(json.dumps(merged.to_json()), now_s=NOW)
    assert again.provenance == merged.provenance
    for name, s in merged.series().items():
        assert again.series()[name].start_s == s.start_s and values(again.series()[name]) == \
            values(s)
    later = merged.fresh(NOW + 2 * H)  # the carbon forecast ended at 14:00
    assert later.carbon_g_per_kwh is None and "carbon_g_per_kwh: ends before now" in \
        later.warnings[-1]
    assert merged.fresh(NOW + 40 * H).series() == {}


def test_signals_refuse_unknown_kinds_when_built_directly() -> None:
    s = Series(NOW, H, np.array([1.0]))
    with pytest.raises(ValueError, match="unknown product kinds"):
        Signals(NOW, "x", reserve_price_eur_per_mw_h={"fcr-x": s})
    sig = Signals(NOW, "x", energy_price_eur_per_mwh=s)
    assert sig.provenance[ENERGY].source == "x"
