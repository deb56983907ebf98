"""The JSONL record format (validation, aliases, the paper's questions) and the dataset the trainer reads
(aspect-keeping crop, deterministic rank-sharded draws, skipped images counted and listed)."""

import json

import pytest
import torch
from PIL import Image

from pairfree.data.dataset import JsonlEditorDataset, read_image
from pairfree.data.records import DataError, parse_record, read_records
from pairfree.data.world import write_world_jsonl
from pairfree.world.spec import LITE

GOOD = {"image": "a.png", "instruction": "make the car red", "type": "color", "edited_caption": "a red car",
        "object": "car"}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_records_validate_with_line_and_field(tmp_path):
    reimpl = {"input_image_path": "b.png", "edit_instruction": "remove the dog", "edit_type": "remove",
              "edited_caption": "a park", "object": "dog", "width": 640, "height": 480}  # fmt: skip
    records = read_records(write_jsonl(tmp_path / "ok.jsonl", [GOOD, "", reimpl]))
    assert [r.image for r in records] == ["a.png", "b.png"] and records[1].type == "remove"
    cases = [
        ({k: v for k, v in GOOD.items() if k != "instruction"}, "bad.jsonl:2: missing field(s) ['instruction']"),
        ({**GOOD, "colour": 1}, "bad.jsonl:2: unknown field(s) ['colour']"),
        ({**GOOD, "object": ""}, "bad.jsonl:2: field 'object': required for type 'color'"),
        ({**GOOD, "width": -3}, "bad.jsonl:2: field 'width': expected a non-negative integer"),
        ({**GOOD, "instruction": 7}, "bad.jsonl:2: field 'instruction': expected a non-empty string"),
        ("{not json", "bad.jsonl:2: not valid JSON"),
        ([1, 2], "bad.jsonl:2: expected a JSON object"),
    ]
    for row, message in cases:
        with pytest.raises(DataError) as e:
            read_records(write_jsonl(tmp_path / "bad.jsonl", [GOOD, row]))
        assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no records"):
        read_records(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_questions_follow_the_paper_templates():
    verify, identity = parse_record({**GOOD, "type": "remove", "object": "the old car"}, "x").questions()
    assert (verify.images, verify.target) == ("output", "No") and "Is there an old car in the image?" in verify.text
    assert identity.images == "pair" and "Ignoring the old car" in identity.text
    verify, identity = parse_record(GOOD, "x").questions()
    assert (verify.images, verify.target, identity.target) == ("pair", "Yes", "Yes")
    assert '"make the car red"' in verify.text and '"make the car red"' in identity.text


def test_read_image_keeps_the_aspect_and_crops_the_centre(tmp_path):
    im = Image.new("RGB", (64, 32), (255, 0, 0))  # red | green (the middle half) | blue
    im.paste((0, 255, 0), (16, 0, 48, 32))
    im.paste((0, 0, 255), (48, 0, 64, 32))
    im.save(tmp_path / "wide.png")
    x = read_image(tmp_path / "wide.png", 16)
    assert x.shape == (3, 16, 16)
    inner = x[:, :, 2:-2]  # away from the crop's edges (bicubic blends across them)
    torch.testing.assert_close(inner, torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand_as(inner), atol=0.02,
                               rtol=0)  # fmt: skip


def test_dataset_is_deterministic_sharded_and_skips_bad_images(tmp_path):
    path = write_world_jsonl(tmp_path, 6, LITE)
    (tmp_path / "images" / "0002.png").write_bytes(b"not a png")  # unreadable
    Image.new("RGB", (5, 9)).save(tmp_path / "images" / "0004.png")  # tiny
    one = JsonlEditorDataset(path, resolution=32, seed=3)
    items = one.__getitems__(list(range(12)))  # two epochs
    assert set(one.skipped) == {str(tmp_path / "images" / "0002.png"), str(tmp_path / "images" / "0004.png")}
    assert "not a readable image" in one.skipped[str(tmp_path / "images" / "0002.png")]
    assert "smaller than data.min_side" in one.skipped[str(tmp_path / "images" / "0004.png")]
    good = {r.instruction for i, r in enumerate(read_records(path)) if i not in (2, 4)}
    assert {it["instruction"] for it in items[:6]} == good  # an epoch covers every usable record
    again = JsonlEditorDataset(path, resolution=32, seed=3).__getitems__(list(range(12)))
    assert all(torch.equal(a["image"], b["image"]) and a["instruction"] == b["instruction"]
               for a, b in zip(items, again))  # fmt: skip
    ranks = [JsonlEditorDataset(path, resolution=32, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [d.__getitems__(list(range(6))) for d in ranks]
    interleaved = [shards[j % 2][j // 2]["instruction"] for j in range(12)]
    assert interleaved == [it["instruction"] for it in items]  # 2 ranks see what one process sees
    other = JsonlEditorDataset(path, resolution=32, seed=4).__getitems__(list(range(6)))
    assert [it["instruction"] for it in other] != [it["instruction"] for it in items[:6]]  # the seed sets the order


def test_dataset_with_no_readable_image_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [GOOD])
    with pytest.raises(DataError, match="none of its 1 images can be read"):
        JsonlEditorDataset(path).__getitems__([0])
    with pytest.raises(DataError, match="image_root"):
        JsonlEditorDataset(path, image_root=tmp_path / "nowhere")
