"""``pairfree pretrain teacher``: flow-matching text-to-image training of the shapes world's DiT together with
its small text encoder (rectified flow, logit-normal t, 10% caption dropout for CFG, EMA), in pixel space.

Quality: held-out captions are sampled with a few Euler steps and CFG, and the independent evaluator reads the
images back; the metric is the fraction of caption attributes (per object: shape, colour, texture, size at its
cell; background colour and texture; style) the image shows.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from pairfree import pretrained
from pairfree.config import ConfigError, from_dict
from pairfree.engine.data_parallel import launched
from pairfree.flow import add_noise, logit_normal_t, shift_time, velocity_target
from pairfree.models.bundle import FlowModel
from pairfree.models.dit import DiT, DiTConfig
from pairfree.models.text import WorldTextEncoder
from pairfree.pretrain.common import Prefetch, PretrainConfig, command_line, ship, write_card
from pairfree.pretrain.loop import train
from pairfree.shipped import model_name
from pairfree.world.captions import caption, describe_placed
from pairfree.world.datasets import CaptionImageDataset, item_seed
from pairfree.world.grid import tile_image
from pairfree.world.scene import sample_scene
from pairfree.world.spec import WorldSpec, check_same, get_spec, save_spec


@torch.no_grad()
def sample(
    teacher: FlowModel,
    captions: list[str],
    steps: int = 8,
    cfg_scale: float = 3.0,
    shift: float = 3.0,
    resolution: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """Euler sampling of the flow ODE from t = 1 to 0 (shifted schedule) with classifier-free guidance."""
    teacher.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(captions), teacher.dit.config.in_channels, resolution, resolution, generator=g)
    ts = [float(shift_time(1 - i / steps, shift)) for i in range(steps)] + [0.0]
    emb, mask = teacher.text.encode(captions + [""] * len(captions))
    for t, t_next in zip(ts[:-1], ts[1:]):
        tt = torch.full((2 * len(captions),), t)
        v = teacher.dit(torch.cat([x, x]), tt, emb, mask)
        v_c, v_u = v.chunk(2)
        x = x + (t_next - t) * (v_u + cfg_scale * (v_c - v_u))
    return x.clamp(-1, 1)


def training_t(n: int, shifts: list[float], generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps: logit-normal t shifted by one of ``shifts`` per sample, drawn uniformly
    (one shift: every sample shifted by it, and no draw)."""
    t = logit_normal_t(n, generator=generator)
    if len(shifts) == 1:
        return shift_time(t, shifts[0])
    return shift_time(t, torch.tensor(shifts)[torch.randint(len(shifts), (n,), generator=generator)])


def states_positions(scene, text: str) -> bool:
    """Whether caption ``text`` says where every object of ``scene`` is (only one caption template does)."""
    return all(f"at the {scene.position_name(o)}" in text for o in scene.objects)


def _assignments(scene, seen, placed: bool):
    """Candidate pairings (caption object -> read object or None): by cell when the caption states positions, else
    every one-to-one assignment (a caption without positions cannot be held to a cell)."""
    if placed:
        got = {(o.row, o.col): o for o in seen.objects}
        yield [got.get((o.row, o.col)) for o in scene.objects]
        return
    pool = list(seen.objects) + [None] * len(scene.objects)
    for order in itertools.permutations(range(len(pool)), len(scene.objects)):
        yield [pool[i] for i in order]


def caption_attribute_match(scene, seen, per: dict | None = None, placed: bool = True) -> tuple[int, int]:
    """How many of the caption's attributes the evaluator's reading ``seen`` reproduces (and how many there are):
    each object's shape, colour, texture and size — at its cell when the caption states positions (``placed``),
    else under the best one-to-one pairing of objects — plus background colour, texture and style. ``per``
    (optional) accumulates ``[hits, total]`` per attribute, plus objects read beyond those the caption names."""
    attrs = ("shape", "color", "texture", "size")
    score = lambda pairs: sum(
        s is not None and getattr(s, k) == getattr(o, k) for o, s in zip(scene.objects, pairs) for k in attrs
    )
    best = max(_assignments(scene, seen, placed), key=score)
    hit = total = 0
    per = per if per is not None else {}
    for o, s in zip(scene.objects, best):
        for k in ("present", "shape", "color", "texture", "size"):
            ok = s is not None and (k == "present" or getattr(s, k) == getattr(o, k))
            acc = per.setdefault(k, [0, 0])
            acc[0], acc[1] = acc[0] + ok, acc[1] + 1
            if k != "present":
                total, hit = total + 1, hit + ok
    for k in ("background", "background_texture", "style"):
        ok = getattr(seen, k) == getattr(scene, k)
        acc = per.setdefault(k, [0, 0])
        acc[0], acc[1] = acc[0] + ok, acc[1] + 1
        total, hit = total + 1, hit + ok
    extra = per.setdefault("extra objects", [0, 0])
    extra[0], extra[1] = extra[0] + max(0, len(seen.objects) - len(scene.objects)), extra[1] + 1
    return hit, total


@torch.no_grad()
def evaluate(
    teacher: FlowModel,
    evaluator,
    seed: int,
    n: int,
    resolution: int,
    steps: int = 8,
    cfg_scale: float = 3.0,
    grid_out: Path | None = None,
    spec: WorldSpec | None = None,
    shift: float = 3.0,
) -> dict:
    """Caption attribute match of ``n`` held-out captions of world ``spec`` (the evaluator's), sampled and read
    back by ``evaluator``; per attribute too."""
    spec = spec or evaluator.spec
    check_same(spec, "the teacher's captions", evaluator.spec, "the evaluator")
    scenes, caps = [], []
    for i in range(n):
        rng = random.Random(item_seed(seed, "val", i))
        sc = sample_scene(rng.getrandbits(63), spec)
        scenes.append(sc)
        caps.append(caption(sc, rng.getrandbits(32)))
    hit = total = 0
    images, readings, per, by_caption = [], [], {}, {}
    for start in range(0, n, 50):
        x = sample(teacher, caps[start : start + 50], steps, cfg_scale, shift, resolution=resolution, seed=start)
        images.append(x)
        seen_batch = evaluator.read(x)
        readings += seen_batch
        for sc, cap, seen in zip(scenes[start : start + 50], caps[start : start + 50], seen_batch):
            placed = states_positions(sc, cap)
            h, t = caption_attribute_match(sc, seen, per, placed)
            hit, total = hit + h, total + t
            key = "captions with positions" if placed else "captions without positions"
            acc = by_caption.setdefault(key, [0, 0])
            acc[0], acc[1] = acc[0] + h, acc[1] + t
    if grid_out is not None:
        save_sample_grid(torch.cat(images)[:16], caps[:16], grid_out, [describe_placed(r) for r in readings[:16]])
    return {
        "caption attribute match": hit / total,
        "per attribute": {k: h / max(t, 1) for k, (h, t) in per.items()},
        "per caption kind": {k: h / max(t, 1) for k, (h, t) in by_caption.items()},
        "samples": n,
        "steps": steps,
        "cfg": cfg_scale,
        "shift": shift,
    }


def save_sample_grid(
    images: torch.Tensor, caps: list[str], out: Path, read: list[str] | None = None, tile: int = 128
) -> None:
    """Samples with their captions (and, given ``read``, what the evaluator read in them) as a PNG."""
    import textwrap

    from PIL import Image, ImageDraw

    cols, text_h = 4, 60 if read is None else 130
    rows = (len(caps) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, cap) in enumerate(zip(images, caps)):
        r, c = divmod(i, cols)
        sheet.paste(tile_image((im + 1) / 2, tile), (c * tile, r * (tile + text_h)))
        text = textwrap.wrap(cap, 24)[:4] + (["read: " + w for w in textwrap.wrap(read[i], 24)[:5]] if read else [])
        draw.multiline_text((c * tile + 2, r * (tile + text_h) + tile + 2), "\n".join(text), fill="black", spacing=1)
    sheet.save(out)


def load_init(teacher: FlowModel, path: str) -> None:
    """Start from a saved teacher's weights (``init``): the way to train a shipped teacher longer, since a run's
    optimizer checkpoint need not survive."""
    root = Path(path)
    if not (root / "dit").is_dir() or not (root / "text").is_dir():
        raise ConfigError(f"init: {root} is not a teacher directory (expected {root}/dit and {root}/text)")
    saved = FlowModel.from_pretrained(root)
    mine, theirs = teacher.state_dict(), saved.state_dict()
    wrong = sorted(
        k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape
    )
    if wrong:
        raise ConfigError(
            f"init: {root} holds a teacher of another shape than model.* describes (first mismatch: {wrong[0]})"
        )
    teacher.load_state_dict(theirs)


def run(cfg: PretrainConfig, resume: bool = False) -> dict:

    out = Path(cfg.out)
    spec = get_spec(cfg.world)
    name = model_name("teacher", spec)
    torch.manual_seed(cfg.loop.seed)
    text = WorldTextEncoder.for_world(seed=cfg.loop.seed, **cfg.model.get("text", {}))
    dit_cfg = from_dict(DiTConfig, {**cfg.model.get("dit", {}), "text_dim": text.dim}, "model.dit")
    teacher = FlowModel(DiT(dit_cfg), text)
    if cfg.init and not resume:
        load_init(teacher, cfg.init)
    ds = CaptionImageDataset(10**9, seed=cfg.loop.seed, split="train", resolution=cfg.resolution, spec=spec)
    drop = cfg.model.get("caption_dropout", 0.1)
    # training t = shift_time(logit-normal, t_shift): the caption decides the image only at high noise (in this
    # world t ≳ 0.9, docs/experiments/lite-world.md), where a plain logit-normal draws 1.4 % of its samples
    # A list of shifts mixes them: each sample draws one (repeat a value to weight it). The shapes are decided
    # at low and mid t, which a large shift starves (the SDEdit probe in docs/experiments/lite-world.md).
    t_shift = cfg.model.get("t_shift", 1.0)
    shifts = [float(v) for v in t_shift] if isinstance(t_shift, list) else [float(t_shift)]
    # draw the images where the model trains (a GPU), or each rank its own share (several ranks)
    on_device = cfg.model.get("render_on_device", False) or launched()

    def batch(step):
        js = list(range(step * cfg.batch, (step + 1) * cfg.batch))
        examples = [ds.example(ds.global_index(j)) for j in js]
        g = torch.Generator().manual_seed(item_seed(cfg.loop.seed, "train", step))
        caps = [cap if torch.rand((), generator=g) >= drop else "" for _, cap in examples]
        shape = (len(js), 3, cfg.resolution, cfg.resolution)
        b = {
            "captions": caps,
            "noise": torch.randn(shape, generator=g),
            "t": training_t(len(js), shifts, g),
        }
        if on_device:
            return {**b, "scenes": [sc for sc, _ in examples]}
        return {**b, "x0": ds.render(sc for sc, _ in examples)}

    def step_loss(m, b):
        if "scenes" in b:
            b["x0"] = ds.render(b["scenes"], device=b["noise"].device)
        xt = add_noise(b["x0"], b["noise"], b["t"])
        v = m.velocity(xt, b["t"], b["captions"])
        return (v - velocity_target(b["x0"], b["noise"])).square().mean(), {}

    readers = {}

    def curve(m):  # the learning curve: held-out captions read back, raw weights and EMA alike
        if "evaluator" not in readers:  # loaded when first needed (it may be training beside this run)
            try:
                readers["evaluator"] = pretrained(model_name("evaluator", spec))
            except FileNotFoundError as e:
                print(f"learning curve skipped: {e}", flush=True)
                return {}
        n = cfg.model.get("curve_items", 100)
        got = evaluate(m, readers["evaluator"], cfg.loop.seed, n, cfg.resolution, spec=spec)
        return {"caption match": got["caption attribute match"]}

    result = train(
        teacher, Prefetch(batch, cfg.loop.prefetch), step_loss, cfg.loop, out, resume=resume, title=name, eval_fn=curve
    )
    if not result["is_main"]:  # data-parallel: rank 0 exports, evaluates and writes the card
        return {}
    final = result["ema"] or teacher
    export = out / "model"
    export.mkdir(parents=True, exist_ok=True)
    final.save_pretrained(export)
    save_spec(export, spec)
    evaluator = readers.get("evaluator") or pretrained(model_name("evaluator", spec))
    metrics = evaluate(
        final, evaluator, cfg.loop.seed, cfg.eval_items, cfg.resolution, grid_out=export / "samples.png", spec=spec
    )
    if result["ema"] is not None:  # a short run: is the export the trained model? (both are reported)
        raw = evaluate(teacher, evaluator, cfg.loop.seed, cfg.eval_items, cfg.resolution, spec=spec)
        metrics["raw weights caption attribute match"] = raw["caption attribute match"]
    metrics["minutes"] = result["wall_s"] / 60
    (export / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if (out / "loss.png").exists():
        (export / "loss.png").write_bytes((out / "loss.png").read_bytes())
    write_card(
        export / "MODEL_CARD.md",
        name,
        f"The text-to-image teacher of the shapes world: a SANA-architecture DiT (width {dit_cfg.width}, "
        f"{dit_cfg.num_layers} layers, patch {dit_cfg.patch_size}, pixel space {cfg.resolution}²) with a small "
        "word-level text encoder, trained together by flow matching. It is the DMD real score and the "
        "initialisation of the generator and the critic.",
        f"World `{spec.name}`. `CaptionImageDataset` (train seeds; 20% of scenes with a global style), 10% caption "
        "dropout for CFG. "
        "Held-out: captions of `val` scenes, sampled with 8 Euler steps and CFG 3, read back by the "
        f"{model_name('evaluator', spec)} (objects held to their cells only when the caption states them). "
        "`samples.png` shows 16 of them, each with the evaluator's reading.",
        result,
        metrics,
        command_line(),
        [("caption attribute match (evaluator)", metrics["caption attribute match"], 0.90)],
    )
    if cfg.ship:
        ship(out, name)
    return metrics
