"""Shapes world: scenes are deterministic and validated, renders are deterministic with exact masks."""

import json

import pytest
import torch

from pairfree.world import COLORS, FULL, LITE, Obj, Scene, SceneError, caption, render, sample_scene

SPECS = pytest.mark.parametrize("spec", [FULL, LITE], ids=lambda s: s.name)


@SPECS
def test_same_seed_same_scene_and_bytes(spec):
    a, b = sample_scene(123, spec), sample_scene(123, spec)
    assert a == b and a.to_json() == b.to_json()
    ia, _ = render([a], 32)
    ib, _ = render([b], 32)
    assert torch.equal(ia, ib)
    assert sample_scene(124, spec) != a


@SPECS
def test_json_round_trip(spec):
    for seed in range(20):
        s = sample_scene(seed, spec)
        assert Scene.from_json(s.to_json(), spec=spec) == s


@SPECS
def test_scenes_keep_to_their_spec(spec):
    """Every sampled scene uses only its spec's vocabulary, grid and object count."""
    for seed in range(200):
        sc = sample_scene(seed, spec)
        assert sc.spec == spec and spec.min_objects <= len(sc.objects) <= spec.max_objects
        assert sc.background in spec.colors and sc.background_texture in spec.textures
        for o in sc.objects:
            assert o.shape in spec.shapes and o.color in spec.colors and o.texture in spec.textures
            assert o.size in spec.size_names and 0 <= o.row < spec.grid and 0 <= o.col < spec.grid


def test_a_lite_scene_is_refused_as_full_and_vice_versa():
    d = Scene("blue", "dots", (Obj("star", "red", "solid", "large", 2, 2),)).to_dict()
    with pytest.raises(SceneError, match="background_texture: unknown value 'dots'"):
        Scene.from_dict(d, spec=LITE)
    d = Scene("blue", "solid", (Obj("circle", "red", "solid", "small", 1, 1),), spec=LITE).to_dict()
    assert Scene.from_dict(d, spec=LITE).spec == LITE
    with pytest.raises(SceneError, match="size: unknown value"):
        Scene.from_dict({**d, "objects": [{**d["objects"][0], "size": "medium"}]}, spec=LITE)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(background="teal"), "scene.background: unknown value 'teal'; allowed: red"),
        (lambda d: d["objects"][0].update(shape="hexagon"), "scene.objects[0].shape: unknown value 'hexagon'"),
        (lambda d: d["objects"][0].update(row=3), "scene.objects[0].row: expected an integer in 0..2, got 3"),
        (lambda d: d["objects"][0].pop("color"), "scene.objects[0]: missing field(s) ['color']"),
        (lambda d: d.update(lighting="dim"), "scene: unknown field(s) ['lighting']"),
        (lambda d: d["objects"].append(dict(d["objects"][0])), "is already taken"),
    ],
)
def test_bad_scene_names_the_field(mutate, message):
    d = next(sc for sc in map(sample_scene, range(100)) if len(sc.objects) == 2).to_dict()
    mutate(d)
    with pytest.raises(
        SceneError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        Scene.from_dict(d)


def test_bad_json_text():
    with pytest.raises(SceneError, match="scenes.json: not valid JSON"):
        Scene.from_json("{", where="scenes.json")


@pytest.mark.parametrize("resolution", [32, 64])
def test_masks_are_object_coverage(resolution):
    """A lone object's mask covers its area; pixels outside every mask show the background colour exactly."""
    scene = Scene("blue", "solid", (Obj("square", "red", "solid", "large", 1, 1),))
    image, masks = render([scene], resolution)
    m = masks[0, 0]
    # square half-extent 0.85 * 0.155 of the canvas -> area (2 * 0.85 * 0.155)^2 of the canvas
    expect = (2 * 0.85 * FULL.half_extent("large")) ** 2 * resolution**2
    assert abs(m.sum().item() - expect) < 0.05 * expect
    outside = masks[0].sum(0) == 0
    blue = torch.tensor(COLORS["blue"]) / 255
    assert torch.allclose(image[0][:, outside], blue[:, None].expand(3, int(outside.sum())))
    inside = m == 1
    red = torch.tensor(COLORS["red"]) / 255
    assert torch.allclose(image[0][:, inside], red[:, None].expand(3, int(inside.sum())))
    assert masks[0, 1:].abs().sum() == 0


@SPECS
def test_every_shape_renders_inside_its_cell(spec):
    g = spec.grid
    for shape in spec.shapes:
        scene = Scene("white", "solid", (Obj(shape, "black", "solid", "large", 0, g - 1),), spec=spec)
        _, masks = render([scene], 64)
        m = masks[0, 0]
        assert m.sum() > 20, shape
        ys, xs = torch.nonzero(m, as_tuple=True)
        cell = 64 / g
        assert ys.max() < cell and xs.min() >= (g - 1) * cell, shape  # top-right cell only


def test_a_batch_of_two_worlds_is_refused():
    from pairfree.world.spec import SpecError

    with pytest.raises(SpecError, match="one batch holds scenes of worlds"):
        render([sample_scene(0, FULL), sample_scene(0, LITE)], 32)


def test_batched_equals_single():
    scenes = [sample_scene(s) for s in range(6)]
    batch, bmasks = render(scenes, 32)
    for i, sc in enumerate(scenes):
        one, omasks = render([sc], 32)
        assert torch.equal(batch[i], one[0]) and torch.equal(bmasks[i], omasks[0])


def test_caption_mentions_every_object_and_background():
    for seed in range(30):
        sc = sample_scene(seed)
        text = caption(sc, seed).lower()
        assert sc.background in text
        for o in sc.objects:
            assert f"{o.color} {o.shape}" in text


def test_objects_visible_against_background():
    for seed in range(50):
        sc = sample_scene(seed)
        assert all(o.color != sc.background for o in sc.objects)
        json.loads(sc.to_json())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_render_on_the_gpu_matches_the_cpu():
    """The same pictures and masks drawn on the GPU (every shape, texture and style among 64 scenes)."""
    import dataclasses

    from pairfree.world.scene import STYLES

    scenes = [sample_scene(i) for i in range(64)]
    scenes = [dataclasses.replace(sc, style=STYLES[i % len(STYLES)]) for i, sc in enumerate(scenes)]
    cpu_images, cpu_masks = render(scenes, 32)
    gpu_images, gpu_masks = render(scenes, 32, device="cuda")
    assert gpu_images.is_cuda and gpu_masks.is_cuda
    for gpu, cpu in ((gpu_images.cpu(), cpu_images), (gpu_masks.cpu(), cpu_masks)):
        diff = (gpu - cpu).abs()  # a sub-sample exactly on an edge may fall either way: one of 16 per pixel
        assert (diff > 1e-5).float().mean() < 1e-3 and diff.max() <= 1 / 16 + 1e-5, diff.max()
