"""`pairfree data build`: the answer parser, the VLM validator against the world's ground truth, the whole
pipeline on PNG files (template proposer + shipped judge) into a training run, and a random tiny LLM + VLM
driven through the real ``generate`` path (every proposal rejected and counted, no crash)."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from pairfree.cli import main as cli
from pairfree.data.build import ProposalError, load_prompts, parse_answer, validate
from pairfree.data.dataset import read_image
from pairfree.edit import save_image
from pairfree.judge.world import build_world_judge
from pairfree.models.tokenizer import build_world_tokenizer
from pairfree.shipped import pretrained
from pairfree.world.edits import apply_edit, refer
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import LITE


def test_parse_answer_is_strict():
    ok = parse_answer('```json\n{"instruction": "make the car red", "edited_caption": "a red car", "object": "car"}```')
    assert ok == {"instruction": "make the car red", "edited_caption": "a red car", "object": "car"}
    for text, why in [
        ("", "not JSON"),
        ('{"instruction": "make the car red", "edited_caption": "a red', "not JSON"),  # cut off
        ('["make the car red"]', "expected a JSON object"),
        ('{"instruction": "make the car red", "object": "car"}', "missing key(s) ['edited_caption']"),
        ('{"instruction": 3, "edited_caption": "x", "object": ""}', "every value must be a string"),
        ('{"instruction": " ", "edited_caption": "x", "object": ""}', "empty instruction"),
        ('Sure! {"instruction": "a", "edited_caption": "b", "object": ""}', "not JSON"),
        ('{"error": "no valid edit of this type on this scene"}', "declined: no valid edit"),
    ]:
        with pytest.raises(ProposalError) as e:
            parse_answer(text)
        assert why in str(e.value)


@pytest.fixture(scope="module")
def lite_judge():
    return pretrained("lite-judge")


def test_object_check_against_the_world_ground_truth(lite_judge, tmp_path):
    """The validator's "is <object> in the image?" on 600 rendered scenes read back from PNG files, objects named
    as the proposer names them: precision and recall against the truth (negatives: the same scene with that
    object removed — a proposal naming an object the image does not have)."""
    rng, prompts = random.Random(0), load_prompts()
    scenes, truth, proposals = [], [], []
    for n in range(300):
        scene = sample_scene(5000 + n, LITE)
        i = rng.randrange(len(scene.objects))
        name = refer(scene, i).removeprefix("the ")
        for sc, present in ((scene, True), (apply_edit(scene, "remove", {"object": i}), False)):
            scenes.append(sc)
            truth.append(present)
            proposals.append([{"type": "color", "status": "parsed", "object": name, "instruction": "-"}])
    for k, im in enumerate(render(scenes, 32)[0] * 2 - 1):
        save_image(im, tmp_path / f"{k}.png")
    images = [read_image(tmp_path / f"{k}.png", 32) for k in range(len(scenes))]
    validate(lite_judge, images, proposals, prompts, ("object",))
    kept = [prs[0]["status"] == "kept" for prs in proposals]
    tp = sum(k and t for k, t in zip(kept, truth))
    precision, recall = tp / max(sum(kept), 1), tp / sum(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def write_pngs(folder, n, seed=0):
    scenes = [sample_scene(seed + i, LITE) for i in range(n)]
    for i, im in enumerate(render(scenes, 32)[0] * 2 - 1):
        save_image(im, folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return scenes


@pytest.fixture(scope="module")
def tiny_llm_and_vlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    tok = build_world_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    assert AutoTokenizer.from_pretrained(root / "llm").chat_template
    judge = build_world_judge(seed=0, image_size=56, width=32, vision_layers=1, text_layers=1)
    judge.model.save_pretrained(root / "vlm")
    judge.tokenizer.save_pretrained(root / "vlm")
    (root / "vlm" / "judge.json").write_text(json.dumps({"image_size": 56, "question_first": True}))
    return root / "llm", root / "vlm"


def test_random_llm_and_vlm_reject_everything_and_count_it(tiny_llm_and_vlm, tmp_path, capsys):
    llm, vlm = tiny_llm_and_vlm
    write_pngs(tmp_path / "images", 3)
    (tmp_path / "images" / "001.txt").write_text("a red circle at the top left; a plain blue background.")
    out = tmp_path / "data"
    code = cli(["data", "build", "--images", str(tmp_path / "images"), "--out", str(out), "--llm", str(llm),
                "--vlm", str(vlm), "--retries", "1", "--device", "cpu"])  # fmt: skip
    assert code == 1
    assert "no proposal survived" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    counts = report["per_type"]
    assert sum(c["proposed"] for c in counts.values()) == 6 and sum(c["kept"] for c in counts.values()) == 0
    rows = [json.loads(x) for x in (out / "work.jsonl").read_text().splitlines()]
    assert all(pr["attempts"] == 2 and pr["status"] == "malformed" for r in rows for pr in r["proposals"])
    given = [r for r in rows if r["image"].endswith("001.png")][0]
    assert given["caption"].startswith("a red circle") and "caption_by" not in given
    assert not (out / "edits.jsonl").exists()


def test_build_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["data", "build", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    bad = tmp_path / "list.jsonl"
    bad.write_text('{"caption": "x"}\n')
    assert cli(["data", "build", "--images", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "list.jsonl:1: expected an object with an 'image' path" in capsys.readouterr().err
