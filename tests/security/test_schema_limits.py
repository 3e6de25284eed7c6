"""The schema limits themselves: each names its setting, the defaults pass the application's schemas."""

from __future__ import annotations

from typing import Any

import pytest

from agentic.config import load_settings
from agentic.errors import SchemaTooComplexError
from agentic.ideas.schemas import Analysis, Triage
from agentic.ml.schema_limits import SchemaLimits, pattern_cost


@pytest.mark.parametrize(("pattern", "cost"), [
    ("^a{0,30000}$", (30000, 0)), ("(a{0,40}){0,30}", (1200, 1)), ("a{0,50}b{0,50}", (50, 0)),
    (r"\{9999\}", (0, 0)), ("[{]{5}", (5, 0)), ("((((a))))", (0, 4)), ("(?:ab){3,7}c{2}", (7, 1)),
    ("[a-z{}]{3,}", (3, 0)), ("((a{2}){3}){4}", (24, 2)),
])
def test_pattern_cost_multiplies_nested_bounds(pattern: str, cost: tuple[int, int]) -> None:
    assert pattern_cost(pattern) == cost


@pytest.mark.parametrize(("schema", "setting"), [
    ({"type": "string", "maxLength": 1001}, "MODEL_SCHEMA_MAX_REPEAT=1,000"),
    ({"type": "array", "minItems": 5000}, "MODEL_SCHEMA_MAX_REPEAT=1,000"),
    ({"type": "string", "pattern": "(a{0,40}){0,30}"}, "MODEL_SCHEMA_MAX_REPEAT=1,000"),
    ({"type": "string", "pattern": "(" * 40 + "a" + ")" * 40}, "MODEL_SCHEMA_MAX_DEPTH=32"),
    ({"type": "string", "pattern": "a" * 1001}, "MODEL_SCHEMA_MAX_PATTERN=1,000"),
    ({"enum": list(range(1025))}, "MODEL_SCHEMA_MAX_ENUM=1,024"),
    ({"properties": {f"p{i}": {"type": "integer"} for i in range(2000)}}, "MODEL_SCHEMA_MAX_BYTES=32,768"),
])
def test_each_limit_is_a_400_naming_its_setting(schema: dict[str, Any], setting: str) -> None:
    with pytest.raises(SchemaTooComplexError, match=setting) as caught:
        SchemaLimits().check(schema)
    assert caught.value.status_code == 400 and caught.value.param == "response_format"


def test_depth_is_measured_without_recursion() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):  # deeper than Python's recursion limit
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaTooComplexError, match="MODEL_SCHEMA_MAX_DEPTH=32"):
        SchemaLimits(max_bytes=10**9).check(schema)


def test_limits_come_from_the_settings_and_pass_the_application_schemas() -> None:
    limits = SchemaLimits.from_settings(load_settings(env_file=None, model_schema_max_enum=3))
    assert limits.max_enum == 3 and limits.max_repeat == 1000
    for model in (Triage, Analysis):
        SchemaLimits().check(model.model_json_schema())
    with pytest.raises(SchemaTooComplexError, match="MODEL_SCHEMA_MAX_ENUM=3"):
        limits.check({"enum": [1, 2, 3, 4]})


def test_grammar_text_over_its_limit_is_refused() -> None:
    with pytest.raises(SchemaTooComplexError, match="MODEL_GRAMMAR_MAX_BYTES=1,024"):
        SchemaLimits(max_grammar_bytes=1024).check_grammar("root ::= " + '"a" ' * 400)
