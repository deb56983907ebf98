"""The shipped lite teacher's caption attribute match against its sampler settings (Euler steps, CFG scale,
schedule shift), on validation captions of another seed than the card's (seed 1; the card reads seed 0).

    python results/lite/probes/teacher_sampler.py [n] > results/lite/probes/teacher_sampler.json

The card's setting is 8 steps, CFG 3, shift 3. A setting chosen here is then read on the card's 400 captions."""

import itertools
import json
import sys

import torch

torch.set_num_threads(1)
from pairfree import pretrained  # noqa: E402
from pairfree.pretrain.teacher import evaluate  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
teacher, evaluator = pretrained("lite-teacher"), pretrained("lite-evaluator")
rows = []
grid = [(8, cfg, shift) for cfg, shift in itertools.product((1.5, 2.0, 3.0, 4.5), (1.0, 3.0))] + [(16, 2.0, 1.0)]
for steps, cfg, shift in grid:
    got = evaluate(teacher, evaluator, 1, n, 32, steps, cfg, shift=shift)
    rows.append({k: got[k] for k in ("steps", "cfg", "shift", "caption attribute match", "per attribute")})
    print(f"steps {steps} cfg {cfg} shift {shift}: {got['caption attribute match']:.3f}", file=sys.stderr, flush=True)
print(json.dumps({"command": " ".join(["python", *sys.argv]), "seed": 1, "captions": n, "rows": rows}, indent=1))
