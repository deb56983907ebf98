"""Complete edit per instruction template: which wordings of the benchmark an editor understands.

    python results/lite/probes/per_template.py runs/lite/ys_s8/model runs/lite/bench [heldout]

Runs the editor on the benchmark as `pairfree eval` does (4 steps, seed 0), reads the outputs with the lite
evaluator, and groups the complete-edit rate by the template that worded each case (the third argument names the
template set the benchmark was built with: heldout, train or unseen)."""

import sys
from collections import defaultdict

import torch

torch.set_num_threads(1)
from pairfree import pretrained  # noqa: E402
from pairfree.edit import EditPipeline  # noqa: E402
from pairfree.eval.editing import attribute_checks, run_editor  # noqa: E402
from pairfree.world.bench import load_bench  # noqa: E402
from pairfree.world.edits import TEMPLATES, form_of, instruction_choices  # noqa: E402

model, bench_dir = sys.argv[1], sys.argv[2]
templates = sys.argv[3] if len(sys.argv) > 3 else "heldout"
bench = load_bench(bench_dir)
outputs = run_editor(EditPipeline.from_pretrained(model), bench, 4)
success, preserved = attribute_checks(pretrained("lite-evaluator"), outputs, bench.edits)
rows = defaultdict(list)
for e, ok in zip(bench.edits, (success & preserved).tolist()):
    choices = instruction_choices(e.source, e.kind, e.params, templates)
    rows[TEMPLATES[templates][form_of(e.kind, e.params)][choices.index(e.instruction)]].append(ok)
print("| template | cases | complete edit |\n|---|---|---|")
for t, oks in sorted(rows.items(), key=lambda kv: sum(kv[1]) / len(kv[1])):
    print(f"| {t} | {len(oks)} | {sum(oks) / len(oks):.2f} |")
