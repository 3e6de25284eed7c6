"""Jump-forward for response_format's JSON: the text an answer's schema leaves no choice about, written for the
model instead of by it.

Once a flat object's string value closes, its schema says what follows: a comma, the next key, the colon and the
quote that opens the next value (`,"competition":"`). The model would spend a decode step on each of those tokens,
the output layer (on Gemma 3 270M, 168M of its 268M weights per token) and a grammar-checked sample included, to
write what was never in doubt. `JsonJump` follows the answer's text and says which text is forced; the engine
feeds those tokens in the next step's batch with no logits asked for, and the model goes on from the value.

The model's own layout is kept: it writes the opening `{"` itself, and if it puts whitespace between them (it
pretty-prints), only the rest of each key's name (and of an enum value) is forced, never the quotes or the
whitespace around it. A model that writes compact JSON, as the application's worked examples show it, gets every
fixed piece forced. The grammar still judges every forced token, so an answer stays exactly as valid as without
jump-forward. Only schemas whose order and shape the grammar fixes are followed: an object whose properties are
all required and no others allowed, with string, enum, number, integer or boolean values, or arrays of strings.
Anything else: no jump-forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["JsonJump"]

_SPACE = " \t\n\r"


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "string", "enum", "array" (of strings) or "scalar" (number, integer, boolean: the model writes it)
    options: tuple[str, ...] = ()  # an enum's values as JSON text, without the opening quote
    min_items: int = 0
    max_items: int | None = None


def _field(name: str, spec: Any) -> _Field | None:
    if not isinstance(spec, dict) or {"$ref", "anyOf", "oneOf", "allOf", "pattern", "format"} & set(spec):
        return None
    values = spec.get("enum", [spec["const"]] if "const" in spec else None)
    kind = spec.get("type")
    if values is not None:
        if not values or not all(isinstance(value, str) for value in values):
            return None  # an integer range spelled as an enum is the model's to write
        return _Field(name, "enum", tuple(json.dumps(value, ensure_ascii=False)[1:] for value in values))
    if kind == "string":
        return _Field(name, "string")
    if kind in ("integer", "number", "boolean"):
        return _Field(name, "scalar")
    items = spec.get("items")
    least, most = spec.get("minItems", 0), spec.get("maxItems")
    if (kind == "array" and isinstance(items, dict) and _field("item", items) == _Field("item", "string")
            and isinstance(least, int) and (most is None or isinstance(most, int))):
        return _Field(name, "array", min_items=least, max_items=most)
    return None


def _fields(schema: Any) -> tuple[_Field, ...] | None:
    """The fields of a schema jump-forward can follow, in the grammar's order; None for any other schema."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or schema.get("additionalProperties", False):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties or set(schema.get("required", ())) != set(properties):
        return None
    fields = [_field(name, spec) for name, spec in properties.items()]
    if any(field is None or '"' in field.name or "\\" in field.name for field in fields):
        return None
    return tuple(field for field in fields if field is not None)


class JsonJump:
    """Follows one answer's JSON, character by character, and says what text must come next (`forced`)."""

    def __init__(self, fields: tuple[_Field, ...]) -> None:
        self.fields = fields
        self.state = "start"
        self.index = 0  # the field being written
        self.text = ""  # the key or string value being written, as JSON text
        self.items = 0  # items of the array being written
        self.compact: bool | None = None  # whether the model wrote `{"` with no whitespace (None: not yet)
        self._gap = ""  # whitespace since the last structural character
        self._escape = False

    @classmethod
    def for_schema(cls, schema: Any) -> JsonJump | None:
        """A follower for answers to `schema`, or None when its shape is not one jump-forward knows."""
        fields = _fields(schema)
        return cls(fields) if fields else None

    @property
    def done(self) -> bool:
        """Whether the object is closed: the answer can only end."""
        return self.state == "done"

    def lose(self) -> None:
        """Stop following (the text went somewhere this follower does not know): nothing is forced any more."""
        self.state = "lost"

    def feed(self, text: str) -> None:
        for char in text:
            if self.state == "lost":
                return
            self._char(char)

    def forced(self) -> str:
        """The text that must come next ("" when the model has a choice, whitespace included)."""
        state, field = self.state, self.fields[self.index] if self.index < len(self.fields) else None
        # Laid out by the model: the rest of a name, not the quote that ends it, which the model writes merged with
        # what follows as its tokenizer does (`": "`); a quote forced alone led it to `"poem" : "` and a digit loop.
        if state == "key" and field is not None and field.name.startswith(self.text):
            rest = field.name[len(self.text):]
            return rest + '":' + self._open(self.index) if self.compact else rest
        if state == "string" and field is not None and field.kind == "enum":
            matches = [option for option in field.options if option.startswith(self.text)]
            if len(matches) != 1:
                return ""
            return matches[0][len(self.text):] + self._after() if self.compact else matches[0][len(self.text):-1]
        if not self.compact:
            return ""
        if state == "object":
            return self._key(self.index)
        if state == "colon":
            return ":" + self._open(self.index)
        if state == "value":
            return self._open(self.index)
        if state == "array" and self.items < self.fields[self.index].min_items:
            return '"'
        if state == "item_end" and self.items == self.fields[self.index].max_items:
            return "]" + self._after()
        if state == "next_item":
            return '"'
        return self._after() if state == "after" else ""

    def _key(self, index: int) -> str:
        return '"' + self.fields[index].name + '":' + self._open(index)

    def _open(self, index: int) -> str:
        field = self.fields[index]
        if field.kind == "array":
            return '["' if field.min_items else "["
        return '"' if field.kind in ("string", "enum") else ""

    def _after(self) -> str:
        return "," + self._key(self.index + 1) if self.index + 1 < len(self.fields) else "}"

    def _char(self, char: str) -> None:
        state = self.state
        if state in ("key", "string", "item"):
            self._in_string(char)
        elif char in _SPACE and state != "scalar":
            self._gap += char
        elif state == "scalar" or (state == "value" and self.fields[self.index].kind == "scalar"):
            self.state = "scalar"
            self._in_scalar(char)
        else:
            self.state = _NEXT.get((state, char), "lost")
            self._entered(state)
            self._gap = ""

    def _entered(self, before: str) -> None:
        """What a structural character changed besides the state: the field, the text, the item count."""
        if self.state in ("key", "string", "item"):
            self.text = ""
            if self.compact is None:
                self.compact = not self._gap
        elif self.state == "object" and before == "after":
            self.index += 1
            if self.index >= len(self.fields):
                self.state = "lost"
        elif self.state == "array":
            self.items = 0
        if self.state == "string" and self.fields[self.index].kind not in ("string", "enum"):
            self.state = "lost"
        elif self.state == "array" and self.fields[self.index].kind != "array":
            self.state = "lost"

    def _in_string(self, char: str) -> None:
        if self._escape:
            self._escape = False
        elif char == "\\":
            self._escape = True
        elif char == '"':
            self._closed_string()
            return
        self.text += char

    def _closed_string(self) -> None:
        if self.state == "key":
            self.state = "colon" if self.text == self.fields[self.index].name else "lost"
        elif self.state == "item":
            self.items += 1
            self.state = "item_end"
        else:
            self.state = "after"

    def _in_scalar(self, char: str) -> None:
        if char in _SPACE:
            self.state = "after"
        elif char in ",}":
            self.state = "after"
            self._char(char)
        elif not (char.isalnum() or char in "+-."):
            self.state = "lost"


# (state, structural character) -> the next state; any pair not here loses the follower.
_NEXT = {
    ("start", "{"): "object",
    ("object", '"'): "key",
    ("colon", ":"): "value",
    ("value", '"'): "string",
    ("value", "["): "array",
    ("array", '"'): "item",
    ("array", "]"): "after",
    ("item_end", ","): "next_item",
    ("item_end", "]"): "after",
    ("next_item", '"'): "item",
    ("after", ","): "object",
    ("after", "}"): "done",
}
