"""GBNF grammars for llama.cpp: a JSON schema's (response_format), and tool calls' (agentic.ml.tools).

llama-cpp-python's JSON-schema converter does the work; three fixes over it: integer minimum/maximum
ranges (which it ignores) become enums, raw control characters are kept out of strings (JSON forbids
them), and whitespace may break lines and indent, as models write JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...errors import InvalidRequestError
from ..tools import CALL_CLOSE, CALL_OPEN, ToolPlan

__all__ = ["object_gbnf", "schema_gbnf", "tool_gbnf"]

_STRING_CHAR = r'char ::= [^"\\] |'
_SPACE_RULE = 'space ::= " "?'
# Like llama.cpp's own converter, JSON may break lines and indent, as models write it: a single optional space
# pushed small models into `{ "name"...` on one line, and some of them never closed a string. Indentation stops
# at 8 characters, not llama.cpp's 20: a small model that could not write the token it wanted (a fourth list
# item) padded with whitespace up to the limit (23 of 57 answers of a `make run`; benchmarks/RESULTS.md).
_JSON_SPACE_RULE = r'space ::= (" " | "\n"{1,2} [ \t]{0,8})?'
_JSON_STRING_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
_ROOT_TRAILING_SPACE = re.compile(r"^(root ::= .*) space$", re.MULTILINE)


def _ranges_as_enums(schema: Any) -> Any:
    """llama.cpp's schema converter ignores integer minimum/maximum: spell a small range out as an enum."""
    if isinstance(schema, list):
        return [_ranges_as_enums(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _ranges_as_enums(value) for key, value in schema.items()}
    low, high = out.get("minimum"), out.get("maximum")
    if (out.get("type") == "integer" and "enum" not in out and isinstance(low, int) and isinstance(high, int)
            and 0 <= high - low <= 1000):
        out["enum"] = list(range(low, high + 1))
    return out


def schema_gbnf(grammar_module: Any, schema: dict[str, Any], param: str) -> str:
    """The GBNF of `schema` (its rule `root`), with the fixes above; a schema the converter refuses is a 400."""
    try:
        gbnf = str(grammar_module.json_schema_to_gbnf(json.dumps(_ranges_as_enums(schema))))
    except (AssertionError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # the converter asserts
        raise InvalidRequestError(f"{param}'s JSON schema cannot be enforced by llama.cpp: {exc}",
                                  param=param) from None
    gbnf = gbnf.replace(_STRING_CHAR, _JSON_STRING_CHAR).replace(_SPACE_RULE, _JSON_SPACE_RULE)
    # The answer ends where its JSON value does: whitespace allowed after it was written by 37 of 57 answers of a
    # `make run` (the end of turn ranks low after the closing brace), 3% of their tokens.
    return _ROOT_TRAILING_SPACE.sub(r"\1", gbnf, count=1)


def object_gbnf(grammar_module: Any) -> str:
    """response_format json_object: any JSON object, with the fixes above (llama-cpp-python's own JSON grammar
    indents up to 20 characters and allows whitespace after the closing brace)."""
    gbnf = schema_gbnf(grammar_module, {"type": "object"}, "response_format")
    body = re.search(r"^object ::= (.*) space$", gbnf, re.MULTILINE)
    return gbnf.replace("root ::= object", f"root ::= {body.group(1)}", 1) if body else gbnf


def tool_gbnf(grammar_module: Any, plan: ToolPlan) -> str:
    """Call blocks whose JSON follows the offered tools' schemas; with tool_choice auto, text instead.

    Text may not start with `<` or whitespace, so an answer is either text throughout or calls: a call is
    never written outside the grammar's hold.
    """
    call = re.sub(r"^root ::=", "tool-call ::=", schema_gbnf(grammar_module, plan.call_schema(), "tools"),
                  count=1, flags=re.MULTILINE)
    block = f'"{CALL_OPEN}" space tool-call space "{CALL_CLOSE}"'
    calls = f"space {block} (space {block})* space" if plan.parallel else f"space {block} space"
    if plan.call_required:
        return f"root ::= {calls}\n{call}"
    return f"root ::= {calls} | text\ntext ::= ([^< \\t\\n\\r] [^\\x00]*)?\n{call}"
