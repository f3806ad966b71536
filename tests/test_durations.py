"""Durations in words: what users read in metadata, plans, `describe` and errors."""

from datetime import timedelta

import pytest

from featureplane.durations import field_in_words, in_words


@pytest.mark.parametrize(
    ("duration", "words"),
    [
        (timedelta(days=7), "7 days"),
        (timedelta(days=1), "1 day"),
        (timedelta(hours=1, minutes=30), "1 hour 30 minutes"),
        (timedelta(days=2, seconds=1), "2 days 1 second"),
        (timedelta(microseconds=1), "1 microsecond"),
        (timedelta(0), "0 seconds"),
        (-timedelta(hours=6), "minus 6 hours"),
        (172800, "2 days"),
        (5400.0, "1 hour 30 minutes"),
    ],
)
def test_a_duration_reads_as_words(duration, words):
    assert in_words(duration) == words


def test_a_registry_duration_field_reads_as_words():
    assert field_in_words("ttl_seconds", 172800) == ("ttl", "2 days")
    assert field_in_words("ttl_seconds", None) == ("ttl", None)
    assert field_in_words("owner", "team:ads") == ("owner", "team:ads")


def test_an_age_reads_as_its_two_largest_units():
    age = timedelta(days=3, hours=4, minutes=12, seconds=7, microseconds=5)
    assert in_words(age, largest=2) == "3 days 4 hours"
    assert in_words(timedelta(minutes=25, seconds=3), largest=2) == "25 minutes 3 seconds"
    assert in_words(-timedelta(hours=2, minutes=1, seconds=1), largest=1) == "minus 2 hours"
