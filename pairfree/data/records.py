"""The instruction-data format: JSONL, one record per (image, instruction).

Fields (the paper's public reimplementation's names are accepted as aliases, on the right):

    image            path, relative to the JSONL file's folder (or to ``image_root``)   input_image_path
    instruction      the edit instruction                                               edit_instruction
    type             the edit sub-type (color, texture, background, add, remove, …)     edit_type
    source_caption   a caption of the input image                                       caption, input_caption
    edited_caption   a caption of the image after the edit (the DMD teacher's prompt)   output_caption
    object           the object the edit names (required for remove, replace, color and texture)
    width, height    the image's size in pixels (optional; checked when present)
    provenance       which models and prompt version made the record (optional object)

Every record is validated on load; an error names the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pairfree.world.edits import JudgeQuestion, exists_question, identity_question, layout_question, verify_question

ALIASES = {
    "input_image_path": "image",
    "edit_instruction": "instruction",
    "edit_type": "type",
    "caption": "source_caption",
    "input_caption": "source_caption",
    "output_caption": "edited_caption",
}
REQUIRED = ("image", "instruction", "type", "edited_caption")
NEEDS_OBJECT = ("remove", "replace", "color", "texture")


class DataError(ValueError):
    """A dataset file or record that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class EditRecord:
    """One (image, instruction) training record."""

    image: str
    instruction: str
    type: str
    edited_caption: str
    source_caption: str = ""
    object: str = ""
    width: int = 0
    height: int = 0
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, {})}

    def questions(self) -> tuple[JudgeQuestion, JudgeQuestion]:
        """(verification, identity) as the paper asks them: remove asks "Is there <object> in the image?" of the
        output alone (target No) and whether the rest is the same; every other type asks whether the instruction
        was carried out and whether, apart from it, the images are the same."""
        if self.type == "remove":
            return (
                JudgeQuestion("verify", "output", exists_question(with_article(self.object, "a")), "No"),
                JudgeQuestion("identity", "pair", layout_question(with_article(self.object, "the")), "Yes"),
            )
        return (
            JudgeQuestion("verify", "pair", verify_question(self.instruction), "Yes"),
            JudgeQuestion("identity", "pair", identity_question(self.instruction), "Yes"),
        )


def with_article(phrase: str, article: str) -> str:
    """``phrase`` with ``article`` ("a" → "a"/"an", or "the") in place of any article it has."""
    words = phrase.strip().split()
    if words and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    rest = " ".join(words)
    if article == "a" and rest[:1].lower() in "aeiou" and rest:
        article = "an"
    return f"{article} {rest}"


def parse_record(raw, where: str) -> EditRecord:
    """One record from its JSON object; ``where`` ("file.jsonl:12") prefixes every error."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    d = {}
    for k, v in raw.items():
        name = ALIASES.get(k, k)
        if name in d and d[name] != v:
            raise DataError(f"{where}: field {name!r} given twice (as {k!r}) with different values")
        d[name] = v
    known = set(EditRecord.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; expected {sorted(known)} or {sorted(ALIASES)}")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    for k in ("image", "instruction", "type", "edited_caption", "source_caption", "object"):
        if k in d and (not isinstance(d[k], str) or (k in REQUIRED and not d[k].strip())):
            raise DataError(f"{where}: field {k!r}: expected a non-empty string, got {d[k]!r}")
    for k in ("width", "height"):
        if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0):
            raise DataError(f"{where}: field {k!r}: expected a non-negative integer, got {d[k]!r}")
    if "provenance" in d and not isinstance(d["provenance"], dict):
        raise DataError(f"{where}: field 'provenance': expected an object, got {d['provenance']!r}")
    if d["type"] in NEEDS_OBJECT and not d.get("object", "").strip():
        raise DataError(f"{where}: field 'object': required for type {d['type']!r} (the judge asks about it)")
    return EditRecord(**d)


def jsonl_lines(path: Path):
    """``(line number, parsed JSON)`` for each non-blank line of ``path``; a line that is not JSON is a
    :class:`DataError` naming the file and line."""
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def read_records(path: str | Path) -> list[EditRecord]:
    """Every record of a JSONL file (blank lines skipped), validated; an empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file")
    records = [parse_record(raw, f"{path}:{n}") for n, raw in jsonl_lines(path)]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def write_records(path: str | Path, records: list[EditRecord]) -> Path:
    """Write ``records`` as JSONL (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records))
    tmp.replace(path)
    return path
