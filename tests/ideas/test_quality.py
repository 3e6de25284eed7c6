"""Each degeneracy rule on the answers the embedded model really gave (issue 14), and on sound answers."""

from __future__ import annotations

import pytest

from agentic.ideas.analyzer import EXAMPLES, instructions_for
from agentic.ideas.quality import EarlyCheck, Instructions, answer_problems, extreme_scores, loop_in, rule_of
from agentic.ideas.schemas import Analysis, Triage

TITLE = "Dog bakery subscription"
TRIAGE_SHOWN = instructions_for("light")
ANALYSIS_SHOWN = instructions_for("heavy")
SOUND = Analysis(market="Pet owners spend more on treats every year; local delivery is a growing niche.",
                 competition="Supermarket treat brands and a few national subscription boxes.",
                 strengths=["fresh local baking", "recurring revenue"], risks=["food safety rules", "churn"],
                 score=6, verdict="refine", reason="Demand is real but margins on small boxes are thin.")


def rules(answer: Analysis | Triage, shown: Instructions = ANALYSIS_SHOWN) -> list[str]:
    return [rule_of(problem) for problem in answer_problems(answer, TITLE, shown)]


def test_a_sound_answer_has_no_problem() -> None:
    assert answer_problems(SOUND, TITLE, ANALYSIS_SHOWN) == []
    triage = Triage(category="pet food", target_customer="dog owners in cities",
                    summary="Monthly boxes of fresh dog treats baked locally.")
    assert answer_problems(triage, TITLE, TRIAGE_SHOWN) == []


@pytest.mark.parametrize("reason", ["Why, in one sentence.", "why in one sentence", "In one sentence.",
                                    "Judge the idea you are given on its own merits"])
def test_a_field_repeating_its_description_or_the_instructions_is_caught(reason: str) -> None:
    problems = answer_problems(SOUND.model_copy(update={"reason": reason}), TITLE, ANALYSIS_SHOWN)
    assert [rule_of(p) for p in problems] == ["instructions"] and problems[0].startswith("reason repeats")


def test_a_field_copying_the_worked_example_is_caught() -> None:
    copied = EXAMPLES["analysis"].reason
    assert rules(SOUND.model_copy(update={"reason": copied})) == ["instructions"]


def test_a_category_shared_with_an_example_is_a_class_not_a_copy() -> None:
    """Four food ideas of the sample were filed under the example's "food and drink" and dropped as copies."""
    food = Triage(category=EXAMPLES["triage"].category, target_customer="families with food allergies",
                  summary="Weekly meal kits free of the common allergens.")
    assert answer_problems(food, "Allergy-safe meal kits", TRIAGE_SHOWN) == []
    copied = food.model_copy(update={"target_customer": EXAMPLES["triage"].target_customer})
    assert rules(copied, TRIAGE_SHOWN) == ["instructions"]  # the other fields are still held to the examples


@pytest.mark.parametrize("text", ["Why? Why? Why? Why?", "}, } } } } }", "In one sentence. In one sentence.",
                                  "20000000000000000000000", "good good good idea", "a b a b a b a b a b a b"])
def test_loops_are_caught(text: str) -> None:
    assert loop_in(text) is not None
    assert rules(SOUND.model_copy(update={"market": text + " and more words here"})) in (["loops"], ["empty"])


@pytest.mark.parametrize("text", ["Sales grow 10% a year... slowly.", "Rooms 1, 2 and 3 are rented.",
                                  "Very, very few competitors serve this niche today."])
def test_ordinary_text_is_not_a_loop(text: str) -> None:
    assert loop_in(text) is None


def test_a_field_with_no_words_is_caught() -> None:
    assert rules(SOUND.model_copy(update={"competition": "}} ]] ,,, ..."})) == ["empty"]


@pytest.mark.parametrize("customer", ["dog bakery", "Dog Bakery Subscription"])
def test_a_field_copying_the_title_is_caught(customer: str) -> None:
    triage = Triage(category="pet food", target_customer=customer, summary="Monthly boxes of dog treats.")
    assert rules(triage, TRIAGE_SHOWN) == ["title"]


def test_words_of_the_title_in_another_order_or_alone_are_fine() -> None:
    triage = Triage(category="bakery", target_customer="owners of a dog", summary="Monthly boxes of dog treats.")
    assert rules(triage, TRIAGE_SHOWN) == []


def test_repeated_list_items_and_a_strength_that_is_also_a_risk_are_caught() -> None:
    assert rules(SOUND.model_copy(update={"strengths": ["fresh baking", "Fresh baking!"]})) == ["list"]
    assert rules(SOUND.model_copy(update={"risks": ["churn", "recurring revenue"]})) == ["list"]


@pytest.mark.parametrize(("score", "verdict", "flagged"), [(10, "drop", True), (1, "pursue", True),
                                                           (8, "drop", True), (10, "pursue", False),
                                                           (1, "drop", False), (5, "pursue", False)])
def test_a_score_contradicting_the_verdict_is_caught(score: int, verdict: str, flagged: bool) -> None:
    assert rules(SOUND.model_copy(update={"score": score, "verdict": verdict})) == (["score"] if flagged else [])


def test_every_score_at_an_extreme_is_a_run_warning() -> None:
    assert extreme_scores([10, 1, 10, 10, 1]) == "all 5 scores are 1 or 10: the model is not telling the ideas apart"
    assert extreme_scores([10, 1, 10, 7, 1]) is None
    assert extreme_scores([10, 10, 1]) is None  # too few to tell


def test_two_fields_saying_the_same_are_caught() -> None:
    same = SOUND.model_copy(update={"market": "small business owners", "competition": "Small business owners."})
    assert answer_problems(same, TITLE, ANALYSIS_SHOWN) == [
        "market and competition say the same ('Small business owners.')"]


def _stops_at(answer: Analysis, title: str = TITLE) -> tuple[int, list[str]]:
    """Where EarlyCheck stops the answer's JSON fed one character at a time (its length: never), and why."""
    text, check = answer.model_dump_json(), EarlyCheck(Analysis, title, ANALYSIS_SHOWN)
    for end in range(1, len(text) + 1):
        if check(text[:end]):
            return end, check.problems
    return len(text), []


@pytest.mark.parametrize("update", [{"strengths": ["fresh local baking", EXAMPLES["analysis"].strengths[0]]},
                                    {"risks": ["churn", "churn"]},
                                    {"competition": "Pet owners spend more on treats every year."},
                                    {"market": "Dog bakery subscription"}])
def test_an_answer_is_stopped_as_soon_as_a_finished_value_is_degenerate(update: dict[str, object]) -> None:
    """Each finished string or list item is held to every rule: the answer stops right after the first bad one,
    with the problems the whole answer's check finds there, never on the sound answer."""
    assert _stops_at(SOUND) == (len(SOUND.model_dump_json()), [])
    bad = SOUND.model_copy(update={**update, "market": update.get("market", "Pet owners spend more on treats "
                                                                            "every year.")})
    end, problems = _stops_at(bad)
    text = bad.model_dump_json()
    assert end < len(text) and text[end - 1] == '"' and problems
    assert set(problems) <= set(answer_problems(bad, TITLE, ANALYSIS_SHOWN))
    assert not EarlyCheck(Analysis, TITLE, ANALYSIS_SHOWN)(text[:end - 1])  # not one character sooner


def test_a_string_still_being_written_is_stopped_when_it_loops_not_before() -> None:
    """A loop cannot be undone by more text; a share of distinct words can, and a last word may still grow."""
    looping = SOUND.model_copy(update={"reason": "Margins are thin " + "0" * 40})
    end, problems = _stops_at(looping)
    assert end < looping.model_dump_json().index("0" * 40) + 40 and problems[0].startswith("reason loops")
    check = EarlyCheck(Analysis, TITLE, ANALYSIS_SHOWN)
    assert not check('{"market":"good good goo')  # "goo" may become "goods"
    assert check('{"market":"good good good ') and check.problems[0].startswith("market loops")
    few = '{"market":"' + "a b " * 6  # few distinct words so far: new ones may follow
    assert not EarlyCheck(Analysis, TITLE, ANALYSIS_SHOWN)(few[:-1] + "c d e f g h i j k l")
