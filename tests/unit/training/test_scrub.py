"""Failed runs report what went wrong, not the data: library messages lose the values they quote before
they reach the termination message (and from there status, Events and alerts)."""
import pytest

from modelloop.training.errors import describe_exception, scrub


@pytest.mark.parametrize("message, expected", [
    ("could not convert string to float: 'alice@example.com'", "could not convert string to float: '…'"),
    ('invalid literal for int() with base 10: "4111 1111 1111 1111"', "invalid literal for int() with base 10: '…'"),
    ("Found unknown categories ['HIV+', 'diabetic'] in column 2 during fit",
     "Found unknown categories […] in column 2 during fit"),
    ("y contains previously unseen labels: [5, [7, 8]]", "y contains previously unseen labels: […]"),
    ("{'salary': 123456} is not allowed", "[…] is not allowed"),
    ("Input contains a value 1.5e+300 and -0.25", "Input contains a value … and …"),
    ("Error tokenizing data. C error: Expected 5 fields in line 3, saw 6",
     "Error tokenizing data. C error: Expected 5 fields in line 3, saw 6"),
    ("Input X contains NaN.", "Input X contains NaN."),
])
def test_data_values_are_scrubbed_and_structure_is_kept(message, expected):
    assert scrub(message) == expected


def test_described_exceptions_keep_their_type():
    assert describe_exception(ValueError("could not convert string to float: 'x'")) == (
        "ValueError: could not convert string to float: '…'")
