"""Edits: ground truth differs from the input exactly inside the mask, validation refuses no-ops and impossible
edits, the type mix holds, templates stay separate, and instruction records round-trip."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from pairfree.world import Obj, Scene, SceneError, sample_scene
from pairfree.world.captions import caption, caption_words
from pairfree.world.edits import (
    DEFAULT_MIX,
    EDIT_TYPES,
    TEMPLATES,
    Edit,
    EditError,
    apply_edit,
    check_mix,
    instruction_choices,
    refer,
    render_edits,
    sample_edit,
)
from pairfree.world.spec import FULL, LITE


def _scene(*objs, background="blue", style="none"):
    return Scene(background, "solid", tuple(objs), style)


RED_CIRCLE = Obj("circle", "red", "solid", "medium", 0, 0)
GREEN_STAR = Obj("star", "green", "stripes", "large", 1, 1)


def test_same_seed_same_edit_and_bytes():
    a, b = sample_edit(42), sample_edit(42)
    assert a.to_dict() == b.to_dict()
    ra, rb = render_edits([a], 32), render_edits([b], 32)
    for x, y in zip(ra, rb):
        assert torch.equal(x, y)
    assert sample_edit(43).to_dict() != a.to_dict()


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("kind", EDIT_TYPES)
def test_ground_truth_differs_from_input_exactly_inside_the_mask(kind, resolution):
    edits = [sample_edit(1000 + i, kind=kind) for i in range(24)]
    inputs, targets, masks = render_edits(edits, resolution)
    changed = (inputs != targets).any(1, keepdim=True)
    assert not changed[masks == 0].any(), "a pixel outside the change mask changed"
    for n, e in enumerate(edits):
        assert e.target != e.source
        inside = masks[n] > 0.5
        visibly = ((inputs[n] - targets[n]).abs().amax(0, keepdim=True) > 2 / 255) & inside
        if kind == "style":  # whole image may change; grayscale of a mostly gray scene changes little
            assert visibly.float().mean() > 0.01, e.to_dict()
        else:  # the mask is tight: a good part of it really changes
            assert visibly.sum() >= 0.1 * inside.sum() > 0, e.to_dict()
            if kind == "background":  # objects are not part of a background edit
                assert bool((masks[n] == 0).any()) == bool(e.source.objects)
            else:
                assert masks[n].mean() < 0.25


@pytest.mark.parametrize(
    "scene, kind, params, message",
    [
        (_scene(RED_CIRCLE), "color", {"object": 0, "color": "red"}, "no-op color edit: object 0 is already red"),
        (_scene(RED_CIRCLE), "color", {"object": 0, "color": "blue"}, "invisible"),
        (_scene(RED_CIRCLE), "color", {"object": 0, "color": "teal"}, "params.color: unknown value 'teal'; allowed"),
        (_scene(RED_CIRCLE), "color", {"object": 3, "color": "green"}, "params.object: expected an index in 0..0"),
        (_scene(), "remove", {"object": 0}, "impossible remove edit: the scene has no objects"),
        (
            _scene(*[Obj("circle", "red", "solid", "small", 0, c) for c in range(3)] + [GREEN_STAR]),
            "add",
            {"object": dataclasses.asdict(Obj("square", "red", "solid", "small", 2, 2))},
            "the scene is full",
        ),
        (_scene(RED_CIRCLE), "add", {"object": dataclasses.asdict(RED_CIRCLE)}, "cell (row=0, col=0) is taken"),
        (_scene(RED_CIRCLE), "add", {"object": {"shape": "hexagon"}}, "params.object: missing field"),
        (_scene(RED_CIRCLE), "adjust", {"object": 0, "row": 0, "col": 3}, "off the 3x3 canvas"),
        (_scene(RED_CIRCLE), "adjust", {"object": 0, "row": -1, "col": 0}, "off the 3x3 canvas"),
        (_scene(RED_CIRCLE, GREEN_STAR), "adjust", {"object": 0, "row": 1, "col": 1}, "is taken"),
        (_scene(RED_CIRCLE), "adjust", {"object": 0, "size": "medium"}, "no-op adjust edit"),
        (_scene(RED_CIRCLE), "replace", {"object": 0, "shape": "circle"}, "no-op replace edit"),
        (_scene(RED_CIRCLE), "texture", {"object": 0, "texture": "solid"}, "no-op texture edit"),
        (_scene(RED_CIRCLE), "background", {"color": "blue"}, "no-op background edit"),
        (_scene(RED_CIRCLE), "background", {"color": "red"}, "invisible"),
        (_scene(RED_CIRCLE), "background", {"color": "red", "texture": "dots"}, "exactly one of"),
        (_scene(RED_CIRCLE, style="invert"), "style", {"style": "outline"}, "already has style 'invert'"),
        (
            _scene(Obj("circle", "white", "solid", "small", 0, 0), background="gray"),
            "style",
            {"style": "grayscale"},
            "already gray",
        ),
        (_scene(RED_CIRCLE), "rotate", {}, "unknown edit type 'rotate'; allowed: color"),
    ],
)
def test_validation_refuses_noops_and_impossible_edits(scene, kind, params, message):
    with pytest.raises(EditError, match=re.escape(message)):
        apply_edit(scene, kind, params)


def test_type_mix_holds():
    n = 4000
    counts = {t: 0 for t in EDIT_TYPES}
    for s in range(n):
        counts[sample_edit(s).kind] += 1
    for t, p in DEFAULT_MIX.items():
        assert abs(counts[t] - n * p) < 4 * math.sqrt(n * p * (1 - p)), (t, counts)
    assert abs(DEFAULT_MIX["remove"] - 0.25) < 1e-9
    custom = {"color": 3.0, "remove": 1.0}
    kinds = [sample_edit(s, mix=custom).kind for s in range(400)]
    assert set(kinds) == {"color", "remove"} and 250 < kinds.count("color") < 350
    with pytest.raises(ValueError, match="unknown type"):
        check_mix({"recolor": 1.0})


def _matches(instruction: str, split: str) -> bool:
    for form in TEMPLATES[split].values():
        for t in form:
            pattern = re.escape(t)
            pattern = re.sub(r"\\\{\w+\\\}", ".+", pattern)
            if re.fullmatch(pattern, instruction):
                return True
    return False


def test_template_sets_word_the_same_edit_differently():
    assert TEMPLATES["train"].keys() == TEMPLATES["heldout"].keys() == TEMPLATES["unseen"].keys()
    assert TEMPLATES["wide"].keys() == TEMPLATES["train"].keys()
    for s in range(300):
        edits = {t: sample_edit(s, templates=t) for t in TEMPLATES}
        train = edits["train"]
        wordings = {t: set(instruction_choices(train.source, train.kind, train.params, t)) for t in TEMPLATES}
        for t, e in edits.items():
            assert (e.kind, e.params) == (train.kind, train.params)
            assert e.instruction in wordings[t], (t, e.instruction)
        assert not wordings["train"] & wordings["heldout"] and not wordings["train"] & wordings["unseen"]
        assert not wordings["wide"] & wordings["heldout"] and not wordings["wide"] & wordings["unseen"]
        assert wordings["train"] <= wordings["wide"]


def test_wide_templates_share_verbs_across_edit_types_with_the_worlds_words():
    """The "wide" training set makes a verb ambiguous between edit types (its reason to exist) and uses only words
    the shipped text encoders' tokenizers know (they were built before it)."""

    def verbs(split):
        first = {}
        for form in ("color", "texture", "replace", "resize"):
            for t in TEMPLATES[split][form]:
                first.setdefault(t.split()[0], set()).add(form)
        return first

    assert verbs("wide")["turn"] == {"color", "texture", "replace", "resize"}
    assert verbs("wide")["make"] == {"color", "texture", "replace", "resize"}
    assert "replace" not in verbs("train")["make"]
    known = set(json.loads(Path("pairfree/weights/lite-teacher/text/tokenizer.json").read_text())["model"]["vocab"])
    known &= set(json.loads(Path("pairfree/weights/shapes-teacher/text/tokenizer.json").read_text())["model"]["vocab"])
    wide = {w for ts in TEMPLATES["wide"].values() for t in ts for w in _words(re.sub(r"\{\w+\}", "", t))}
    assert wide <= known, sorted(wide - known)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_heldout_wording_recombines_trained_words():
    """The benchmark's wording uses only words the generator's text encoder trained on (the teacher's captions and
    the training instructions); the "unseen" diagnostic brings words it never saw."""
    for spec in (LITE, FULL):
        trained = set()
        for s in range(2000):
            trained |= _words(caption(sample_scene(s, spec), s)) | _words(sample_edit(s, spec=spec).instruction)
        heldout, unseen = (
            set().union(*(_words(sample_edit(s, templates=t, spec=spec).instruction) for s in range(2000)))
            for t in ("heldout", "unseen")
        )
        assert heldout <= trained, sorted(heldout - trained)
        assert {"should", "want", "rid", "swap"} <= unseen - trained


def test_caption_words_are_exactly_the_words_captions_use():
    """``caption_words`` (built from the spec) against the words of sampled captions (the reference): every
    caption word is in it, it holds nothing the captions cannot say, and the instruction verbs are outside it."""
    for spec in (LITE, FULL):
        seen = set()
        for s in range(3000):
            sc = sample_scene(s, spec)
            style = spec.styles[s % len(spec.styles)]
            seen |= _words(caption(dataclasses.replace(sc, style=style), s))
            seen |= _words(caption(dataclasses.replace(sc, objects=()), s))
        assert seen == caption_words(spec), (sorted(seen ^ caption_words(spec)), spec.name)
        assert not {"make", "change", "remove", "move", "into", "to"} & caption_words(spec)


def test_references_are_unique():
    for s in range(300):
        sc = sample_scene(s)
        refs = [refer(sc, i) for i in range(len(sc.objects))]
        assert len(set(refs)) == len(refs), refs


def test_questions_and_edited_caption():
    e = Edit(_scene(RED_CIRCLE, GREEN_STAR), "remove", {"object": 0}, "remove the circle")
    verify, identity = e.questions()
    assert verify.images == "output" and verify.target == "No" and "Is there a circle" in verify.text
    assert identity.images == "pair" and identity.target == "Yes"
    assert "circle" not in e.edited_caption() and "green star" in e.edited_caption()
    e = Edit(_scene(RED_CIRCLE), "color", {"object": 0, "color": "yellow"}, "make the circle yellow")
    verify, identity = e.questions()
    assert verify.images == "pair" and verify.target == "Yes" and '"make the circle yellow"' in verify.text
    assert "yellow circle" in e.edited_caption()
    e = Edit(_scene(RED_CIRCLE), "remove", {"object": 0}, "remove the circle")
    assert "no objects" in e.edited_caption(0) or "empty" in e.edited_caption(0)
    styled = Edit(_scene(RED_CIRCLE), "style", {"style": "pixelate"}, "pixelate the image")
    assert styled.edited_caption().endswith("pixelated.")


def test_edit_records_round_trip_and_bad_records_name_the_field():
    for s in range(50):
        e = sample_edit(s)
        assert Edit.from_dict(e.to_dict()) == e
    d = sample_edit(5, kind="color").to_dict()
    with pytest.raises(EditError, match=r"edits.json\[0\]: missing field\(s\) \['instruction'\]"):
        Edit.from_dict({k: v for k, v in d.items() if k != "instruction"}, "edits.json[0]")
    bad = {**d, "source": {**d["source"], "background": "teal"}}
    with pytest.raises(SceneError, match=r"edits.json\[0\].source.background: unknown value 'teal'"):
        Edit.from_dict(bad, "edits.json[0]")
    noop = {**d, "params": {**d["params"], "color": d["source"]["objects"][d["params"]["object"]]["color"]}}
    with pytest.raises(EditError, match="no-op color edit"):
        Edit.from_dict(noop, "edits.json[0]")


def test_scene_style_round_trip_and_default():
    sc = dataclasses.replace(sample_scene(3), style="outline")
    assert Scene.from_json(sc.to_json()) == sc
    d = sc.to_dict()
    d.pop("style")
    assert Scene.from_dict(d).style == "none"  # records written before styles existed still load
    with pytest.raises(SceneError, match="scene.style: unknown value 'sepia'"):
        Scene.from_dict({**sc.to_dict(), "style": "sepia"})
    assert caption(sc).endswith("as an outline drawing.")
