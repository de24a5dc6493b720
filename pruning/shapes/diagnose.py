"""Diagnose the embedded model's training: can the LLaVA stages learn one question type on its own?

    python -m pruning.shapes.diagnose --work runs/shapes3 --start llm_text --qtype colour --objects 1 --steps 300

Starts from a stage checkpoint under ``--work`` (vision frozen, a fresh copy of the projector and LLM from that
checkpoint), trains projector + LLM on one question type about scenes with a fixed number of objects, and
prints every 50 steps the first-token accuracy of the batch and ``train.colour_salience``. It writes nothing.
This is how docs/embedded-model.md shows that colour is learnable in isolation (so the shipped model's
failure on colour questions is one of the training mix, not of the features or the data).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from . import train, world


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pruning.shapes.diagnose", description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="a training work directory (python -m pruning.shapes.train --work)")
    ap.add_argument("--start", default="llm_text", help="stage checkpoint to start from (default llm_text)")
    ap.add_argument("--qtype", default="colour", choices=world.QUESTION_TYPES + world.TRAINING_ONLY_TYPES)
    ap.add_argument("--objects", type=int, default=1, help="objects per scene (1-5)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    if not 1 <= args.objects <= 5:
        raise SystemExit(f"error: --objects {args.objects}: expected 1..5")
    cfg = train.TrainConfig()
    try:
        tok = AutoTokenizer.from_pretrained(f"{args.work}/tokenizer")
        model = LlavaForConditionalGeneration.from_pretrained(f"{args.work}/{args.start}", dtype=torch.float32)
    except OSError as e:
        raise SystemExit(f"error: cannot load {args.work}/{args.start}: {e}")
    torch.manual_seed(0)
    packer = train.Packer(tok, cfg)
    params = train.trainable_llava_params(model)
    opt = torch.optim.AdamW(params, lr=args.lr)
    rng, seed, t0 = np.random.default_rng(0), 10_000_000, time.time()
    for step in range(args.steps + 1):
        scenes, items = [], []
        while len(scenes) < args.batch:
            s = world.make_scene(seed, n_objects=args.objects)
            seed += 1
            cands = world.questions_for(s, args.qtype, rng)
            if cands:
                q = cands[int(rng.integers(len(cands)))]
                scenes.append(s)
                items.append([(q.text, q.answer)])
        loss, logits, labels = train._image_step(model, packer, scenes, items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            first = (logits.argmax(-1) == labels).view(args.batch, -1)[:, 0].float().mean().item()
            print(f"step {step} loss {loss.item():.3f} first-token accuracy {first:.2f} "
                  f"colour salience {train.colour_salience(model, cfg, 120):.2f} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
