"""SDEdit diagnostic: noise true renders of held-out captions to t0, denoise with the teacher from t0 (caption,
CFG 3, 8 Euler steps over [t0, 0]), and read them with the evaluator: where (in t) are shapes decided/lost?"""
import json, random, torch
torch.set_num_threads(1)
import pairfree
from pairfree.flow import shift_time
from pairfree.pretrain.teacher import caption_attribute_match, states_positions
from pairfree.world.captions import caption
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.datasets import item_seed
t = pairfree.pretrain_t = pairfree.pretrained("lite-teacher"); e = pairfree.pretrained("lite-evaluator")
spec = e.spec
n = 200
scenes, caps = [], []
for i in range(n):
    rng = random.Random(item_seed(0, "val", i)); sc = sample_scene(rng.getrandbits(63), spec)
    scenes.append(sc); caps.append(caption(sc, rng.getrandbits(32)))
x0 = render(scenes, 32)[0] * 2 - 1
for t0 in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=g)
    x = (1 - t0) * x0 + t0 * noise
    ts = [t0 * (1 - i / 8) for i in range(8)] + [0.0]
    emb, mask = t.text.encode(caps + [""] * n)
    with torch.no_grad():
        for a, b in zip(ts[:-1], ts[1:]):
            v = t.dit(torch.cat([x, x]), torch.full((2 * n,), a), emb, mask)
            vc, vu = v.chunk(2); x = x + (b - a) * (vu + 3.0 * (vc - vu))
    seen = e.read(x.clamp(-1, 1)); per = {}; hit = tot = 0
    for sc, cap, s in zip(scenes, caps, seen):
        h, tt = caption_attribute_match(sc, s, per, states_positions(sc, cap)); hit += h; tot += tt
    print(json.dumps({"t0": t0, "match": round(hit / tot, 3), **{k: round(h / max(tt, 1), 3) for k, (h, tt) in per.items() if k in ("shape", "color", "texture", "size", "present")}}), flush=True)
