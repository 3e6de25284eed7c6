"""Where a retry picks up a stopped answer: the last string value of partial JSON, and what is kept and avoided."""

from __future__ import annotations

import pytest

from agentic.ideas.resume import Resume, last_value

STRENGTHS = '{"market":"steady","strengths":["pre-orders","low rent compared to a shop"'


@pytest.mark.parametrize(("text", "value"), [
    (STRENGTHS, "low rent compared to a shop"),  # a list item just closed
    (STRENGTHS + '],"', "low rent compared to a shop"),  # ... and the next key begun: an empty open string
    ('{"market":"a b a b a', "a b a b a"),  # a value still being written
    ('{"market":""', ""),  # an empty value
    ('{"market":"x \\" y","competition":"', 'x \\" y'),  # an escaped quote does not end the string
    ('{"market"', None),  # a key only
    ('{"market":', None),
])
def test_last_value_is_the_last_string_not_followed_by_a_colon(text: str, value: str | None) -> None:
    found = last_value(text)
    assert (found[1] if found else None) == value
    if found:
        assert text[found[0]] == '"'


def test_a_resume_keeps_the_answer_up_to_the_value_and_avoids_its_start_each_time_it_stops_there() -> None:
    resume = Resume()
    assert resume.messages() == [] and resume.options() == {}
    resume.after(STRENGTHS)
    kept = '{"market":"steady","strengths":["pre-orders","'
    assert resume.messages() == [{"role": "assistant", "content": kept}]
    assert resume.options() == {"continue_final_message": True, "avoid_first": ["low rent compared to a shop"]}
    resume.after(kept + 'lower rent"')  # stopped at the same value again: both starts avoided
    assert resume.options()["avoid_first"] == ["low rent compared to a shop", "lower rent"]
    resume.after(kept + 'cheap"],"risks":[""')  # a later value: only its own start
    assert resume.answered == kept + 'cheap"],"risks":["' and resume.avoid == ['"']
    resume.after("no JSON")
    assert resume.answered == "" and resume.options() == {}


def test_the_early_check_of_a_continued_answer_sees_the_kept_part_too() -> None:
    seen: list[str] = []
    resume = Resume()
    assert resume.watched(None) is None
    resume.after(STRENGTHS)
    watched = resume.watched(lambda text: seen.append(text) or False)
    assert watched is not None and not watched("cheap")
    assert seen == ['{"market":"steady","strengths":["pre-orders","cheap']
