"""The question forms the embedded model was trained on, and whether a question is one of them.

The forms are exactly those ``world.questions_for`` writes (the tokenizer is byte-level and case-sensitive, and
training used the exact wording), built from the world's own colour and shape names, so a question matches when
the model saw questions of that form in training. ``question_forms()`` is the pick-list the app offers;
``question_type()`` says which form a question has (None: not one the model knows).
"""

from __future__ import annotations

import re

from . import world

_C = "(?:" + "|".join(world.COLOUR_NAMES) + ")"
_S = "(?:" + "|".join(world.SHAPES) + ")"
_OBJ = f"{_C} {_S}"

# (type, form shown to a visitor, example, regular expression); "where" was asked in training only.
FORMS = (
    ("colour", "What colour is the <shape>?", "What colour is the circle?", f"What colour is the {_S}\\?"),
    ("shape", "What shape is the <colour> object?", "What shape is the red object?",
     f"What shape is the {_C} object\\?"),
    ("exist", "Is there a <colour> <shape>?", "Is there a red circle?", f"Is there a {_OBJ}\\?"),
    ("count", "How many objects are there?", "How many objects are there?", "How many objects are there\\?"),
    ("position", "Is the <colour> <shape> left or right of the <colour> <shape>?",
     "Is the red circle left or right of the blue square?", f"Is the {_OBJ} left or right of the {_OBJ}\\?"),
    ("position", "Is the <colour> <shape> above or below the <colour> <shape>?",
     "Is the red circle above or below the blue square?", f"Is the {_OBJ} above or below the {_OBJ}\\?"),
    ("where", "Is the <colour> <shape> on the left or the right?", "Is the red circle on the left or the right?",
     f"Is the {_OBJ} on the left or the right\\?"),
    ("where", "Is the <colour> <shape> at the top or the bottom?", "Is the red circle at the top or the bottom?",
     f"Is the {_OBJ} at the top or the bottom\\?"),
)
_PATTERNS = [(t, re.compile(rx)) for t, _, _, rx in FORMS]


def question_forms() -> list[dict]:
    """The forms as plain values, for a pick-list: ``type`` (the world's question type), ``form`` (with
    ``<colour>`` / ``<shape>`` slots), ``example`` (a full question of that form), ``evaluated`` (False for the
    training-only "where" forms, which the model's measured accuracy does not cover), plus the slot values
    (``colours``, ``shapes``)."""
    return [{"type": t, "form": form, "example": example, "evaluated": t in world.QUESTION_TYPES,
             "colours": list(world.COLOUR_NAMES), "shapes": list(world.SHAPES)} for t, form, example, _ in FORMS]


def question_type(question: str) -> str | None:
    """The world's question type whose form ``question`` has exactly (surrounding spaces ignored, as the model reads
    it), or None."""
    text = str(question).strip()
    return next((t for t, rx in _PATTERNS if rx.fullmatch(text)), None)
