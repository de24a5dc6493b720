"""Train the embedded model: a small LLaVA that knows the shapes world, in resumable stages.

    python -m pruning.shapes.train --work runs/shapes --export assets/model

Stages (each saves a checkpoint under ``--work``; a finished stage is skipped on a rerun):

1. ``tokenizer``: byte-level BPE on captions, questions and answers of training scenes.
2. ``vision``: a CLIP ViT with a [CLS] token and a small CLIP text encoder, trained CLIP-style on the
   captions (contrastive loss), plus auxiliary losses (a deviation from CLIP, named here and in the model
   card): on the final [CLS] (which colour-shape pairs are present, how many objects) and on the
   penultimate layer's patch outputs, which are what LLaVA feeds the LLM (the colour-shape pair covering
   each patch, or background; its colour and its shape, each with a head of its own, shape weighted x2;
   the covering object's centre). Single-object scenes are mixed in early (30% of the batch, decaying).
2b. ``vision_more``: a second cycle of the same losses from the ``vision`` checkpoint, with fresh heads,
   its own warm-up and cosine at half the learning rate, no single-object scenes; the LLaVA stages build
   on its output (``clip_more``).
3. ``llm_text``: the Llama decoder learns the language of captions from text alone (stands in for Vicuna).
4. ``projector``: LLaVA's stage 1, feature alignment: only the ``mlp2x_gelu`` projector trains, on
   image -> caption, with the vision tower and the LLM frozen.
   Stages 3 and 4 run only with ``--instruct-init projector``. The default recipe (``instruct_init="scratch"``,
   a deviation from LLaVA) skips them: on this toy the projector-only stage muted colour in the projected
   features and the instruct stage started worse from it (docs/embedded-model.md).
5. ``instruct``: LLaVA's stage 2: projector + LLM train on the questions (5% of images also get their caption),
   vision frozen, 8 images a step. Besides the five evaluated question types, training asks where one named
   object is ("Is the red circle on the left or the right?"): a stepping stone to the relative-position
   questions. Curricula: the first ``single_object_phase`` (8%, ``--warm-start``) asks only colour and shape
   questions about single-object scenes; then scenes hold at most ``objects_start`` (2) objects, growing to 5
   over 25% of the rest, and position questions start with centres >= 36 px apart, narrowing to
   ``world.MIN_GAP`` over 40%. All questions about one image are packed in one sequence: each question attends
   to the image prefix and to itself only (a 4-D mask), and its position ids restart after the image, so each
   packed question sees exactly what a single question sees at inference.
6. ``instruct_more``: a second stage-2 cycle from the ``instruct`` checkpoint: the full mix, no curricula, its
   own warm-up and cosine at half the learning rate (optional auxiliary centre loss, ``centre_aux``, off).
7. ``instruct_focus``: a third stage-2 cycle from ``instruct_more`` weighted to the hardest type: 8 relative-
   position questions per image (4 before), half of each step's images from scenes of 3-5 objects, every other
   type still asked, lower learning rate (a deviation from LLaVA's single stage 2).

Each stage runs a fixed number of steps (``--steps``; the defaults fit 150 minutes on 2 idle cores), so a rerun
follows the same schedule on any machine; ``--minutes`` caps each stage's time (a stage stops at whichever comes
first, and its cosine then follows the clock);
every stage logs to ``<work>/train.log``. ``--export`` writes the shipped directory: a LLaVA checkpoint
(``LlavaForConditionalGeneration`` + ``AutoProcessor``) and the CLIP model (``clip/``) whose text half IVTP
uses.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import world

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
STAGES = ("tokenizer", "vision", "vision_more", "llm_text", "projector", "instruct", "instruct_more", "instruct_focus")
CAPTION_PROMPT = "Describe the image."


@dataclass
class TrainConfig:
    seed: int = 0
    image_size: int = world.IMAGE_SIZE  # 96 px
    patch_size: int = 8  # 12 x 12 = 144 patches
    vocab_size: int = 512
    # vision tower (CLIP ViT with [CLS]) and the CLIP text encoder
    vision_hidden: int = 128
    vision_layers: int = 6
    vision_heads: int = 4
    vision_mlp: int = 512
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_max_len: int = 64
    # LLM (Llama)
    llm_hidden: int = 128
    llm_layers: int = 8
    llm_heads: int = 4
    llm_mlp: int = 384
    # optimisation: each stage runs a fixed number of steps (the stopping rule, so that a rerun follows the same
    # schedule on any machine); the minutes are a cap (a stage on a slower machine stops at its cap, and its
    # cosine follows the clock then). The step counts are calibrated to fit 150 minutes on 2 idle cores: vision
    # ~91 steps/min, instruct ~220, instruct_more ~205, instruct_focus ~170 (runs G and H, docs/logs); the vision
    # counts are one more than the previous release's tower's 1368 and 1062 (its log said "saved after 1369/1063
    # steps", an off-by-one since fixed in run_steps): on that tower the LLaVA stages learned shape and existence
    # early, unlike on run H's longer-trained tower (2536 and 1845 steps; docs/embedded-model.md). Run I, the
    # shipped run, took 132.5 minutes with these counts (docs/logs/run-I.log)
    batch_vision: int = 64
    # 8 images a step (each with ~15 packed questions): about 3x the optimizer steps of the earlier 24 images
    # a step in the same time (that run had 1565 steps in 42 minutes); see docs/embedded-model.md
    batch_llm: int = 8
    steps: dict = field(default_factory=lambda: {"vision": 1369, "vision_more": 1063, "llm_text": 600,
                                                  "projector": 400, "instruct": 11500, "instruct_more": 3800,
                                                  "instruct_focus": 6000})
    # the projector stage is kept short: with a toy LLM that never learned to copy from its context, a
    # 4-minute projector-only stage muted colour in the projected features (see colour_salience)
    # caps: run I's measured minutes per stage (15.2, 12.2, 53.0, 17.6, 34.5) plus 11-15% each, 149 in all
    minutes: dict = field(default_factory=lambda: {"vision": 17.0, "vision_more": 14.0, "llm_text": 2.0,
                                                    "projector": 1.0, "instruct": 59.5, "instruct_more": 20.0,
                                                    "instruct_focus": 38.5})
    lr: dict = field(default_factory=lambda: {"vision": 1e-3, "vision_more": 5e-4, "llm_text": 2e-3,
                                               "projector": 1e-3, "instruct": 1e-3, "instruct_more": 5e-4,
                                               "instruct_focus": 3e-4})
    warmup: int = 150
    # share of single-object scenes in the vision stage, decaying from this value towards a tenth of it over
    # `single_object_span` steps (6000, the stage's step count when the previous release's tower was trained:
    # its 1368 steps ended with the share at 0.24)
    single_object_start: float = 0.3
    single_object_span: int = 6000
    shape_weight: float = 2.0  # weight of the per-patch shape loss in the vision stage
    # position questions in the instruct stage: the minimum gap between the two centres starts wide and
    # narrows to world.MIN_GAP over this share of the stage (a curriculum: clear cases first)
    position_gap_start: float = 36.0
    position_curriculum: float = 0.4
    # instruct stage: scenes hold at most `objects_start` objects at first, growing to 5 over this share of
    # the stage (5: no such curriculum)
    objects_start: int = 2
    objects_curriculum: float = 0.25
    # ... and before that, this share of the stage asks only colour and shape questions about single-object
    # scenes (0: off). Without it, colour stayed at chance for 2000 steps of 8 images (runs A and B in
    # docs/embedded-model.md); with 8% (about 1000 steps) the model read colour before the multi-object mix
    single_object_phase: float = 0.08
    # instruct stage: questions packed per image (position and "where" are the hardest types: more of them),
    # and the chance that an image also gets "Describe the image." -> its caption
    position_per_image: int = 4
    where_per_image: int = 2
    caption_prob: float = 0.05
    # where the instruct stage's LLM and projector start: "projector" (LLaVA's order: llm_text, then the
    # projector stage) or "scratch" (fresh LLM and projector on the frozen vision tower; a deviation)
    instruct_init: str = "scratch"
    # instruct_more: a second LLaVA stage-2 cycle from the instruct checkpoint (fresh optimizer, warm-up, cosine
    # at half the learning rate), the full question mix. Optional auxiliary loss (a deviation from LLaVA, training
    # only, not shipped; off by default): a linear head on the projector's output regresses each object patch's
    # object centre (x, y), weighted by `centre_aux`. Motivation: on the shipped model the vision features locate
    # objects to 2.9 px (linear probe, `evaluate`'s feature probe) but the projected ones only to 11.2 px. An
    # exploratory trial outside the repo showed no gain in relative position, so the shipped run leaves it off.
    centre_aux: float = 0.0
    # instruct_focus: a third stage-2 cycle from instruct_more aimed at the hardest type, relative position (on
    # the instruct_more checkpoint it fell from 90% with two objects to 76% with five: `evaluate --types position
    # --n 800`; and it was still rising when instruct_more ended): `focus_position_per_image` position questions per image, every other type still asked
    # so that it is not forgotten. `focus_min_objects` > 1 draws only scenes with that many objects or more; a
    # 10-minute trial with 3 raised position but made the model forget two-object counts (55%), so it is 1
    focus_min_objects: int = 1
    focus_position_per_image: int = 8
    # ... and `focus_crowded_share` of each step's images come from scenes of `focus_crowded_objects`-5 objects,
    # the rest from all sizes: crowded scenes are where position fails (5 objects: 68% in run G, docs/embedded-
    # model.md), and run E's 3-5-object scenes raised position fastest, while the other half keeps one- and
    # two-object scenes (and their counts) in the mix (a fix for run E's forgetting). Run H (from scratch,
    # docs/logs/run-H.log): position 93.0%, count 100% (`evaluate --model runs/H/export --n 1000`)
    focus_crowded_share: float = 0.5
    focus_crowded_objects: int = 3

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


TINY = dict(vision_hidden=64, vision_layers=2, vision_heads=2, vision_mlp=128, text_hidden=64, text_layers=1,
            text_heads=2, llm_hidden=64, llm_layers=2, llm_heads=2, llm_mlp=128, batch_vision=8, batch_llm=4,
            steps={"vision": 20, "vision_more": 10, "llm_text": 20, "projector": 20, "instruct": 20,
                   "instruct_more": 10, "instruct_focus": 10}, warmup=5)


class Log:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        tqdm.write(line)
        with self.path.open("a") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------- data
def to_pixels(images: list) -> torch.Tensor:
    """PIL images (already image_size square) -> normalised (B, 3, H, W), as CLIPImageProcessor does."""
    arr = np.stack([np.asarray(im, np.float32) / 255.0 for im in images])
    arr = (arr - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class SeedStream:
    """Training scene seeds: disjoint per stage, all below world.HELD_OUT_SEED."""

    def __init__(self, stage_index: int, seed: int):
        self.next = (stage_index * 50_000_000 + seed * 1_000_003) % (world.HELD_OUT_SEED // 2)

    def take(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def scenes_for(seeds, cfg: TrainConfig, single_share: float = 0.0, max_objects: int = 5, min_objects: int = 1):
    out = []
    for s in seeds:
        n = 1 if (s * 2654435761 % 1000) / 1000 < single_share else None
        if n is None and min_objects > 1:  # uniform over min_objects..max_objects
            n = min_objects + (s * 40503 % 1009) % (max_objects - min_objects + 1)
        out.append(world.make_scene(s, n_objects=n, image_size=cfg.image_size, max_objects=max_objects))
    return out


def focus_scenes(seed_ids: list, cfg: TrainConfig) -> list:
    """instruct_focus's images: the first ``focus_crowded_share`` of them from scenes of
    ``focus_crowded_objects``-5 objects, the others from ``focus_min_objects``-5."""
    k = int(round(len(seed_ids) * cfg.focus_crowded_share))
    return (scenes_for(seed_ids[:k], cfg, min_objects=cfg.focus_crowded_objects)
            + scenes_for(seed_ids[k:], cfg, min_objects=cfg.focus_min_objects))


def corpus_texts(cfg: TrainConfig, n_scenes: int = 3000) -> list[str]:
    rng = np.random.default_rng(cfg.seed)
    texts = []
    for sc in scenes_for(range(n_scenes), cfg):
        texts.append(sc.caption)
        for t in world.QUESTION_TYPES:  # (the tokenizer of the shipped run saw these types only)
            texts += [f"USER: \n{q.text} ASSISTANT: {q.answer}" for q in world.questions_for(sc, t, rng)]
    texts.append(f"USER: \n{CAPTION_PROMPT} ASSISTANT:")
    return texts


def patch_labels(scene, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: pair class (24 = background), covering object's centre / size, whether it has one."""
    g, p = cfg.grid, cfg.patch_size
    n_bg = len(world.PAIRS)
    cls = np.full(g * g, n_bg, np.int64)
    centre = np.zeros((g * g, 2), np.float32)
    best = np.zeros(g * g, np.float32)
    for o in scene.objects:
        cov = o.mask[:g * p, :g * p].reshape(g, p, g, p).mean((1, 3)).ravel()
        take = (cov >= 0.25) & (cov > best)
        cls[take] = o.pair_index
        centre[take] = (o.cx / cfg.image_size, o.cy / cfg.image_size)
        best = np.maximum(best, np.where(take, cov, best))
    return cls, centre, cls != n_bg


def caption_batch(tok, captions: list[str], max_len: int):
    """Captions for the CLIP text encoder: <s> caption </s>, right-padded. CLIP pools at the first
    ``eos_token_id``, so every row must end with </s> (kept even when a caption is truncated)."""
    rows = [tok(c).input_ids[:max_len - 1] + [tok.eos_token_id] for c in captions]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return type("Batch", (), {"input_ids": ids, "attention_mask": mask})


# ----------------------------------------------------------------------------- models
def build_clip(cfg: TrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                              image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
                          num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                          max_position_embeddings=cfg.text_max_len, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          projection_dim=cfg.vision_hidden)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.vision_hidden)
    return CLIPModel(config)


def build_llava(cfg: TrainConfig, tokenizer, clip):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_mlp,
                       num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads,
                       num_key_value_heads=cfg.llm_heads, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=clip.config.vision_config, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=cfg.grid ** 2, tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


class VisionHeads(torch.nn.Module):
    """Auxiliary heads for the vision stage (not shipped)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        d, n_pairs = cfg.vision_hidden, len(world.PAIRS)
        self.present = torch.nn.Linear(d, n_pairs)  # final [CLS]: which pairs are present
        self.count = torch.nn.Linear(d, 5)  # final [CLS]: 1..5 objects
        self.patch_pair = torch.nn.Linear(d, n_pairs + 1)  # penultimate patches: pair or background
        # separate colour and shape heads: with the pair head alone, colour (easy) dominated and shape
        # stayed at 41% on a probe of the shipped-before model; a shape head of its own gives shape a signal
        self.patch_colour = torch.nn.Linear(d, len(world.COLOUR_NAMES) + 1)
        self.patch_shape = torch.nn.Linear(d, len(world.SHAPES) + 1)
        self.patch_centre = torch.nn.Linear(d, 2)  # penultimate patches: covering object's centre


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def run_steps(name: str, cfg: TrainConfig, params, step_fn, log: Log, total: int | None = None):
    """The shared loop: AdamW, warm-up + cosine, clip 1.0, a step count and a time cap, tqdm progress.
    Returns the number of optimizer steps taken."""
    total = total or cfg.steps[name]
    budget_s = cfg.minutes.get(name, 1e9) * 60
    opt = torch.optim.AdamW(params, lr=cfg.lr[name], weight_decay=0.01, betas=(0.9, 0.98))
    params = [p for g in opt.param_groups for p in g["params"]]
    start, ema, done = time.time(), None, 0
    bar = tqdm(range(total), desc=name, mininterval=5)
    for step in bar:
        elapsed = time.time() - start
        if elapsed > budget_s:
            log(f"{name}: time cap of {budget_s / 60:.1f} min reached at step {step} of {total} (the step "
                f"count was not reached in time; the cosine followed the clock)")
            break
        # the cosine follows the clock when the time cap, not the step count, will end the stage
        frac_steps = step / total
        frac_time = elapsed / budget_s
        sched_step = int(max(frac_steps, frac_time) * total)
        for g in opt.param_groups:
            g["lr"] = lr_at(sched_step, total, cfg.lr[name], cfg.warmup)
        loss, stats = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
        if step % 100 == 0 or step == total - 1:
            log(f"{name} step {step} loss {ema:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in stats.items())
                + f" ({elapsed / 60:.1f} min)")
    return done  # optimizer steps taken


# ----------------------------------------------------------------------------- stages
def stage_tokenizer(cfg: TrainConfig, work: Path, log: Log):
    from ..toy import build_tokenizer

    tok = build_tokenizer(cfg.vocab_size, corpus_texts(cfg))
    for word in world.answer_vocabulary():
        ids = tok(" " + word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"answer {word!r} is {len(ids)} tokens; raise vocab_size")
    tok.save_pretrained(work / "tokenizer")
    log(f"tokenizer: {len(tok)} tokens, every answer word is one token")


def stage_vision(cfg: TrainConfig, work: Path, log: Log, name: str = "vision"):
    """CLIP-style training of the vision tower and text encoder, with the auxiliary heads. ``vision_more``
    continues from the ``vision`` checkpoint with fresh heads and its own warm-up and cosine (a second
    cycle at a lower learning rate: the patch shape accuracy was still rising when ``vision`` ended)."""
    from transformers import AutoTokenizer, CLIPModel

    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    more = name == "vision_more"
    torch.manual_seed(cfg.seed + (7 if more else 0))
    clip = (CLIPModel.from_pretrained(work / "clip") if more else build_clip(cfg, tok)).train()
    heads = VisionHeads(cfg)
    seeds = SeedStream(5 if more else 1, cfg.seed)

    def step_fn(step):
        frac = 1.0 if more else min(1.0, step / cfg.single_object_span)
        single = cfg.single_object_start * (1 - 0.9 * frac)
        scenes = scenes_for(seeds.take(cfg.batch_vision), cfg, single)
        pixels = to_pixels([s.image for s in scenes])
        text = caption_batch(tok, [s.caption for s in scenes], cfg.text_max_len)
        out = clip(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels,
                   return_loss=True, output_hidden_states=True)
        vis = out.vision_model_output
        cls_final = vis.pooler_output  # (B, D) post-layernorm [CLS] of the last layer
        patches = vis.hidden_states[-2][:, 1:]  # (B, N, D) what LLaVA feeds the projector
        present = torch.zeros(len(scenes), len(world.PAIRS))
        for i, s in enumerate(scenes):
            present[i, [o.pair_index for o in s.objects]] = 1
        count = torch.tensor([len(s.objects) - 1 for s in scenes])
        labels = [patch_labels(s, cfg) for s in scenes]
        pcls = torch.from_numpy(np.stack([x[0] for x in labels]))
        pcen = torch.from_numpy(np.stack([x[1] for x in labels]))
        pobj = torch.from_numpy(np.stack([x[2] for x in labels]))
        l_present = F.binary_cross_entropy_with_logits(heads.present(cls_final), present)
        l_count = F.cross_entropy(heads.count(cls_final), count)
        logits_patch = heads.patch_pair(patches)
        l_patch = F.cross_entropy(logits_patch.reshape(-1, logits_patch.shape[-1]), pcls.reshape(-1))
        l_centre = F.mse_loss(heads.patch_centre(patches)[pobj], pcen[pobj]) * 20 if pobj.any() else 0 * l_patch
        n_shapes, n_colours = len(world.SHAPES), len(world.COLOUR_NAMES)
        ccls = torch.where(pobj, pcls // n_shapes, torch.full_like(pcls, n_colours))
        scls = torch.where(pobj, pcls % n_shapes, torch.full_like(pcls, n_shapes))
        logits_colour, logits_shape = heads.patch_colour(patches), heads.patch_shape(patches)
        l_colour = F.cross_entropy(logits_colour.reshape(-1, n_colours + 1), ccls.reshape(-1))
        l_shape = F.cross_entropy(logits_shape.reshape(-1, n_shapes + 1), scls.reshape(-1))
        loss = out.loss + l_present + l_count + l_patch + l_centre + l_colour + cfg.shape_weight * l_shape
        with torch.no_grad():
            def acc(logits, target):
                return (logits.argmax(-1) == target)[pobj].float().mean().item() if pobj.any() else 0.0
            acc_obj, acc_col, acc_shp = acc(logits_patch, pcls), acc(logits_colour, ccls), acc(logits_shape, scls)
        return loss, {"clip": out.loss.item(), "present": l_present.item(), "count": l_count.item(),
                      "patch": l_patch.item(), "centre": float(l_centre.detach()), "shape": l_shape.item(),
                      "patch_acc_obj": acc_obj, "colour_acc_obj": acc_col, "shape_acc_obj": acc_shp}

    params = list(clip.parameters()) + list(heads.parameters())
    steps = run_steps(name, cfg, params, step_fn, log)
    clip.eval().save_pretrained(work / VISION_OUT[name])
    log(f"{name}: saved after {steps} steps")


VISION_OUT = {"vision": "clip", "vision_more": "clip_more"}


def vision_dir(work: Path) -> Path:
    """The vision checkpoint the LLaVA stages build on: the continued one when that stage has run."""
    return work / "clip_more" if (work / "clip_more").exists() else work / "clip"


def _load_llava_parts(cfg: TrainConfig, work: Path, source: str):
    from transformers import AutoTokenizer, CLIPModel, LlavaForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    if source == "clip":
        clip = CLIPModel.from_pretrained(vision_dir(work))
        torch.manual_seed(cfg.seed + 1)
        model = build_llava(cfg, tok, clip)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(work / source, dtype=torch.float32)
    return tok, model


class Packer:
    """Builds packed LLM batches: [prefix | image | q1 a1 | q2 a2 | ...] with a 4-D mask."""

    def __init__(self, tok, cfg: TrainConfig):
        self.tok, self.cfg = tok, cfg
        self.n_img = cfg.grid ** 2
        probe = self.prompt_ids("Q")
        self.prefix = probe["prefix"]

    def prompt_ids(self, question: str) -> dict:
        # the exact string the shipped chat template renders for one user turn with an image
        text = f"USER: <image>\n{question} ASSISTANT:"
        ids = self.tok(text.replace("<image>", "<image>" * self.n_img)).input_ids
        img = self.tok.convert_tokens_to_ids("<image>")
        a = ids.index(img)
        return {"prefix": ids[:a], "question": ids[a + self.n_img:]}

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(" " + answer, add_special_tokens=False).input_ids + [self.tok.eos_token_id]

    def batch(self, items: list[list[tuple[str, str]]], with_image: bool = True):
        """items[b] = [(question, answer), ...] for image b. Returns ids, positions, mask, labels, image slots."""
        a = len(self.prefix)
        head = a + (self.n_img if with_image else 0)
        seqs, poss, segs, labs = [], [], [], []
        for qa in items:
            ids = list(self.prefix) + ([0] * self.n_img if with_image else [])
            pos = list(range(head))
            seg = [0] * head
            lab = [-100] * head
            for j, (q, ans) in enumerate(qa, start=1):
                qi = self.prompt_ids(q)["question"] if q is not None else []
                body = qi + self.answer_ids(ans)
                ids += body
                pos += list(range(head, head + len(body)))
                seg += [j] * len(body)
                # the label at t is the next token, for positions whose next token is part of the answer
                lab += [body[t + 1] if t + 1 < len(body) and t + 1 >= len(qi) else -100 for t in range(len(body))]
            seqs.append(ids), poss.append(pos), segs.append(seg), labs.append(lab)
        s_max = max(len(x) for x in seqs)
        B = len(items)
        ids_t = torch.full((B, s_max), self.tok.pad_token_id, dtype=torch.long)
        pos_t = torch.zeros((B, s_max), dtype=torch.long)
        seg_t = torch.full((B, s_max), -1, dtype=torch.long)
        lab_t = torch.full((B, s_max), -100, dtype=torch.long)
        for b in range(B):
            n = len(seqs[b])
            ids_t[b, :n] = torch.tensor(seqs[b])
            pos_t[b, :n] = torch.tensor(poss[b])
            seg_t[b, :n] = torch.tensor(segs[b])
            lab_t[b, :n] = torch.tensor(labs[b])
        causal = torch.ones(s_max, s_max, dtype=torch.bool).tril()
        same = seg_t[:, :, None] == seg_t[:, None, :]
        to_prefix = (seg_t[:, None, :] == 0) & (seg_t[:, :, None] >= 0)
        mask = causal[None] & (same | to_prefix)
        mask |= torch.eye(s_max, dtype=torch.bool)[None]  # padding rows see themselves
        return ids_t, pos_t, mask[:, None], lab_t, head


def llm_forward(model, ids, pos, mask, image_feats=None, image_slice=None):
    """Decoder layers over packed sequences; returns final-normed hidden states (B, S, D)."""
    lm = model.model.language_model
    h = lm.embed_tokens(ids)
    if image_feats is not None:
        h = torch.cat([h[:, :image_slice.start], image_feats.to(h.dtype), h[:, image_slice.stop:]], dim=1)
    cos_sin = lm.rotary_emb(h, pos)
    for layer in lm.layers:
        h = layer(h, attention_mask=mask, position_embeddings=cos_sin)
    return lm.norm(h)


def lm_loss(model, hidden, labels):
    sel = labels != -100
    logits = model.lm_head(hidden[sel])
    return F.cross_entropy(logits, labels[sel]), logits, labels[sel]


def vision_features(model, pixels):
    with torch.no_grad():
        out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]  # (B, N, Dv), [CLS] dropped ("default")


def stage_llm_text(cfg: TrainConfig, work: Path, log: Log):
    tok, model = _load_llava_parts(cfg, work, "clip")
    packer = Packer(tok, cfg)
    seeds = SeedStream(2, cfg.seed)
    lm_params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    model.train()

    def step_fn(step):
        scenes = scenes_for(seeds.take(cfg.batch_llm * 2), cfg)
        ids, pos, mask, labels, head = packer.batch([[(None, s.caption)] for s in scenes], with_image=False)
        hidden = llm_forward(model, ids, pos, mask)
        loss, _, _ = lm_loss(model, hidden, labels)
        return loss, {}

    run_steps("llm_text", cfg, lm_params, step_fn, log)
    model.save_pretrained(work / "llm_text")
    log("llm_text: saved")


def _qa_items(scenes, rng, caption_prob: float, min_gap: float = world.MIN_GAP,
              qtypes: tuple = world.QUESTION_TYPES + world.TRAINING_ONLY_TYPES, position_per_image: int = 3,
              where_per_image: int = 1):
    items, types = [], []
    for s in scenes:
        qa, tt = [], []
        for t in qtypes:
            cands = world.questions_for(s, t, rng, min_gap=min_gap)
            if t == "exist":
                chosen = cands  # a yes and a no (balanced)
            elif t == "position":
                chosen = [cands[i] for i in rng.permutation(len(cands))[:position_per_image]]
            elif t == "where":
                chosen = [cands[i] for i in rng.permutation(len(cands))[:where_per_image]]
            else:
                chosen = [cands[i] for i in rng.permutation(len(cands))[:1]]
            qa += [(q.text, q.answer) for q in chosen]
            tt += [t] * len(chosen)
        if rng.random() < caption_prob:
            qa.append((CAPTION_PROMPT, s.caption))
            tt.append("caption")
        order = rng.permutation(len(qa))
        items.append([qa[i] for i in order])
        types.append([tt[i] for i in order])
    return items, types


def _image_step(model, packer, scenes, items, centre_head=None):
    """LM loss on packed questions; with ``centre_head``, also returns the auxiliary centre loss on the
    projector's output (object patches only) as a fourth value."""
    ids, pos, mask, labels, head = packer.batch(items)
    feats = model.model.multi_modal_projector(vision_features(model, to_pixels([s.image for s in scenes])))
    a = len(packer.prefix)
    hidden = llm_forward(model, ids, pos, mask, feats, slice(a, a + packer.n_img))
    out = lm_loss(model, hidden, labels)
    if centre_head is None:
        return out
    labels_per_scene = [patch_labels(s, packer.cfg) for s in scenes]
    centre = torch.from_numpy(np.stack([x[1] for x in labels_per_scene]))
    on_object = torch.from_numpy(np.stack([x[2] for x in labels_per_scene]))
    aux = F.mse_loss(centre_head(feats)[on_object], centre[on_object]) * 20 if on_object.any() else 0 * out[0]
    return (*out, aux)


def stage_projector(cfg: TrainConfig, work: Path, log: Log):
    tok, model = _load_llava_parts(cfg, work, "llm_text")
    packer = Packer(tok, cfg)
    seeds = SeedStream(3, cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    proj = list(model.model.multi_modal_projector.parameters())
    for p in proj:
        p.requires_grad_(True)
    model.train()

    def step_fn(step):
        scenes = scenes_for(seeds.take(cfg.batch_llm), cfg)
        loss, _, _ = _image_step(model, packer, scenes, [[(CAPTION_PROMPT, s.caption)] for s in scenes])
        return loss, {}

    log(f"projector: colour salience before {colour_salience(model, cfg):.3f}")
    run_steps("projector", cfg, proj, step_fn, log)
    log(f"projector: colour salience after {colour_salience(model, cfg):.3f}")
    model.save_pretrained(work / "projector")
    log("projector: saved")


def colour_salience(model, cfg: TrainConfig, n: int = 240) -> float:
    """How visible colour is in the projected features: nearest-centroid colour accuracy (chance 1/6) of the
    mean projected feature over each object's patches, on single-object held-out scenes (2/3 to fit the
    centroids, 1/3 to test). A linear probe reads colour almost perfectly at every stage; this measures
    whether colour is a large direction the LLM can pick up or a faint one it has learned to ignore."""
    scenes = [world.make_scene(world.HELD_OUT_SEED + 950_000 + i, n_objects=1, image_size=cfg.image_size)
              for i in range(n)]
    feats, ys = [], []
    with torch.no_grad():
        for k in range(0, n, 40):
            proj = model.model.multi_modal_projector(
                vision_features(model, to_pixels([s.image for s in scenes[k:k + 40]])))
            for b, s in enumerate(scenes[k:k + 40]):
                cov = torch.from_numpy(s.patch_coverage(cfg.patch_size) >= 0.5)
                feats.append(proj[b, cov].mean(0))
                ys.append(world.COLOUR_NAMES.index(s.objects[0].colour))
    x, y = torch.stack(feats), torch.tensor(ys)
    fit = 2 * n // 3
    centres = torch.stack([x[:fit][y[:fit] == c].mean(0) for c in range(len(world.COLOUR_NAMES))])
    return (torch.cdist(x[fit:], centres).argmin(-1) == y[fit:]).float().mean().item()


def first_token_accuracy(model, packer, cfg: TrainConfig, n_scenes: int = 64) -> dict:
    """Teacher-forced accuracy of each answer's first token on held-out scenes, per question type."""
    rng = np.random.default_rng(12345)
    scenes = [world.make_scene(world.HELD_OUT_SEED + 900_000 + i, image_size=cfg.image_size) for i in range(n_scenes)]
    items, types = _qa_items(scenes, rng, caption_prob=0.0)
    model.eval()
    hits: dict = {}
    with torch.no_grad():
        for i in range(0, n_scenes, 16):
            ids, pos, mask, labels, head = packer.batch(items[i:i + 16])
            feats = model.model.multi_modal_projector(
                vision_features(model, to_pixels([s.image for s in scenes[i:i + 16]])))
            a = len(packer.prefix)
            hidden = llm_forward(model, ids, pos, mask, feats, slice(a, a + packer.n_img))
            pred = model.lm_head(hidden).argmax(-1)
            for b, qa in enumerate(items[i:i + 16]):
                # the first label of each segment is its answer's first token
                segs = labels[b] != -100
                idx = segs.nonzero().flatten().tolist()
                firsts = [j for k, j in enumerate(idx) if k == 0 or idx[k - 1] != j - 1]
                for t, j in zip(types[i + b], firsts):
                    hits.setdefault(t, []).append(int(pred[b, j] == labels[b, j]))
    model.train()
    return {t: float(np.mean(v)) for t, v in hits.items()}


def trainable_llava_params(model) -> list:
    """LLaVA's stage-2 split: the vision tower frozen, projector + LLM trainable (returned)."""
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")]
    for p in params:
        p.requires_grad_(True)
    return params


def stage_instruct(cfg: TrainConfig, work: Path, log: Log):
    tok, model = _load_llava_parts(cfg, work, "clip" if cfg.instruct_init == "scratch" else "projector")
    log(f"instruct: starts from {'a fresh LLM and projector' if cfg.instruct_init == 'scratch' else 'the projector stage'}")
    packer = Packer(tok, cfg)
    seeds = SeedStream(4, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 4)
    params = trainable_llava_params(model)
    model.train()
    model.model.vision_tower.eval()

    start = time.time()

    def step_fn(step):
        progress = max(step / cfg.steps["instruct"], (time.time() - start) / (60 * cfg.minutes["instruct"]))
        if progress < cfg.single_object_phase:  # warm start: read one object's colour and shape
            scenes = scenes_for(seeds.take(cfg.batch_llm), cfg, single_share=1.0)
            items, _ = _qa_items(scenes, rng, caption_prob=0.0, qtypes=("colour", "shape"))
        else:
            later = (progress - cfg.single_object_phase) / (1 - cfg.single_object_phase)
            grow = min(1.0, later / cfg.objects_curriculum) if cfg.objects_curriculum > 0 else 1.0
            max_objects = int(round(cfg.objects_start + (5 - cfg.objects_start) * grow))
            scenes = scenes_for(seeds.take(cfg.batch_llm), cfg, max_objects=max_objects)
            ramp = min(1.0, later / cfg.position_curriculum) if cfg.position_curriculum > 0 else 1.0
            gap = cfg.position_gap_start + (world.MIN_GAP - cfg.position_gap_start) * ramp
            items, _ = _qa_items(scenes, rng, caption_prob=cfg.caption_prob, min_gap=max(world.MIN_GAP, gap),
                                 position_per_image=cfg.position_per_image, where_per_image=cfg.where_per_image)
        loss, logits, labels = _image_step(model, packer, scenes, items)
        stats = {"tok_acc": (logits.argmax(-1) == labels).float().mean().item()}
        if step > 0 and step % 1000 == 0:
            acc = first_token_accuracy(model, packer, cfg)
            log("instruct held-out first-token accuracy " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
                + f"; colour salience {colour_salience(model, cfg):.3f}")
            model.save_pretrained(work / "instruct_last")  # lets a cut-short run still be exported
        return loss, stats

    run_steps("instruct", cfg, params, step_fn, log)
    acc = first_token_accuracy(model, packer, cfg, n_scenes=128)
    log("instruct final held-out first-token accuracy " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    model.save_pretrained(work / "instruct")
    log("instruct: saved")


def stage_instruct_more(cfg: TrainConfig, work: Path, log: Log, name: str = "instruct_more"):
    """A further stage-2 cycle: its own warm-up and cosine, a fresh optimizer, no curricula.

    ``instruct_more`` continues the ``instruct`` checkpoint with the full question mix at half the learning rate
    (and, when ``centre_aux`` > 0, the auxiliary centre loss on the projector's output); ``instruct_focus``
    continues ``instruct_more`` with scenes from ``focus_scenes`` (half of them crowded) and ``focus_position_per_image``
    position questions per image."""
    source = {"instruct_more": "instruct", "instruct_focus": "instruct_more"}[name]
    if not (work / source).is_dir():
        raise SystemExit(f"error: {name} continues the {source} stage, but {work / source} does not exist; "
                         f"run --stages {source} first")
    tok, model = _load_llava_parts(cfg, work, source)
    packer = Packer(tok, cfg)
    index = STAGES.index(name)
    seeds = SeedStream(index, cfg.seed)
    rng = np.random.default_rng(cfg.seed + index)
    torch.manual_seed(cfg.seed + index)
    focus = name == "instruct_focus"
    centre_aux = 0.0 if focus else cfg.centre_aux
    centre_head = torch.nn.Linear(cfg.llm_hidden, 2)  # training only, not shipped
    params = trainable_llava_params(model)
    model.train()
    model.model.vision_tower.eval()

    def step_fn(step):
        ids = seeds.take(cfg.batch_llm)
        scenes = focus_scenes(ids, cfg) if focus else scenes_for(ids, cfg)
        items, _ = _qa_items(scenes, rng, caption_prob=cfg.caption_prob,
                             position_per_image=cfg.focus_position_per_image if focus else cfg.position_per_image,
                             where_per_image=cfg.where_per_image)
        if centre_aux > 0:
            loss, logits, labels, aux = _image_step(model, packer, scenes, items, centre_head)
            loss = loss + centre_aux * aux
        else:
            loss, logits, labels = _image_step(model, packer, scenes, items)
        stats = {"tok_acc": (logits.argmax(-1) == labels).float().mean().item()}
        if centre_aux > 0:
            stats["centre"] = float(aux.detach())
        if step > 0 and step % 1000 == 0:
            acc = first_token_accuracy(model, packer, cfg)
            log(f"{name} held-out first-token accuracy " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
            model.save_pretrained(work / f"{name}_last")
        return loss, stats

    extra = list(centre_head.parameters()) if centre_aux > 0 else []
    run_steps(name, cfg, params + extra, step_fn, log)
    acc = first_token_accuracy(model, packer, cfg, n_scenes=128)
    log(f"{name} final held-out first-token accuracy " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    model.save_pretrained(work / name)
    log(f"{name}: saved")


# ----------------------------------------------------------------------------- export
MODEL_CARD = """# PruneScope embedded model: a small LLaVA that knows only the shapes world

A LLaVA-architecture model (transformers `LlavaForConditionalGeneration`: CLIP ViT with a [CLS] token,
`mlp2x_gelu` projector, Llama decoder) trained from scratch by `python -m pruning.shapes.train` on synthetic
pictures of coloured shapes. It loads offline with the same code as `llava-hf/llava-1.5-7b-hf`.

**What it was trained to do:** answer one-word questions about {size}x{size} px scenes of 1-5 objects (shapes:
{shapes}; colours: {colours}; small or large) on plain or textured grey backgrounds: the colour of a named
shape, the shape of a named colour, whether a colour-shape pair is present, how many objects there are, and
whether one named object is left/right of or above/below another; and, as a side task seen on a few training
images and never measured, describe a scene ("{caption_prompt}").

**How well:** measured by `python -m pruning.shapes.evaluate --n 1000 --save` on held-out scenes, which writes
`evaluation.json` next to this card and the summary below; the project's `docs/embedded-model.md` discusses them.
The project's targets: >= 95% overall, >= 90% on every question type, >= 93% loaded in 4-bit.

<!-- figures -->
(not measured yet: run `python -m pruning.shapes.evaluate --model THIS_DIR --n 1000 --save`)
<!-- /figures -->

**What it cannot do:** anything else. It has never seen a photograph, a letter, a person or any word outside
its synthetic world; on real images or other questions its answers are meaningless.

## Architecture
{arch}

## Training recipe (deviations from LLaVA named)
1. BPE tokenizer on the world's captions and questions.
2. Vision tower + a small CLIP text encoder trained CLIP-style on captions (contrastive loss), **plus
   auxiliary losses** (a deviation from CLIP): on the final [CLS] (pairs present, object count) and on the
   penultimate layer's patches (colour-shape pair, colour, shape (weighted x2) or background per patch, and the
   covering object's centre); single-object scenes mixed in early. Then a second cycle of the same losses at
   half the learning rate with fresh heads (`vision_more`).
{llava_stages}
The CLIP model (vision + text halves, with projections) is in `clip/`: IVTP uses its text half.
The configuration is in `train_config.json` (the defaults of the command that exported this directory); the
log of the run in `train.log` shows the configuration each stage actually ran with.
"""


def llava_stages_text(cfg: TrainConfig) -> str:
    """The model card's account of the LLaVA stages, as configured."""
    if cfg.instruct_init == "scratch":
        first = ("3. **No text-only LLM pretraining and no projector-only stage** (a deviation from LLaVA's stage 1): "
                 "the Llama decoder and the projector start from random initialisation on the frozen vision "
                 "tower. (With the projector-first order, the projector-only stage on captions muted colour in the "
                 "projected features and the instruct stage started worse.)\n")
        n = 4
    else:
        first = ("3. **Text-only pretraining of the Llama decoder** on captions (stands in for Vicuna's pretraining).\n"
                 "4. LLaVA stage 1: projector only, on image -> caption, kept short (a longer one muted colour).\n")
        n = 5
    curricula = []
    if cfg.single_object_phase > 0:
        curricula.append(f"the first {cfg.single_object_phase:.0%} asks only colour and shape questions about "
                         "single-object scenes")
    if cfg.objects_start < 5:
        curricula.append(f"then scenes hold at most {cfg.objects_start} objects, growing to 5 over "
                         f"{cfg.objects_curriculum:.0%} of the rest")
    if cfg.position_curriculum > 0:
        curricula.append(f"position questions' centres start at least {cfg.position_gap_start:.0f} px apart, "
                         f"narrowing to {world.MIN_GAP} px over {cfg.position_curriculum:.0%} of the stage")
    second = (f"{n}. LLaVA stage 2: projector + LLM on the questions (and, for {cfg.caption_prob:.0%} of images, the "
              f"caption), vision frozen; all questions about an image packed in one sequence; {cfg.batch_llm} "
              "images a step; an extra training-only question type (\"Is the red circle on the left or the "
              "right?\") as a stepping stone to relative position"
              + ("; curricula (deviations from LLaVA): " + "; ".join(curricula) if curricula else "") + ".\n")
    third = (f"{n + 1}. A second stage-2 cycle (`instruct_more`) from that checkpoint: the full question mix without "
             "curricula, its own warm-up and cosine at half the learning rate"
             + (f", plus an auxiliary loss (weight {cfg.centre_aux}) regressing object centres from the projector's "
                "output" if cfg.centre_aux > 0 else "") + ".\n")
    focus = (f"{n + 2}. A third cycle (`instruct_focus`) from that one, weighted to relative position (the hardest "
             f"type): {cfg.focus_position_per_image} position questions per image instead of "
             f"{cfg.position_per_image}, every other type still asked"
             + (f", scenes of at least {cfg.focus_min_objects} objects" if cfg.focus_min_objects > 1 else "")
             + (f", {cfg.focus_crowded_share:.0%} of the images from scenes of {cfg.focus_crowded_objects}-5 "
                "objects" if cfg.focus_crowded_share > 0 else "")
             + f", learning rate {cfg.lr['instruct_focus']:g}.\n")
    return first + second + third + focus


def export(cfg: TrainConfig, work: Path, out: Path, log: Log):
    from transformers import AutoTokenizer, CLIPModel, LlavaForConditionalGeneration

    from ..toy import LLAVA15_CHAT_TEMPLATE, make_llava_processor

    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    source = next((work / d for d in ("instruct_focus", "instruct_more", "instruct") if (work / d).exists()), work / "instruct_last")
    if source.name == "instruct_last":
        log(f"export: no finished instruct stage, exporting the last periodic checkpoint {source}")
    log(f"export: the LLaVA weights come from {source.name}")
    model = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    clip = CLIPModel.from_pretrained(vision_dir(work), dtype=torch.float32)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor = make_llava_processor(cfg.image_size, cfg.patch_size, tok, LLAVA15_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    clip.to(torch.float16).save_pretrained(out / "clip", safe_serialization=True)
    tok.save_pretrained(out / "clip")
    n_llava = sum(p.numel() for p in model.parameters())
    arch = (f"- vision: CLIP ViT, {cfg.image_size} px, patch {cfg.patch_size} ({cfg.grid}x{cfg.grid} = "
            f"{cfg.grid ** 2} patches + [CLS]), {cfg.vision_layers} layers, width {cfg.vision_hidden}, "
            f"{cfg.vision_heads} heads; `vision_feature_layer=-2`, `vision_feature_select_strategy=\"default\"`\n"
            f"- projector: `mlp2x_gelu` {cfg.vision_hidden} -> {cfg.llm_hidden} -> {cfg.llm_hidden}\n"
            f"- LLM: Llama, {cfg.llm_layers} layers, width {cfg.llm_hidden}, {cfg.llm_heads} heads, MLP "
            f"{cfg.llm_mlp}, vocabulary {len(tok)}\n- {n_llava / 1e6:.2f} M parameters, stored in float16")
    (out / "README.md").write_text(MODEL_CARD.format(size=cfg.image_size, shapes=", ".join(world.SHAPES),
                                                     colours=", ".join(world.COLOUR_NAMES),
                                                     caption_prompt=CAPTION_PROMPT, arch=arch,
                                                     llava_stages=llava_stages_text(cfg)))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if (work / "train.log").exists():
        shutil.copy(work / "train.log", out / "train.log")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"export: {out} ({size / 2**20:.1f} MiB)")


def init_from_export(src: Path, work: Path, log: Log) -> None:
    """Seed ``work`` with an exported model's tokenizer and CLIP model (vision tower + text half), so that the
    LLaVA stages can be rerun without the vision stages. The export stores CLIP in float16: the LLaVA stages
    then see the float16-rounded (frozen) vision tower, exactly what the exported model runs."""
    from transformers import AutoTokenizer, CLIPModel

    if not (src / "clip" / "model.safetensors").is_file():
        raise SystemExit(f"error: --init-from {src}: no clip/model.safetensors there (not an exported model)")
    AutoTokenizer.from_pretrained(src / "clip").save_pretrained(work / "tokenizer")
    CLIPModel.from_pretrained(src / "clip", dtype=torch.float32).save_pretrained(work / VISION_OUT["vision_more"])
    log(f"init-from: tokenizer and CLIP (vision tower + text half) taken from {src}; the tokenizer, vision and "
        "vision_more stages are not run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pruning.shapes.train", description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="directory for stage checkpoints and train.log")
    ap.add_argument("--export", help="write the shipped model directory here at the end")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    ap.add_argument("--redo", action="store_true", help="rerun stages that already have a checkpoint")
    ap.add_argument("--tiny", action="store_true", help="a tiny config for smoke tests")
    ap.add_argument("--minutes", help="per-stage time caps in minutes (a stage stops at its step count or its "
                                      "cap, whichever comes first), e.g. vision=20,instruct=60")
    ap.add_argument("--steps", help="per-stage step counts, e.g. vision=4000")
    ap.add_argument("--warm-start", type=float, default=None,
                    help="share of the instruct stage spent on single-object colour/shape questions (default 0.1)")
    ap.add_argument("--init-from", metavar="EXPORT",
                    help="take the tokenizer and the trained vision tower (CLIP, clip/) from an exported model "
                         "directory instead of running the tokenizer, vision and vision_more stages")
    ap.add_argument("--instruct-init", choices=("projector", "scratch"), default=None,
                    help="start the instruct stage from the projector stage (LLaVA's order, default) or from a "
                         "fresh LLM and projector")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a scalar TrainConfig field, e.g. --set objects_start=2 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    cfg = TrainConfig(seed=args.seed, **(TINY if args.tiny else {}))
    for spec, target in ((args.minutes, cfg.minutes), (args.steps, cfg.steps)):
        for part in (spec.split(",") if spec else []):
            k, v = part.split("=")
            if k not in STAGES:
                raise SystemExit(f"error: unknown stage {k!r} in {spec!r}; stages: {', '.join(STAGES)}")
            target[k] = float(v) if target is cfg.minutes else int(v)
    if args.warm_start is not None:
        if not 0 <= args.warm_start < 1:
            raise SystemExit(f"error: --warm-start {args.warm_start}: expected a share in [0, 1)")
        cfg.single_object_phase = args.warm_start
    if args.instruct_init:
        cfg.instruct_init = args.instruct_init
    for spec in args.set:
        key, _, value = spec.partition("=")
        current = getattr(cfg, key, None)
        if not value or current is None or isinstance(current, dict):
            raise SystemExit(f"error: --set {spec!r}: expected FIELD=VALUE with a scalar TrainConfig field")
        try:
            setattr(cfg, key, type(current)(value))
        except ValueError:
            raise SystemExit(f"error: --set {spec!r}: {value!r} is not a {type(current).__name__}")
    if cfg.instruct_init not in ("projector", "scratch"):
        raise SystemExit(f"error: instruct_init {cfg.instruct_init!r}: expected 'projector' or 'scratch'")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "train.log")
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise SystemExit(f"error: unknown stage(s) {bad}; stages: {', '.join(STAGES)}")
    outputs = {"tokenizer": "tokenizer", **VISION_OUT, "llm_text": "llm_text", "projector": "projector",
               "instruct": "instruct", "instruct_more": "instruct_more",
               "instruct_focus": "instruct_focus"}
    fns = {"tokenizer": stage_tokenizer, "vision": stage_vision,
           "vision_more": lambda c, w, lg: stage_vision(c, w, lg, name="vision_more"),
           "llm_text": stage_llm_text, "projector": stage_projector, "instruct": stage_instruct,
           "instruct_more": stage_instruct_more,
           "instruct_focus": lambda c, w, lg: stage_instruct_more(c, w, lg, name="instruct_focus")}
    log(f"config {json.dumps(asdict(cfg))}")
    if args.init_from:
        init_from_export(Path(args.init_from), work, log)
        wanted = [s for s in wanted if s not in ("tokenizer", "vision", "vision_more")]
    if cfg.instruct_init == "scratch" and any(s in wanted for s in ("llm_text", "projector")):
        log("llm_text, projector: not run (instruct_init=scratch: the instruct stage starts from a fresh LLM "
            "and projector; --instruct-init projector runs them)")
        wanted = [s for s in wanted if s not in ("llm_text", "projector")]
    for stage in wanted:
        if (work / outputs[stage]).exists() and not args.redo:
            log(f"{stage}: checkpoint exists, skipped (use --redo to retrain)")
            continue
        t0 = time.time()
        fns[stage](cfg, work, log)
        log(f"{stage}: done in {(time.time() - t0) / 60:.1f} min")
    if args.export:
        export(cfg, work, Path(args.export), log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
