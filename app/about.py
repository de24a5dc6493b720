"""Text of the "How it works" tab: each strategy in a few sentences, and the embedded model's card.

Static words only; the model card's figures come from the model's own evaluation report at run time.
"""

from __future__ import annotations

STRATEGIES = {
    "none": ("reference", "Every visual token enters the LLM and stays to the last layer. Every other card is "
             "compared with this one: its answer, its speed and its cost."),
    "random": ("baseline (VTC-CLS Table 3, IVTP)", "Keeps a uniformly random set of patches (seeded). The floor "
               "any scoring rule must beat: if a strategy does no better than random, its scores carry no "
               "information about the question."),
    "vtc-cls": ("VTC-CLS, Sec. 3.1-3.3, eq. 1-2 and 9", "Scores each patch by the attention the vision encoder's "
                "[CLS] token pays it, averaged over heads and over the K layers ending at the one that feeds the "
                "LLM (E = how they combine), and keeps the top ones before the LLM. Look at the [CLS] heatmap: "
                "the kept patches are its bright cells, whatever the question asks."),
    "fastv": ("FastV (as described by VTC-CLS Sec. 1 and VTW Sec. 2)", "Runs the first K LLM layers on every "
              "token, then keeps the image tokens the last prompt token attends to most in layer K-1. Look at "
              "the LLM-attention heatmap at layer K-1 and at the tokens-alive plot's drop at K."),
    "vtw": ("VTW, Sec. 3, eq. 5-6 and Algorithm 1", "Withdraws every visual token at LLM layer K: after the "
            "early layers have moved the image's information into the text tokens, the image is no longer "
            "needed. K is chosen where the KL divergence of the output falls below eta (the KL plot). Look at "
            "the attention-share plot: the image share collapses in the deep layers even without pruning."),
    "ivtp": ("IVTP, Sec. 3.2-3.3, eq. 3-8", "Prunes in groups of three layers inside the vision encoder "
             "(attention rollout from [CLS] times value norms), then again in the LLM's first layers, where "
             "the scoring query is built from the question words most relevant to the image (tinted below the "
             "plots). Its overlay shows two styles: blue for the ViT, amber stripes for the LLM."),
    "topk-sim": ("IVTP Table 5 ('TopK')", "Keeps the patches whose features are most similar (cosine) to the "
                 "[CLS] feature."),
    "pooling": ("IVTP Table 5 ('Spatial pooling')", "Averages the patch grid down to about the budget "
                "(2-D adaptive pooling): every region survives, blurred. The overlay tints each pooled window."),
    "evit": ("EViT, eq. 2", "Keeps the top patches by [CLS] attention and fuses all the others into one token "
             "weighted by their attention. The overlay tints the fused patches with the fused token's colour."),
    "kmeans": ("VTC-CLS Table 3 ('KMeans')", "Clusters the patch features (k-means, seeded) into as many "
               "clusters as the budget; each centre becomes one token. The overlay tints each cluster."),
    "tome": ("ToMe, Sec. 3; VTC-CLS Table 3", "Bipartite soft matching merges the most similar pairs of patches "
             "(by attention keys) until the budget is reached, size-weighted. The overlay tints each merged group."),
    "prumerge+": ("PruMerge, Sec. 3.2-3.3, and its '+' variant", "Keeps the [CLS]-attention outliers (IQR rule) "
                  "plus spatially spread samples, then adds to each kept token its nearest pruned neighbours' "
                  "features weighted by attention. The overlay tints each kept token's neighbours."),
    "cdpruner": ("CDPruner (arXiv 2506.10967) and its authors' code", "Greedily picks the patches whose kernel has "
                 "the largest determinant, the kernel being the patches' cosine similarity after the projector "
                 "weighted on both sides by each patch's relevance to the question (from CLIP's text tower, or the "
                 "LLM's own word embeddings where there is none; as in the authors' code, patches least like the "
                 "question's embedding weigh most). A large determinant needs tokens both unlike each other and "
                 "weighty, so the kept set is spread out and depends on the question. Look for kept patches "
                 "scattered over every distinct region rather than piled on one object, and for the set changing "
                 "when only the question changes; a note under the card says when the LLM's embeddings stood in "
                 "for CLIP."),
    "divprune": ("DivPrune (CVPR 2025) and its authors' code", "Farthest-point sampling on the projected patch "
                 "features: first the patch least like any other, then each time the patch farthest (cosine) from "
                 "its nearest kept one. Look for a few patches from each uniform region and the rest on the objects "
                 "and their edges; the question plays no part, so one image always keeps the same set."),
    "dart": ("DART (EMNLP 2025) and its authors' code", "Runs the first K LLM layers on every token, takes as pivots "
             "the 4 image and 4 text tokens (question and answer prompt) whose layer K-1 keys have the largest L1 norm, and keeps the image "
             "tokens least similar to the pivots (duplicates of a pivot are dropped). Look at the tokens-alive "
             "plot's drop at K and at kept patches spread over regions unlike each other; it reads no attention "
             "map, so it runs with SDPA and in 4-bit."),
    "visionzip": ("VisionZip (CVPR 2025) and its authors' code", "Keeps the dominant tokens, the vision encoder's "
                  "[CLS] token and the patches it attends to most, then merges all the other patches into a few "
                  "contextual tokens (10 of every 64): evenly spaced targets each take the patches whose keys are "
                  "most like theirs, and become their own feature plus the mean of that group. Look at the overlay's "
                  "large tinted groups (one per contextual token) around the dominant patches, and for the one "
                  "patch that stands for the [CLS] token, the first one neither dominant nor a target."),
    "manual": ("no paper: the Teach tab's hand-picked set", "Keeps exactly the patches you give it (paint them on "
               "the Teach tab, or type indices such as 3, 4, 17 in its parameter). Use it to test a hypothesis: "
               "keep only the object the question names, or only the background, and see whether the answer "
               "survives."),
    "vispruner": ("VisPruner (ICCV 2025) and its authors' code", "Keeps half the budget as the patches the vision "
                  "encoder's [CLS] token attends to most, then fills the other half from the rest by repeatedly "
                  "dropping near-duplicates (the tokens most similar to another remaining one, up to 8 per round). "
                  "Look for the kept set covering the [CLS] heatmap's bright cells plus patches spread over regions "
                  "unlike each other; the question plays no part."),
}


def strategies_markdown(names: list[str]) -> str:
    lines = ["## The strategies", "",
             "Each card on the Compare tab is one strategy. Stages: *before the LLM* (the vision features are "
             "pruned or merged, then projected), *inside the LLM* (tokens enter and are dropped at a layer), "
             "*inside the vision encoder* (IVTP). The full list of choices and deviations from the papers is "
             "in `docs/strategies.md`.", ""]
    for name in names:
        source, words = STRATEGIES.get(name, ("", "See docs/strategies.md."))
        lines.append(f"**{name}**" + (f" ({source})" if source else "") + f": {words}")
        lines.append("")
    return "\n".join(lines)


def model_card_markdown(info: dict, card: dict | None) -> str:
    if not info["embedded"]:
        # a family whose token grid is per image (Qwen2.5-VL, the anyres families, InternVL) has no one grid to name
        grid = (f"a {info['grid'][0]}x{info['grid'][1]} patch grid" if info.get("grid") else
                f"{info.get('family_name', 'its family')}: visual tokens per image ({info['budget']['sentence']})")
        return (f"## The model\n\n`{info['model']}` ({'4-bit' if info['load_in_4bit'] else 'full precision'}, "
                f"{info['device']}): {grid}, {info['vision_layers']} vision layers, {info['llm_layers']} LLM layers.")
    lines = ["## The embedded model: a toy that knows one synthetic world", "",
             "No model hub is reachable where PruneScope is built, so it ships its own small model with "
             "LLaVA's architecture (a CLIP-style vision encoder, a projector and a Llama-style LLM), trained "
             "from scratch on **coloured shapes (circle, square, triangle, cross) on grey backgrounds**, 96x96 "
             f"pixels, a {info['grid'][0]}x{info['grid'][1]} patch grid.", "",
             "**It can answer**: the colour of a shape, the shape of a colour, whether an object is there, how "
             "many objects there are, and whether one object is left/right of or above/below another, in the "
             "words of the examples.", "",
             "**It cannot answer** anything else: photographs, other questions or free-form text give "
             "meaningless answers. Real LLaVA-1.5 loads through the same code where a hub and a GPU are "
             "available (`MODEL_ID=llava-hf/llava-1.5-7b-hf LOAD_IN_4BIT=1 python app.py`)."]
    if card:
        acc = card["accuracy"]
        per = ", ".join(f"{k} {v:.1%}" for k, v in acc["per_type"].items())
        lines += ["", f"**Measured** on {acc['n']} held-out questions (`python -m pruning.shapes.evaluate --n "
                      f"{acc['n']}`): {acc['overall']:.1%} overall ({per})."]
    return "\n".join(lines)
