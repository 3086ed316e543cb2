"""yizhan/backoff.py: the one exponential backoff of every retry loop."""

from __future__ import annotations

import random

import pytest

from yizhan.backoff import Backoff


@pytest.mark.parametrize("jitter", [0.5, 0.25, 0.2, 0.0])
def test_each_wait_lies_in_the_upper_jitter_share_of_its_doubling_ceiling(jitter):
    rng = random.Random(4)
    b = Backoff(1.0, 30.0, rand=rng.random, jitter=jitter)
    for retry in range(1, 12):
        ceiling = min(30.0, 2.0 ** (retry - 1))
        waits = [b.delay(retry) for _ in range(200)]
        assert all((1 - jitter) * ceiling <= w <= ceiling for w in waits)
        if jitter:  # drawn, not fixed
            assert max(waits) - min(waits) > 0.8 * jitter * ceiling
        else:
            assert set(waits) == {ceiling}


def test_the_default_is_the_upper_half_as_the_mqtt_link_has_it():
    assert Backoff(0.5, 60.0, rand=lambda: 0.0).delay(3) == 1.0
    assert Backoff(0.5, 60.0, rand=lambda: 1.0).delay(3) == 2.0


@pytest.mark.parametrize(("minimum", "maximum", "jitter"),
                         [(0, 1, 0.5), (2, 1, 0.5), (1, 2, -0.1), (1, 2, 1.5)])
def test_a_backoff_that_cannot_be_is_refused(minimum, maximum, jitter):
    with pytest.raises(ValueError):
        Backoff(minimum, maximum, jitter=jitter)
