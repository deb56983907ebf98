"""World datasets: deterministic, rank-sharded, balanced; the editor dataset never carries the ground truth;
the benchmark set round-trips from disk byte for byte; VQA answers agree with the scene records."""

import json
import re

import pytest
import torch
from torch.utils.data import DataLoader

from pairfree.cli import main as cli
from pairfree.world import render
from pairfree.world.bench import build_bench, load_bench, save_bench
from pairfree.world.datasets import (
    EDITOR_KEYS,
    CaptionImageDataset,
    EditorDataset,
    JudgeVQADataset,
    collate_vqa,
    item_seed,
)
from pairfree.world.edits import EDIT_TYPES, EditError, instruction_choices, render_edits
from pairfree.world.vqa import pair_question, single_question


def test_item_seeds_differ_by_split_and_seed():
    seeds = {item_seed(s, sp, i) for s in (0, 1) for sp in ("train", "val", "bench") for i in range(100)}
    assert len(seeds) == 600
    with pytest.raises(ValueError, match="split: expected one of train, val, bench"):
        item_seed(0, "test", 0)


@pytest.mark.parametrize("cls", [CaptionImageDataset, JudgeVQADataset, EditorDataset])
def test_deterministic_and_sharded_by_rank(cls):
    full = cls(12, seed=3)
    again = cls(12, seed=3)
    shards = [cls(12, seed=3, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    key = "image" if cls is not JudgeVQADataset else "images"
    for j in range(12):
        a, b = full[j], again[j]
        assert torch.equal(a[key], b[key])
        shard = shards[j % 3][j // 3]  # global item j lives on rank j % 3
        assert torch.equal(shard[key], a[key])
    other = cls(12, seed=4)
    assert not torch.equal(other[0][key], full[0][key]) or other[0] != full[0]
    with pytest.raises(ValueError, match="rank"):
        cls(12, rank=3, world_size=3)


def test_batched_fetch_equals_single_items():
    ds = EditorDataset(16, seed=1)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    for j in range(8):
        assert torch.equal(batch["image"][j], ds[j]["image"]) and batch["instruction"][j] == ds[j]["instruction"]


def test_editor_dataset_never_yields_target_or_mask():
    ds = EditorDataset(64, seed=0)
    for j in range(len(ds)):
        item = ds[j]
        assert tuple(item) == EDITOR_KEYS
        edit, _ = ds.example(ds.global_index(j))
        _, target, mask = render_edits([edit], ds.resolution)
        target = target[0] * 2 - 1
        assert torch.equal(item["image"], render([edit.source], 32)[0][0] * 2 - 1)
        tensors = [v for v in item.values() if isinstance(v, torch.Tensor)]
        assert len(tensors) == 1  # the input image only
        assert not torch.allclose(tensors[0], target, atol=1 / 255)
        text = repr({k: v for k, v in item.items() if k != "image"})
        assert edit.target.to_json() not in text and "mask" not in text and '"row"' not in text
        assert [q["target"] for q in item["questions"]] == [q.target for q in edit.questions()]


def test_vqa_is_exactly_balanced_and_has_both_kinds():
    ds = JudgeVQADataset(400, seed=0)
    items = [ds[j] for j in range(len(ds))]
    for kind in ("single", "pair"):
        answers = [it["answer"] for it in items if it["kind"] == kind]
        assert len(answers) > 150 and abs(answers.count("Yes") / len(answers) - 0.5) < 0.08
    assert [it["answer"] for it in items].count("Yes") == 200
    assert {it["images"].shape[0] for it in items} == {1, 2}
    batch = collate_vqa(items[:6])
    assert batch["label"].tolist() == [1, 0, 1, 0, 1, 0]


_ATTR = re.compile(r"Is the object at the (.+?) (?:a |an )?(\w+)\? Answer yes or no\.")


def test_single_image_answers_agree_with_the_scene():
    """Parse attribute questions back and check them against the scene record (independent of the generator)."""
    checked = 0
    for s in range(600):
        it = single_question(s, yes=s % 2 == 0)
        m = _ATTR.fullmatch(it.question)
        if not m:
            continue
        (scene,) = it.scenes
        (o,) = [o for o in scene.objects if scene.position_name(o) == m.group(1)]
        word = m.group(2)
        adjective = {"plain": "solid", "striped": "stripes", "dotted": "dots", "checkered": "checker"}
        truth = word in (o.shape, o.color, o.size) or adjective.get(word) == o.texture
        assert (it.answer == "Yes") == truth, (it.question, o)
        checked += 1
    assert checked > 150


def test_pair_questions_show_what_they_claim():
    for s in range(120):
        it = pair_question(s, yes=s % 2 == 0)
        a, b = render(list(it.scenes), 32)[0]
        if it.form in ("verify_unchanged", "identity_unchanged"):
            assert torch.equal(a, b)
        else:
            assert not torch.equal(a, b), it.form
        assert (it.answer == "Yes") == it.form.endswith(("_true", "identity_unchanged"))


def test_bench_round_trip_is_byte_identical(tmp_path):
    a = save_bench(tmp_path / "a", n_per_type=3, seed=0, command="test")
    b = save_bench(tmp_path / "b", n_per_type=3, seed=0, command="test")
    for name in ("cases.jsonl", "tensors.safetensors", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    bench = load_bench(a)
    assert [e.kind for e in bench.edits] == [t for t in EDIT_TYPES for _ in range(3)]
    inputs, targets, masks = render_edits(build_bench(3, 0), 32)
    assert torch.equal(bench.inputs, (inputs * 255).round() / 255) and torch.equal(bench.masks, masks)
    assert torch.equal(bench.targets, (targets * 255).round() / 255)
    train_instr = {EditorDataset(200)[j]["instruction"] for j in range(200)}
    assert not train_instr & {e.instruction for e in bench.edits}


def test_bench_with_training_templates_words_the_same_edits_differently(tmp_path):
    held = load_bench(save_bench(tmp_path / "h", n_per_type=4, seed=0, command="test"))
    seen = load_bench(save_bench(tmp_path / "t", n_per_type=4, seed=0, command="test", templates="train"))
    assert torch.equal(held.inputs, seen.inputs) and torch.equal(held.targets, seen.targets)
    assert [e.params for e in held.edits] == [e.params for e in seen.edits]
    for h, t in zip(held.edits, seen.edits):
        assert t.instruction in instruction_choices(t.source, t.kind, t.params, "train"), t.instruction
        assert h.instruction in instruction_choices(h.source, h.kind, h.params, "heldout"), h.instruction
        assert h.instruction not in instruction_choices(h.source, h.kind, h.params, "train"), h.instruction
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["templates"] == "train"


def test_bench_load_errors_name_the_file(tmp_path):
    out = save_bench(tmp_path / "b", n_per_type=1, command="test")
    lines = (out / "cases.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"type": "', '"type": "x')
    (out / "cases.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(EditError, match=r"cases.jsonl:3.type: unknown edit type"):
        load_bench(out)
    (out / "tensors.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="tensors.safetensors: missing"):
        load_bench(out)


@pytest.mark.parametrize("resolution", [32, 64])
def test_cli_edits_grid(tmp_path, resolution, capsys):
    out = tmp_path / "edits.png"
    assert cli(["world", "edits", "--n", "8", "--out", str(out), "--resolution", str(resolution)]) == 0
    from PIL import Image

    im = Image.open(out)
    assert im.size[1] > 8 * 128 and "8 edits" in capsys.readouterr().out
    assert cli(["world", "bench", "--out", str(tmp_path / "bench"), "--n-per-type", "2"]) == 0
    assert load_bench(tmp_path / "bench").inputs.shape == (16, 3, 32, 32)
