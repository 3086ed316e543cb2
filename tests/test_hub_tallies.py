"""The ingest's plain-number metrics expose what prometheus_client's own Counter
and Histogram would, sample for sample (hub/mqtt/tallies.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from hub.mqtt.ingest import LAG_BUCKETS
from hub.mqtt.tallies import LagHistogram, MessageTallies

_values = st.lists(st.one_of(st.sampled_from(LAG_BUCKETS),  # exactly on a bound
                             st.floats(0, 120, allow_nan=False)), max_size=60)


def _samples(registry: CollectorRegistry, prefix: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines()
            if line.startswith(prefix) and "_created" not in line]


@given(_values)
def test_the_lag_histogram_matches_prometheus_clients(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lag = LagHistogram(LAG_BUCKETS, ours)
    reference = Histogram("yizhan_hub_ingest_lag_seconds", LagHistogram.HELP,
                          buckets=LAG_BUCKETS, registry=theirs)
    for v in values:
        lag.observe(v)
        reference.observe(v)
    name = "yizhan_hub_ingest_lag_seconds"
    assert _samples(ours, name) == _samples(theirs, name)
    assert ours.get_sample_value(f"{name}_count") == len(values)


def test_message_tallies_show_every_pair_from_the_start() -> None:
    registry = CollectorRegistry()
    tallies = MessageTallies(["state", "event"], ["applied", "invalid"], registry)
    for _ in range(3):
        tallies.inc("event", "applied")
    tallies.inc("state", "invalid")
    got = {(k, r): registry.get_sample_value("yizhan_hub_messages_total",
                                             {"kind": k, "result": r})
           for k in ("state", "event") for r in ("applied", "invalid")}
    assert got == {("state", "applied"): 0, ("state", "invalid"): 1,
                   ("event", "applied"): 3, ("event", "invalid"): 0}
    assert "# TYPE yizhan_hub_messages_total counter" in generate_latest(registry).decode()
