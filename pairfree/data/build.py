"""``pairfree data build``: images → instruction records, as the paper builds its data. A VLM captions each image
(unless a caption is given), an LLM proposes an edit per sub-type from the caption (JSON: instruction, edited
caption, object), the VLM validates each proposal (the object is there; the instruction can be carried out),
and the kept proposals are de-duplicated and balanced to the trainer's sub-type mix.

    pairfree data build --images photos/ --out data/photos --vlm /models/Qwen2.5-VL-7B --llm /models/Qwen2.5-7B
    pairfree data build --images renders/ --out data/shapes --vlm lite-judge --llm template --world lite

``--llm template`` is the shapes world's proposer: it reads the caption in the world's grammar and writes an
instruction from the world's templates (no LLM knows the world). Re-running skips finished images (resumable);
``out/work.jsonl`` holds every proposal and why it was kept or rejected, ``report.md``/``report.json`` the counts.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import torch
import yaml
from PIL import Image
from tqdm import tqdm

from pairfree.data.dataset import ImageSkip, read_image
from pairfree.data.records import NEEDS_OBJECT, DataError, EditRecord, jsonl_lines, with_article, write_records
from pairfree.data.world import edit_object
from pairfree.device import resolve_device
from pairfree.judge.qwen import load_qwen_judge
from pairfree.shipped import NAMES, pretrained
from pairfree.world.captions import caption as world_caption
from pairfree.world.captions import parse_placed
from pairfree.world.edits import DEFAULT_MIX, EDIT_TYPES, Edit, EditError, apply_edit, instruction_text, propose_params
from pairfree.world.scene import SceneError
from pairfree.world.spec import get_spec

PROMPTS = Path(__file__).parent / "prompts" / "v1.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ANSWER_KEYS = ("instruction", "edited_caption", "object")


class ProposalError(ValueError):
    """An LLM answer that is not the JSON object asked for (the message says what is wrong)."""


def load_prompts(path: str | Path = PROMPTS) -> dict:
    """The versioned prompt file (``pairfree/data/prompts/v1.yaml``), checked for every sub-type."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--prompts: {p} is not a file")
    d = yaml.safe_load(p.read_text())
    missing = [k for k in ("version", "caption", "system", "answer", "types", "validation") if k not in (d or {})]
    missing += [f"types.{t}" for t in EDIT_TYPES if t not in (d or {}).get("types", {})]
    if missing:
        raise DataError(f"{p}: missing key(s) {missing}")
    return d


def collect_inputs(src: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption or "") from a folder (``<name>.txt`` beside an image is its caption) or a JSONL of
    ``{"image": ..., "caption": ...}`` lines (paths relative to the file)."""
    src = Path(src)
    if src.is_dir():
        images = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"--images: {src} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        txt = lambda p: p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").is_file() else ""
        return [(p, txt(p)) for p in images]
    if src.is_file():
        out = []
        for n, d in jsonl_lines(src):
            if not isinstance(d, dict) or not isinstance(d.get("image"), str):
                raise DataError(f"{src}:{n}: expected an object with an 'image' path")
            out.append((src.parent / d["image"], str(d.get("caption", ""))))
        if not out:
            raise DataError(f"--images: {src} has no lines")
        return out
    raise DataError(f"--images: {src} is neither a folder nor a JSONL file")


def parse_answer(text: str) -> dict:
    """The LLM's answer as ``{instruction, edited_caption, object}``: exactly one JSON object (code fences
    allowed), string values, a non-empty instruction and edited caption."""
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").removeprefix("json").strip()
    try:
        d = json.loads(t)
    except json.JSONDecodeError as e:
        raise ProposalError(f"not JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise ProposalError(f"expected a JSON object, got {type(d).__name__}")
    if set(d) == {"error"}:  # the proposer says this sub-type cannot be proposed for this image
        raise ProposalError(f"declined: {d['error']}")
    missing = [k for k in ANSWER_KEYS if k not in d]
    if missing:
        raise ProposalError(f"missing key(s) {missing}")
    if not all(isinstance(d[k], str) for k in ANSWER_KEYS):
        raise ProposalError("every value must be a string")
    if not d["instruction"].strip() or not d["edited_caption"].strip():
        raise ProposalError("empty instruction or edited caption")
    return {k: d[k].strip() for k in ANSWER_KEYS}


class TemplateProposer:
    """The shapes world's stand-in for the LLM: reads the caption in the world's grammar and proposes a valid
    edit of the sub-type with an instruction from the world's training templates."""

    name = "template"

    def __init__(self, spec, templates: str = "train"):
        self.spec, self.templates = spec, templates

    def answer(self, requests: list[tuple[str, str, int]]) -> list[str]:
        """One JSON answer per (caption, sub-type, seed); "" when the caption is not in the world's grammar."""
        out = []
        for text, kind, seed in requests:
            try:
                scene = parse_placed(text, self.spec)
            except SceneError:
                out.append("")
                continue
            rng = random.Random(seed)
            for _ in range(200):
                params = propose_params(scene, kind, rng)
                try:
                    apply_edit(scene, kind, params)
                except EditError:
                    continue
                edit = Edit(scene, kind, params, instruction_text(scene, kind, params, rng, self.templates))
                answer = {
                    "instruction": edit.instruction,
                    "edited_caption": world_caption(edit.target, seed),
                    "object": edit_object(edit),
                }
                out.append(json.dumps(answer))
                break
            else:
                out.append('{"error": "no valid edit of this type on this scene"}')
        return out


class LLMProposer:
    """Any transformers causal LM with a chat template (a local directory), sampling one answer per request."""

    def __init__(self, path: str | Path, prompts: dict, device="cpu", max_new_tokens: int = 128, temperature=0.7):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise DataError(f"--llm: {path} is not a transformers model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.chat_template:
            raise DataError(f"--llm: the tokenizer in {path} has no chat template")
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        self.prompts, self.device, self.name = prompts, device, str(path)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    @torch.no_grad()
    def answer(self, requests: list[tuple[str, str, int]]) -> list[str]:
        p = self.prompts
        texts = [
            self.tokenizer.apply_chat_template(
                [
                    {"role": "system", "content": p["system"]},
                    {"role": "user", "content": p["types"][kind].format(caption=cap) + "\n" + p["answer"].format()},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            for cap, kind, _ in requests
        ]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(requests[0][2])  # the batch's first request seeds the sampling: reruns repeat it
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(
            **batch,
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            pad_token_id=pad,
        )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def load_vlm(name: str, device):
    """The validating (and captioning) VLM: a shipped judge name (``lite-judge``) or a local Qwen2.5-VL dir."""
    if name in NAMES:
        return pretrained(name).to(device)
    if (Path(name) / "judge.json").is_file():  # a world judge's directory (its judge.json: input size, positions)
        return pretrained("lite-judge", path=name).to(device)
    return load_qwen_judge(name).to(device)


def _image(path: Path, judge) -> torch.Tensor:
    """The image at the judge's input size, or its own shorter side if smaller (the judge resizes up itself)."""
    try:
        with Image.open(path) as im:
            side = min(im.size)
    except (OSError, ValueError):
        side = judge.config.image_size
    return read_image(path, min(side, judge.config.image_size), min_side=8)


def _mix_kinds(seed: int, index: int, n: int) -> list[str]:
    rng = random.Random(f"{seed}/kinds/{index}")
    return rng.choices(EDIT_TYPES, weights=[DEFAULT_MIX[t] for t in EDIT_TYPES], k=n)


def validate(judge, images: list, proposals: list[list[dict]], prompts: dict, checks, min_p: float = 0.5) -> None:
    """Mark each parsed proposal kept or rejected (``status``, ``p``) in one batch of VLM questions: the VLM must
    answer Yes (P ≥ ``min_p``) that the named object is in its image (sub-types that name one) and that the
    instruction can be carried out. ``images[i]`` ``(3, H, W)`` goes with ``proposals[i]`` (None: skipped)."""
    asks = []
    for image, prs in zip(images, proposals):
        for pr in prs:
            if image is None or pr["status"] != "parsed":
                continue
            if "object" in checks and pr["type"] in NEEDS_OBJECT:
                if not pr["object"]:
                    pr.update(status="rejected", reason="names no object")
                    continue
                q = prompts["validation"]["object"].format(object=with_article(pr["object"], "a"))
                asks.append((image, pr, "object", q))
            if "feasible" in checks:
                asks.append((image, pr, "feasible", prompts["validation"]["feasible"].format(**pr)))
    for start in range(0, len(asks), 64):
        chunk = asks[start : start + 64]
        p = judge.p_yes([im[None] for im, *_ in chunk], [q for *_, q in chunk]).tolist()
        for (_, pr, check, _), py in zip(chunk, p):
            pr.setdefault("p", {})[check] = round(py, 4)
            if py < min_p and pr["status"] == "parsed":
                pr.update(status="rejected", reason=f"{check} check: P(yes) {py:.2f}")
    for prs in proposals:
        for pr in prs:
            if pr["status"] == "parsed":
                pr["status"] = "kept"


def balance(kept: list[dict], seed: int) -> tuple[list[dict], dict]:
    """De-duplicate (same image and instruction) and cut each sub-type to the trainer's mix over the sub-types
    that have any; returns the rows and, per sub-type, how many were dropped as duplicates."""
    seen, rows, dups = set(), [], {}
    for r in kept:
        key = (r["image"], r["instruction"].lower())
        if key in seen:
            dups[r["type"]] = dups.get(r["type"], 0) + 1
            continue
        seen.add(key)
        rows.append(r)
    by_type = {t: [r for r in rows if r["type"] == t] for t in EDIT_TYPES}
    present = [t for t in EDIT_TYPES if by_type[t]]
    if not present:
        return [], dups
    total = sum(DEFAULT_MIX[t] for t in present)
    scale = min(len(by_type[t]) / (DEFAULT_MIX[t] / total) for t in present)  # the largest set that keeps the mix
    out = []
    for t in present:
        keep = max(1, int(scale * DEFAULT_MIX[t] / total + 1e-9))
        rs = list(by_type[t])
        random.Random(f"{seed}/balance/{t}").shuffle(rs)
        out += rs[:keep]
    return sorted(out, key=lambda r: (r["image"], r["type"], r["instruction"])), dups


def build(args) -> dict:
    """Run the pipeline over ``args.images`` into ``args.out``; returns the report."""
    prompts = load_prompts(args.prompts)
    inputs = collect_inputs(args.images)
    if args.limit:
        inputs = inputs[: args.limit]
    checks = tuple(c for c in args.checks.split(",") if c)
    if set(checks) - {"object", "feasible"}:
        raise DataError(f"--checks: expected a comma list of object,feasible, got {args.checks!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    judge = load_vlm(args.vlm, device)
    if args.llm == "template":
        proposer = TemplateProposer(get_spec(args.world))
    else:
        proposer = LLMProposer(args.llm, prompts, device=device)
    work = out / "work.jsonl"
    done = {}
    if work.is_file():
        for line in work.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["image"]] = row
    todo = [(i, p, c) for i, (p, c) in enumerate(inputs) if os.path.relpath(p, out) not in done]
    with work.open("a") as f, tqdm(total=len(inputs), initial=len(inputs) - len(todo), desc="data build") as bar:
        for start in range(0, len(todo), args.batch):
            chunk = todo[start : start + args.batch]
            rows, images = [], []
            for _, path, cap in chunk:
                row = {"image": os.path.relpath(path, out), "caption": cap, "proposals": []}
                try:
                    images.append(_image(path, judge))
                except ImageSkip as e:
                    row["skipped"] = str(e)
                    images.append(None)
                rows.append(row)
            need = [k for k, r in enumerate(rows) if "skipped" not in r and not r["caption"]]
            if need:  # (a) captions from the VLM
                caps = judge.generate_text(torch.stack([images[k] for k in need]), prompts["caption"])
                for k, c in zip(need, caps):
                    rows[k].update(caption=re.sub(r"\s+([;,.])", r"\1", c), caption_by=args.vlm)
            # (b) proposals, retried while malformed
            pending = []
            for (i, _, _), row in zip(chunk, rows):
                if "skipped" in row:
                    continue
                for j, kind in enumerate(_mix_kinds(args.seed, i, args.per_image)):
                    row["proposals"].append({"type": kind, "status": "malformed", "attempts": 0, "errors": []})
                    pending.append((row, len(row["proposals"]) - 1, i, j))
            for attempt in range(args.retries + 1):
                if not pending:
                    break
                seeds = [hash((args.seed, i, j, attempt)) & (2**62 - 1) for _, _, i, j in pending]
                reqs = [(row["caption"], row["proposals"][k]["type"], s) for (row, k, _, _), s in zip(pending, seeds)]
                answers = proposer.answer(reqs)
                left = []
                for (row, k, i, j), text in zip(pending, answers):
                    pr = row["proposals"][k]
                    pr["attempts"] += 1
                    try:
                        pr.update(parse_answer(text), status="parsed")
                    except ProposalError as e:
                        pr["errors"].append(str(e))
                        left.append((row, k, i, j))
                pending = left
            # (c) validation by the VLM
            validate(judge, images, [r["proposals"] for r in rows], prompts, checks, args.min_p)
            for row in rows:
                f.write(json.dumps(row) + "\n")
                done[row["image"]] = row
            f.flush()
            bar.update(len(chunk))
    return write_outputs(out, list(done.values()), args, prompts, proposer.name, checks)


def write_outputs(out: Path, rows: list[dict], args, prompts: dict, proposer: str, checks) -> dict:
    """(d) balance and de-duplicate, (e) the JSONL and the report."""
    provenance = {"vlm": args.vlm, "llm": proposer, "prompts": f"v{prompts['version']}", "checks": list(checks)}
    kept = [
        {**{k: pr[k] for k in ("type", *ANSWER_KEYS)}, "image": r["image"], "source_caption": r["caption"]}
        for r in rows
        for pr in r["proposals"]
        if pr["status"] == "kept"
    ]
    final, dups = balance(kept, args.seed)
    per_type = {}
    for t in EDIT_TYPES:
        prs = [pr for r in rows for pr in r["proposals"] if pr["type"] == t]
        reasons = {}
        for pr in prs:
            if pr["status"] == "rejected":
                key = pr["reason"].split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        per_type[t] = {
            "proposed": len(prs),
            "malformed": sum(pr["status"] == "malformed" for pr in prs),
            "rejected": reasons,
            "kept": sum(pr["status"] == "kept" for pr in prs),
            "duplicates": dups.get(t, 0),
            "final": sum(r["type"] == t for r in final),
        }
    report = {
        "images": len(rows),
        "skipped_images": {r["image"]: r["skipped"] for r in rows if "skipped" in r},
        "records": len(final),
        "provenance": provenance,
        "per_type": per_type,
        "command": "pairfree data build " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items()) if k != "fn"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# data build: {len(final)} records from {len(rows)} images",
        "",
        f"Provenance: {json.dumps(provenance)}. Skipped images: {len(report['skipped_images'])}.",
        "",
        "| sub-type | proposed | malformed | rejected (why) | kept | duplicates | in the dataset |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, c in per_type.items():
        why = ", ".join(f"{k} {v}" for k, v in c["rejected"].items()) or "—"
        lines.append(f"| {t} | {c['proposed']} | {c['malformed']} | {why} | {c['kept']} | {c['duplicates']} "
                     f"| {c['final']} |")  # fmt: skip
    lines += ["", "Sample rows:", ""] + [f"- `{r['image']}` [{r['type']}] {r['instruction']}" for r in final[:10]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if final:
        records = [EditRecord(**{k: r[k] for k in ("image", "instruction", "type", "edited_caption",
                                                   "source_caption", "object")}, provenance=provenance)
                   for r in final]  # fmt: skip
        write_records(out / "edits.jsonl", records)
    return report


def add_arguments(p) -> None:
    p.add_argument("--images", required=True, help="a folder of images (<name>.txt: its caption) or a JSONL")
    p.add_argument("--out", required=True, help="folder for edits.jsonl, report.md/.json and work.jsonl")
    p.add_argument("--vlm", default="lite-judge", help="captioning and validating VLM: a shipped judge name or a "
                   "local Qwen2.5-VL directory")  # fmt: skip
    p.add_argument("--llm", default="template", help="proposer: a local causal-LM directory with a chat template, "
                   "or 'template' (the shapes world's templates)")  # fmt: skip
    p.add_argument("--world", default="lite", help="the world spec of --llm template")
    p.add_argument("--prompts", default=str(PROMPTS), help="the versioned prompt file")
    p.add_argument("--per-image", dest="per_image", type=int, default=2, help="proposals per image")
    p.add_argument("--retries", type=int, default=2, help="new attempts for an answer that is not valid JSON")
    p.add_argument("--checks", default="object,feasible", help="VLM checks: comma list of object,feasible")
    p.add_argument("--min-p", dest="min_p", type=float, default=0.5, help="the VLM's P(yes) a check needs")
    p.add_argument("--batch", type=int, default=8, help="images per batch")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
