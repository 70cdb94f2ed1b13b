"""Load profiles and curves (torchship.perf.curve): what tune scores a setting by over a mix of loads."""

import pytest

from torchship.perf.curve import Point, curve_table, over_profile, parse_profile
from torchship.perf.tune import Trial, best_trial
from torchship.sdk.errors import BadInput


def test_a_profile_is_concurrency_share_pairs():
    assert parse_profile("1:0.7,16:0.3") == {1: 0.7, 16: 0.3}
    assert parse_profile(" 4 : 2 , 64:1") == {4: 2.0, 64: 1.0}
    assert parse_profile("16:.5") == {16: 0.5}


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "CONCURRENCY:SHARE"),
        ("16", "CONCURRENCY:SHARE"),
        ("1:0.5,1:0.5", "given twice"),
        ("0:1", "within 1..1024"),
        ("2000:1", "within 1..1024"),
        ("4:0", "above 0"),
        ("4:-1", "CONCURRENCY:SHARE"),
        ("a:1", "CONCURRENCY:SHARE"),
    ],
)
def test_a_bad_profile_says_what_is_wrong(text, says):
    with pytest.raises(BadInput, match=says):
        parse_profile(text)


def point(c, rps, p50, p99, failed=0):
    return Point(c, rps, p50, p99, failed)


def test_over_a_profile_throughput_is_time_weighted_and_p99_the_worst_load():
    points = [point(1, 1000, 1.0, 3.0), point(16, 4000, 4.0, 9.0), point(64, 5000, 12.0, 40.0)]
    throughput, p50, p99, failed = over_profile(points, {1: 0.75, 16: 0.25})
    assert throughput == pytest.approx(0.75 * 1000 + 0.25 * 4000)
    # request-weighted: 750 requests at 1 ms for every 1000 at 4 ms
    assert p50 == pytest.approx((750 * 1.0 + 1000 * 4.0) / 1750)
    assert p99 == 9.0 and failed == 0  # the 64-caller point is not in the profile
    with pytest.raises(BadInput, match=r"\[4\]"):
        over_profile(points, {4: 1.0})


def test_a_profile_can_prefer_what_a_single_load_would_not():
    """A 0 ms delay answers a lone caller at once; a 5 ms delay wins at 16 callers. Mostly idle: 0 ms wins."""
    no_wait = [point(1, 1000, 0.9, 2.0), point(16, 2500, 6.0, 15.0)]
    waits = [point(1, 180, 5.4, 6.0), point(16, 4000, 4.0, 9.0)]

    def trial(delay, points, profile):
        t, p50, p99, failed = over_profile(points, profile)
        return Trial(1, 8, delay, 1, t, p50, p99, failed, 1, tuple(points))

    mostly_idle = {1: 0.8, 16: 0.2}
    busy = {16: 1.0}
    assert best_trial([trial(0, no_wait, mostly_idle), trial(5, waits, mostly_idle)], 100).max_batch_delay == 0
    assert best_trial([trial(0, no_wait, busy), trial(5, waits, busy)], 100).max_batch_delay == 5


def test_measured_again_the_figures_at_each_load_are_averaged_too():
    a = Trial(1, 8, 1, 1, 900.0, 2.0, 9.0, 0, 1, (point(1, 800, 1.0, 3.0), point(16, 1000, 3.0, 9.0)))
    b = Trial(1, 8, 1, 1, 700.0, 4.0, 12.0, 1, 1, (point(1, 600, 2.0, 5.0, 1), point(16, 800, 5.0, 12.0)))
    both = a.again(b)
    assert (both.throughput, both.p50_ms, both.p99_ms, both.failed, both.runs) == (800.0, 3.0, 12.0, 1, 2)
    assert both.points == (point(1, 700.0, 1.5, 5.0, 1), point(16, 900.0, 4.0, 12.0))
    assert both.to_dict()["points"][0] == {
        "concurrency": 1,
        "throughput": 700.0,
        "p50_ms": 1.5,
        "p99_ms": 5.0,
        "failed": 1,
    }


def test_curves_side_by_side_with_ratios():
    headers, rows = curve_table(
        {
            "default": [point(1, 80, 12.5, 20.0), point(16, 2000, 8.0, 16.0)],
            "tuned": [point(1, 800, 1.25, 3.0), point(16, 3000, 5.0, 9.0)],
        }
    )
    assert headers[0] == "callers" and headers[-2:] == ["tuned/default req/s", "tuned/default p50"]
    assert rows[0] == [1, 80, 12.5, 20.0, 800, 1.25, 3.0, "10.00x", "0.10x"]
    assert rows[1][-2:] == ["1.50x", "0.62x"]
