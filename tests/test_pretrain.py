"""Pretraining: the loop resumes exactly, checkpoints are atomic, the three commands run end to end (tiny), and
the shipped models load and pass a sanity check."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pairfree
from pairfree.cli import main as cli
from pairfree.evaluator import IGNORE, targets
from pairfree.pretrain.loop import LoopConfig, train
from pairfree.shipped import WEIGHTS_DIR
from pairfree.world import Obj, Scene


class _Killed(Exception):
    pass


def _toy(tmp_path, steps, resume=False, kill_at=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def batch(step):
        if step == kill_at:
            raise _Killed  # the process dies after its last checkpoint
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss(m, b):
        noise = 0.01 * torch.randn(())  # uses the global RNG: resume must restore it
        return (m(b[0]) - b[1]).square().mean() + noise, {}

    cfg = LoopConfig(steps=steps, lr=1e-2, warmup=2, ema=0.9, ckpt_every=3, log_every=1, seed=0)
    out = train(model, batch, loss, cfg, tmp_path, resume=resume)
    return model, out


def test_resume_continues_identically(tmp_path):
    full, _ = _toy(tmp_path / "a", 6)
    with pytest.raises(_Killed):
        _toy(tmp_path / "b", 6, kill_at=4)  # dies during step 5, after the step-3 checkpoint
    resumed, out = _toy(tmp_path / "b", 6, resume=True)
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["step"] for r in b] == list(range(1, 7))
    assert out["step"] == 6 and (tmp_path / "b" / "loss.png").exists()
    assert not list((tmp_path / "b").glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        _toy(tmp_path / "c", 2, resume=True)


def test_evaluator_targets_hide_what_a_style_hides():
    sc = Scene("blue", "dots", (Obj("star", "red", "stripes", "large", 0, 2),), "grayscale")
    t = targets([sc])
    assert t["present"][0].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert t["color"][0, 2] == IGNORE and t["background"][0] == IGNORE  # colours are hidden in grayscale
    assert t["shape"][0, 2] >= 0 and t["shape"][0, 0] == IGNORE  # empty cells have no attributes


@pytest.mark.parametrize("model", ["evaluator", "judge"])
def test_pretrain_commands_run_tiny(tmp_path, model, capsys):
    sets = [f"out={tmp_path}", "loop.steps=2", "loop.ckpt_every=1", "eval_items=40", "batch=4"]
    if model == "judge":
        sets += ["model.width=32", "model.vision_layers=1", "model.text_layers=1", "model.vision_steps=1"]
        sets += ["model.dense_batch=4", "model.caption_batch=2"]
    assert cli(["pretrain", model, "--config", f"configs/shapes/{model}.yaml", "--set", *sets]) == 0
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert "## Held-out metrics" in card and "pairfree" in card and (tmp_path / "model" / "loss.png").exists()
    assert (
        cli(
            [
                "pretrain",
                model,
                "--config",
                f"configs/shapes/{model}.yaml",
                "--resume",
                "--set",
                *sets[:1],
                "loop.steps=3",
                *sets[2:],
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_judge_warm_start_with_cell_differences(tmp_path):
    """Stage 2 (configs/shapes/judge_pairs.yaml) starts from a stage-1 checkpoint's weights and trains the
    difference probe; a missing checkpoint is a clear error."""
    tiny = ["model.width=32", "model.vision_layers=1", "model.text_layers=1", "model.dense_batch=4"]
    tiny += ["model.caption_batch=2", "batch=4", "eval_items=40", "loop.ckpt_every=1"]
    first = ["pretrain", "judge", "--config", "configs/shapes/judge.yaml", "--set", f"out={tmp_path / 'a'}"]
    assert cli([*first, *tiny, "loop.steps=1", "model.vision_steps=0"]) == 0
    second = ["pretrain", "judge", "--config", "configs/shapes/judge_pairs.yaml", "--set", f"out={tmp_path / 'b'}"]
    second += [*tiny, "loop.steps=2", "model.pair_prob=1.0"]
    assert cli([*second, f"model.init_from={tmp_path / 'nope.pt'}"]) == 2
    assert cli([*second, f"model.init_from={tmp_path / 'a' / 'checkpoint.pt'}"]) == 0
    logged = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= logged["diff acc"] <= 1 and logged["diff"] > 0
    assert "Warm-started from" in (tmp_path / "b" / "model" / "MODEL_CARD.md").read_text()


def test_cell_differences_mark_changed_cells():
    from pairfree.world.vqa import cell_differences

    a = Scene(
        "blue", "dots", (Obj("star", "red", "stripes", "large", 0, 2), Obj("circle", "green", "plain", "small", 1, 1))
    )
    moved = Scene("blue", "dots", (Obj("star", "red", "stripes", "large", 2, 2), a.objects[1]))
    assert cell_differences(a, a) == (0,) * 9
    assert cell_differences(a, moved) == (0, 0, 1, 0, 0, 0, 0, 0, 1)
    assert cell_differences(a, Scene("red", "dots", a.objects)) == (1,) * 9  # the background shows everywhere


def test_difference_questions_answer_from_the_cells():
    from pairfree.world.spec import FULL
    from pairfree.world.vqa import cell_differences, difference_question

    names = {}
    for r in range(FULL.grid):
        for c in range(FULL.grid):
            names[FULL.cell_name(r, c)] = r * FULL.grid + c
    for i in range(60):
        it = difference_question(i, yes=i % 2 == 0)
        diff = cell_differences(*it.scenes)
        if it.form == "difference_image":
            assert (it.answer == "Yes") == (not any(diff))
        else:
            where = it.question.removeprefix("Is the ").split(" of the second image")[0]
            assert (it.answer == "Yes") == (diff[names[where]] == 0), (it.question, diff)
        assert it.answer == ("Yes" if i % 2 == 0 else "No")


def test_unknown_shipped_model():
    with pytest.raises(ValueError, match="unknown model 'shapes-vae'"):
        pairfree.pretrained("shapes-vae")


@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-evaluator").is_dir(), reason="evaluator not shipped yet")
def test_shipped_evaluator_reads_held_out_scenes():
    from pairfree.pretrain.evaluator import batch_of, scenes_for

    ev = pairfree.pretrained("shapes-evaluator")
    b = batch_of(scenes_for(123, "val", 0, 64, 0.0), 32)
    from pairfree.evaluator import accuracy

    with torch.no_grad():
        acc = accuracy(ev(b["images"]), b["targets"])
    assert min(acc[k] for k in ("present", "color", "background")) > 0.95, acc


@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-evaluator").is_dir(), reason="evaluator not shipped yet")
def test_pretrain_teacher_runs_tiny(tmp_path):
    sets = _tiny_teacher_sets(tmp_path)
    assert cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set", *sets]) == 0
    assert (tmp_path / "model" / "samples.png").exists() and (tmp_path / "model" / "MODEL_CARD.md").exists()


def _tiny_teacher_sets(tmp_path):
    return [f"out={tmp_path}", "loop.steps=2", "loop.ckpt_every=1", "eval_items=4", "batch=4",
            "model.dit.num_layers=1", "model.text.num_layers=1"]  # fmt: skip


def test_prefetch_builds_ahead_and_returns_exactly_the_direct_batches():
    """``loop.prefetch`` builders: batch ``step`` is ``fn(step)`` in order, after a jump (a resume), and with
    several built ahead; a count below 1 is a config error naming the key."""
    import threading

    from pairfree.config import ConfigError
    from pairfree.pretrain.common import Prefetch

    calls, lock = [], threading.Lock()

    def fn(step):
        with lock:
            calls.append(step)
        return torch.full((2,), float(step)) + torch.randn(2, generator=torch.Generator().manual_seed(step))

    source = Prefetch(fn, ahead=3)
    for step in [*range(6), 20, 21, 5]:
        torch.testing.assert_close(source(step), fn(step), rtol=0, atol=0)
    source(22)
    source._pending[25].result()
    assert {1, 2, 3, 21, 22, 23, 24, 25} <= set(calls)
    with pytest.raises(ConfigError, match="loop.prefetch: expected at least 1"):
        Prefetch(fn, ahead=0)


def test_batches_reach_the_device_whole():
    """Every tensor of a batch (in dicts, lists, tuples) moves to the loop's device; strings and scenes stay."""
    from pairfree.engine.state import to_device

    scene = Scene("red", "plain", [])
    b = {"x": torch.ones(2), "images": [torch.zeros(1, 3), torch.zeros(2, 3)], "pair": (torch.ones(1), "a"), "s": scene}
    moved = to_device(b, torch.device("meta"))
    assert moved["x"].is_meta and all(t.is_meta for t in moved["images"]) and moved["pair"][0].is_meta
    assert isinstance(moved["pair"], tuple) and moved["pair"][1] == "a" and moved["s"] is scene


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_pretraining_refuses_a_missing_gpu_and_a_bad_device_name(tmp_path, capsys):
    sets = _tiny_teacher_sets(tmp_path)
    assert (
        cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set", *sets, "loop.device=cuda"]) == 2
    )
    assert "loop.device: 'cuda' asked for, but torch" in capsys.readouterr().err
    assert (
        cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set", *sets, "loop.device=tpu"]) == 2
    )
    assert "loop.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-evaluator").is_dir(), reason="evaluator not shipped yet")
def test_pretraining_runs_on_the_gpu_and_exports_from_the_cpu(tmp_path, capsys):
    """``loop.device: auto`` takes the GPU; the steps run there, evaluation and export run on the CPU copy, and a
    resumed run continues from the GPU-written checkpoint."""
    sets = _tiny_teacher_sets(tmp_path)
    assert cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set", *sets]) == 0
    assert "training on cuda" in capsys.readouterr().out
    assert (tmp_path / "model" / "MODEL_CARD.md").exists()
    more = [*sets, "loop.steps=3"]
    assert cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--resume", "--set", *more]) == 0
    assert torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)["step"] == 3


@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-evaluator").is_dir(), reason="evaluator not shipped yet")
def test_teacher_drawing_its_batches_in_the_step_trains_identically(tmp_path):
    """``model.render_on_device`` (draw the images where the model is: a GPU) changes where, not what: the same
    losses step for step as drawing them in the prefetch thread."""
    losses = {}
    for flag in ("false", "true"):
        sets = [
            *_tiny_teacher_sets(tmp_path / flag),
            "loop.log_every=1",
            "loop.steps=3",
            f"model.render_on_device={flag}",
        ]
        assert cli(["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set", *sets]) == 0
        rows = [json.loads(x) for x in (tmp_path / flag / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = [r["loss"] for r in rows]
    assert len(losses["true"]) == 3 and losses["true"] == losses["false"]


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_ranks_train_the_teacher_as_one_process(tmp_path):
    """``torchrun --nproc_per_node 2``: each rank trains on half of every batch and the gradients are averaged, so
    the losses and the weights equal one process's with the whole batch (up to float summation order); only rank
    0 writes the run directory, and its card says how to launch it again."""
    sets = [*_tiny_teacher_sets(tmp_path), "loop.log_every=1", "loop.steps=3", "loop.max_minutes=30"]
    pretrain = [shutil.which("pairfree", path=str(Path(sys.executable).parent)), "pretrain", "teacher"]
    args = ["--config", "configs/shapes/teacher.yaml", "--set"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    one = [*pretrain, *args, *[s.replace(str(tmp_path), str(tmp_path / "one")) for s in sets]]
    two = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--no-python", *pretrain, *args,
           *[s.replace(str(tmp_path), str(tmp_path / "two")) for s in sets]]  # fmt: skip
    for cmd in (one, two):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("model, MODEL_CARD.md") == 1  # rank 1 says nothing
    rows = {
        k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()] for k in ("one", "two")
    }
    assert [r["step"] for r in rows["two"]] == [1, 2, 3]
    assert [r["loss"] for r in rows["two"]] == pytest.approx([r["loss"] for r in rows["one"]], rel=1e-5)
    weights = {k: torch.load(tmp_path / k / "checkpoint.pt", weights_only=False)["model"] for k in ("one", "two")}
    for name, w in weights["one"].items():
        torch.testing.assert_close(weights["two"][name], w, rtol=1e-4, atol=1e-6)
    assert (
        "torchrun --nproc_per_node 2 --no-python pairfree pretrain teacher"
        in (tmp_path / "two" / "model" / "MODEL_CARD.md").read_text()
    )


def _recorded(name):
    return json.loads((WEIGHTS_DIR / name / "metrics.json").read_text())


@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-judge").is_dir(), reason="judge not shipped yet")
def test_shipped_judge_answers_held_out_questions():
    from pairfree.world.datasets import JudgeVQADataset, collate_vqa

    judge = pairfree.pretrained("shapes-judge")
    ds = JudgeVQADataset(40, seed=7, split="val", pair_prob=0.0)  # 40 fixed single-image questions
    b = collate_vqa(ds.__getitems__(list(range(40))))
    with torch.no_grad():
        acc = (judge(b["images"], b["question"]).argmax(-1) == b["label"]).float().mean().item()
    recorded = _recorded("shapes-judge")["single accuracy"]
    assert acc >= min(0.95, recorded - 0.15) and acc > 0.6, (acc, recorded)


@pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-teacher").is_dir(), reason="teacher not shipped yet")
def test_shipped_teacher_samples_images_from_captions():
    from pairfree.pretrain.teacher import sample

    teacher = pairfree.pretrained("shapes-teacher")
    x = sample(teacher, ["A large red circle at the center; a plain white background."] * 2, steps=4)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all() and x.std() > 0.05


def test_adversarial_images_attack_only_the_last_image_within_eps():
    """The robust stage's PGD: perturbs only each question's last image (what the editor generates), stays in the
    L∞ ball and in [-1, 1], and raises the Yes/No loss above the clean loss and above its own random start."""
    from pairfree.judge.world import build_world_judge
    from pairfree.pretrain.judge import JudgeTrainee, adversarial_images
    from pairfree.world.datasets import JudgeVQADataset, collate_vqa

    judge = build_world_judge(seed=0, image_size=84, width=32, vision_layers=1, text_layers=1)
    m = JudgeTrainee(judge)
    b = collate_vqa(JudgeVQADataset(8, seed=0, split="val", resolution=32, pair_prob=0.5).__getitems__(range(8)))
    assert {len(x) for x in b["images"]} == {1, 2}
    eps = 0.05
    start = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    adv = adversarial_images(m, b, eps, steps=5, start=start)
    for x, a in zip(b["images"], adv):
        assert a.shape == x.shape and torch.equal(a[:-1], x[:-1])
        assert (a[-1] - x[-1]).abs().max() <= eps + 1e-6 and a.abs().max() <= 1
    with torch.no_grad():
        clean = m.judge.loss(b["images"], b["question"], b["label"]).mean()
        random_start = m.judge.loss(adversarial_images(m, b, eps, 0, start), b["question"], b["label"]).mean()
        attacked = m.judge.loss(adv, b["question"], b["label"]).mean()
    assert attacked > clean and attacked > random_start
    noise = 0.3 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noisy = adversarial_images(m, b, eps, steps=2, start=start, noise=noise)
    for x, a, n in zip(b["images"], noisy, noise):
        assert torch.equal(a[:-1], x[:-1]) and (a[-1] - (x[-1] + n).clamp(-1, 1)).abs().max() <= eps + 1e-6


def test_teacher_init_starts_from_saved_weights_and_refuses_a_mismatch(tmp_path, capsys):
    from pairfree.models.bundle import FlowModel

    first = tmp_path / "first"
    teacher_yaml = ["pretrain", "teacher", "--config", "configs/shapes/teacher.yaml", "--set"]
    assert cli([*teacher_yaml, *_tiny_teacher_sets(first)]) == 0
    saved = FlowModel.from_pretrained(first / "model").state_dict()
    for init, out in (("", tmp_path / "fresh"), (str(first / "model"), tmp_path / "again")):
        sets = [*_tiny_teacher_sets(out), "loop.steps=0", *([f"init={init}"] if init else [])]
        assert cli([*teacher_yaml, *sets]) == 0
        got = FlowModel.from_pretrained(out / "model").state_dict()
        same = all(torch.equal(got[k], saved[k]) for k in saved)
        assert same == bool(init), f"init={init!r}: exported weights {'differ from' if init else 'equal'} the saved"
    capsys.readouterr()
    bigger = [*_tiny_teacher_sets(tmp_path / "big"), "model.dit.num_layers=2", f"init={first / 'model'}"]
    assert cli([*teacher_yaml, *bigger]) == 2
    assert "holds a teacher of another shape" in capsys.readouterr().err
    missing = [*_tiny_teacher_sets(tmp_path / "none"), f"init={tmp_path / 'nowhere'}"]
    assert cli([*teacher_yaml, *missing]) == 2
    assert "is not a teacher directory" in capsys.readouterr().err


def test_ema_warm_up_exports_the_trained_model_not_the_initialisation(tmp_path):
    """After a short run the EMA (decay 0.999, warmed up) is nearer the raw weights than the initialisation; a
    0.999 EMA without warm-up would still hold 0.999^N of the initialisation."""
    from pairfree.engine.state import ema_decay

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    init = [p.detach().clone() for p in model.parameters()]

    def batch(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        return x, 3 * x.flip(1)

    cfg = LoopConfig(steps=200, lr=3e-2, warmup=1, ema=0.999, ckpt_every=1000, log_every=50, seed=0)
    out = train(model, batch, lambda m, b: ((m(b[0]) - b[1]).square().mean(), {}), cfg, tmp_path)
    dist = lambda a, b: sum((x - y).square().sum() for x, y in zip(a, b)).sqrt()
    ema, raw = list(out["ema"].parameters()), list(model.parameters())
    assert dist(ema, raw) < dist(ema, init)
    assert ema_decay(0, 0.999) == pytest.approx(0.1) and ema_decay(10**6, 0.999) == 0.999  # (1+s)/(10+s), capped


def test_learning_curve_rows_report_raw_and_ema(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    cfg = LoopConfig(steps=4, lr=1e-2, warmup=1, ema=0.9, ckpt_every=10, log_every=10, eval_every=2, seed=0)
    batch = lambda step: torch.ones(3, 2)
    train(
        model,
        batch,
        lambda m, b: (m(b).square().mean(), {}),
        cfg,
        tmp_path,
        eval_fn=lambda m: {"w": m.weight.sum().item()},
    )
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in rows if "raw/w" in r]
    assert [r["step"] for r in curve] == [2, 4] and all("ema/w" in r and "minutes" in r for r in curve)
    assert curve[-1]["raw/w"] == pytest.approx(float(model.weight.sum()))


def test_lite_evaluator_reads_what_its_targets_say():
    """A lite evaluator has lite-sized heads; logits made from a scene's targets read back as that scene."""
    from pairfree.evaluator import CELL_HEADS, Evaluator, EvaluatorConfig
    from pairfree.world.spec import LITE

    ev = Evaluator(EvaluatorConfig(width=8, world=LITE.to_dict()))
    assert ev.cell_heads["shape"].out_features == len(LITE.shapes) and ev.cell_pos.shape[0] == 4
    scenes = [pairfree.world.sample_scene(s, LITE) for s in range(5)]
    t = targets(scenes)
    logits = {}
    for k, y in t.items():
        n = len(ev.vocab[k])
        one_hot = torch.nn.functional.one_hot(y.clamp_min(0), n).float()
        logits[k] = one_hot
    ev.forward = lambda images: logits  # read() decodes whatever forward returns
    row_major = [dataclasses.replace(s, objects=tuple(sorted(s.objects, key=lambda o: (o.row, o.col)))) for s in scenes]
    assert ev.read(torch.zeros(5, 3, 32, 32)) == row_major
    assert set(CELL_HEADS) <= set(t)


def test_corruptions_blur_and_noise():
    from pairfree.pretrain.evaluator import blur, corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    torch.testing.assert_close(blur(x, torch.zeros(4)), x)  # σ → 0: the identity
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(blur(flat, torch.ones(2)), flat)  # a blur keeps a flat image
    y = corrupt(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and (y - x).abs().max() < 2.0 and not torch.equal(x, y)
    torch.testing.assert_close(y, corrupt(x, torch.Generator().manual_seed(1)))  # seeded


def test_caption_match_holds_objects_to_cells_only_when_the_caption_states_them():
    """A reading with the right objects in swapped cells scores fully against a caption without positions and
    loses the objects' attributes against one that states the cells."""
    from pairfree.pretrain.teacher import caption_attribute_match, states_positions
    from pairfree.world import caption
    from pairfree.world.spec import LITE

    a, b = Obj("circle", "red", "solid", "large", 0, 0), Obj("cross", "blue", "stripes", "small", 1, 1)
    scene = Scene("yellow", "solid", (a, b), spec=LITE)
    swapped = Scene("yellow", "solid", (dataclasses.replace(a, row=1, col=1), dataclasses.replace(b, row=0, col=0)))
    assert caption_attribute_match(scene, scene) == (11, 11)  # 2 objects x 4 attributes + background, texture, style
    assert caption_attribute_match(scene, swapped, placed=False) == (11, 11)
    assert caption_attribute_match(scene, swapped, placed=True) == (3, 11)
    per = {}
    caption_attribute_match(scene, Scene("yellow", "solid", (a,)), per, placed=False)
    assert per["present"] == [1, 2] and per["color"] == [1, 2]
    texts = {caption(scene, s) for s in range(40)}
    assert {states_positions(scene, t) for t in texts} == {True, False}
    assert all(states_positions(scene, t) == ("at the top left" in t) for t in texts)


def test_progress_writes_plain_lines_to_a_log(tmp_path):
    """Redirected to a file, progress is one plain line per interval (and one at the end), not a redrawn bar."""
    import io

    from pairfree.progress import Progress

    log = io.StringIO()
    bar = Progress(10, initial=2, desc="run", every=3600.0, file=log)
    for i in range(8):
        bar.set_postfix({"loss": f"{1 / (i + 1):.3f}"})
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in log.getvalue()  # only the final line: the interval never passed
    assert lines[0].startswith("run: 10/10 (100%)") and lines[0].endswith("| loss=0.125")
    log = io.StringIO()
    bar = Progress(5, desc="run", every=0.0, file=log)
    for _ in range(5):
        bar.update(1)
    assert [ln.split(" ")[1] for ln in log.getvalue().splitlines()] == ["1/5", "2/5", "3/5", "4/5", "5/5"]


def test_command_line_is_the_command_a_user_retypes(monkeypatch):
    from pathlib import Path

    from pairfree.pretrain.common import command_line

    pkg = Path(__file__).resolve().parents[1] / "pairfree"
    for argv, expected in [
        (["/venv/bin/pairfree", "train", "--resume"], "pairfree train --resume"),
        (
            [str(pkg / "train" / "paired" / "__main__.py"), "--config", "c.yaml"],
            "python -m pairfree.train.paired --config c.yaml",
        ),
        ([str(pkg / "train" / "__main__.py"), "--config", "c"], "python -m pairfree.train --config c"),
        (["/tmp/script.py", "x"], "python /tmp/script.py x"),
    ]:
        monkeypatch.setattr("sys.argv", argv)
        monkeypatch.setattr("pairfree.pretrain.common.CLI_ARGV", None)
        assert command_line() == expected
    monkeypatch.setattr("pairfree.pretrain.common.CLI_ARGV", ["train", "--resume"])  # cli.main(argv) from Python
    assert command_line() == "pairfree train --resume"


def test_teacher_training_t_mixes_shifts_per_sample():
    """One shift: exactly shift_time(logit-normal). A list: each sample shifted by one of them, so the share of
    high-noise t lies between the pure distributions' (closed form: P(shift_time(σ(u), s) > τ))."""
    from pairfree.flow import logit_normal_t, shift_time
    from pairfree.pretrain.teacher import training_t

    n, tau = 40_000, 0.8
    one = training_t(n, [6.0], torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, shift_time(logit_normal_t(n, generator=torch.Generator().manual_seed(0)), 6.0))

    def share_above(s):  # t > τ  <=>  σ(u) > τ / (s − (s − 1)·τ), u ~ N(0, 1)
        p = tau / (s - (s - 1) * tau)
        return 1 - torch.distributions.Normal(0.0, 1.0).cdf(torch.logit(torch.tensor(p))).item()

    mixed = training_t(n, [6.0, 6.0, 1.0], torch.Generator().manual_seed(1))
    expect = (2 * share_above(6.0) + share_above(1.0)) / 3
    assert abs((mixed > tau).float().mean().item() - expect) < 0.01
    assert share_above(1.0) < expect < share_above(6.0)
