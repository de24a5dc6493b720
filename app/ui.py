"""The Gradio Blocks: Compare, Sweep and How it works. Callbacks call the library and draw its results.

``build(scope, examples)`` takes a loaded ``pruning.compare.Scope`` (made by ``app.py``, the composition
root) and a list of examples ``{"image": path, "question": text, ...}``. Nothing here imports torch or
computes what the library computes: it formats, draws and lays out.
"""

from __future__ import annotations

import csv
import logging
import json
import tempfile

import gradio as gr

from . import about, overlays, plots, teach

CSS = """
.ps-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px !important;}
.ps-legend {display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 0.85em; margin: 4px 0;}
.ps-legend-item {display: inline-flex; align-items: center; gap: 6px;}
.ps-swatch {display: inline-block; width: 18px; height: 14px; border: 1px solid #888; border-radius: 2px;}
.ps-toy {background: #fff7e0; border-left: 4px solid #f0a500; padding: 6px 10px; border-radius: 4px; color: #222;}
.ps-differs {color: #c0392b; font-weight: 600;}
"""

TABLE_HEADERS = ["strategy", "visual tokens into LLM", "in last layer", "vision ms", "prefill ms", "ms / decoded token",
                 "total ms", "TFLOPs", "KV cache MB", "speedup (measured)", "speedup (TFLOPs)", "same answer as none"]


def undecoded(image: gr.Image) -> gr.Image:
    """``image`` (type filepath) hands the library the uploaded file's path, undecoded. The library's loader
    checks it (not an image, empty, truncated, too many pixels to decode) and says what is wrong; Gradio's own
    preprocessing would open and convert it first, failing in its own words (or clipping a 16-bit image).
    (An instance attribute, not a subclass: Gradio writes a .pyi stub next to the module of every subclass.)"""
    default = image.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return default(payload)
        return str(payload.path)

    image.preprocess = preprocess
    return image


_FORGET_WARNED = False


def forget_skipped_outputs(demo: gr.Blocks, request) -> None:
    """Keep a visitor's session from growing with every streamed comparison (a Gradio 6 leak).

    An output a generator's yield leaves out is a skip (``{"__type__": "update"}``), and Gradio answers each skip by
    constructing a fresh copy of that component (a new id) for the session; when a later yield gives the component
    a value, the copy is registered in the session's config under its own id, holding the value (plots, images).
    Each streamed comparison would add ~18 such entries (~0.3 MB) to the session, kept until an hour after it
    closes. They are never looked up by a page (which knows the components by their original ids), so they are
    dropped before each run. Does nothing where Gradio's internals differ."""
    try:
        state = demo.state_holder.session_data.get(request.session_hash) if request is not None else None
        if state is None:
            return
        config = state.blocks_config.blocks
        for key in [k for k in config if k not in demo.blocks]:
            config.pop(key, None)
            state.config_values.pop(key, None)
    except AttributeError as e:  # said once, not swallowed: the app still works, only this session may grow
        global _FORGET_WARNED
        if not _FORGET_WARNED:
            _FORGET_WARNED = True
            logging.getLogger("prunescope.app").warning(
                "cannot drop skipped outputs from the session (Gradio's internals differ: %s); "
                "streamed comparisons may grow a session's memory until it expires", e)


# ------------------------------------------------------------------ formatting (plain values -> text)

def card_title(r: dict) -> str:
    differs = "" if r["same_as_none"] else " <span class='ps-differs'>≠ unpruned answer</span>"
    differs += teach.truth_mark(r)  # ✓ / ✗ against the scene's answer, when known (app/teach.py)
    return f"### {r['strategy']}\n**Answer:** {r['answer'] or '(empty)'}{differs}"


def card_details(r: dict) -> str:
    t = r["timings"]
    stats = (f"{r['visual_tokens_kept']} of {r['visual_tokens']} visual tokens enter the LLM, "
             f"{r['image_tokens_per_layer'][-1]} reach its last layer  \n"
             f"prefill {t['prefill_ms']:.1f} ms · {t['decode_ms_per_token']:.2f} ms per decoded token · "
             f"**{r['speedup']:.2f}x** vs none (TFLOPs predict {r['speedup_predicted']:.2f}x)")
    if r.get("notes"):
        stats += "  \n_" + "; ".join(r["notes"]) + "_"
    extra = teach.card_lines(r)  # ground truth, random's seeds (app/teach.py)
    if extra:
        stats += "  \n" + extra
    return stats


def table_rows(results: list[dict]) -> list[list]:
    rows = []
    for r in results:
        t = r["timings"]
        rows.append([r["strategy"], r["visual_tokens_kept"], r["image_tokens_per_layer"][-1], round(t["vision_ms"], 2),
                     round(t["prefill_ms"], 2), round(t["decode_ms_per_token"], 2), round(t["total_ms"], 2),
                     float(f"{r['tflops']['total']:.4g}"), round(r["kv_cache_bytes"] / 2**20, 4),
                     round(r["speedup"], 2), round(r["speedup_predicted"], 2), "yes" if r["same_as_none"] else "no"])
    return rows


def budget_words(keep: int | float | None, n_patches: int, grid: list[int]) -> str:
    keep = int(keep or 0)
    return (f"**{keep}** of {n_patches} visual tokens = **{keep / n_patches:.0%}** of the {grid[0]}x{grid[1]} grid "
            "(vtw withdraws all at its layer K; none keeps all)")


def relevance_value(rel: dict | None) -> list | None:
    if not rel or not rel["tokens"]:
        return None
    return [(word, round(value, 3)) for word, value in rel["tokens"]]


def sweep_csv(rows: list[dict]) -> str:
    path = tempfile.NamedTemporaryFile("w", suffix=".csv", prefix="prunescope-sweep-", delete=False, newline="")
    types = sorted({t for r in rows for t in r["per_type"]})
    with path as f:
        w = csv.writer(f)
        w.writerow(["strategy", "keep", "accuracy", *[f"accuracy {t}" for t in types], "tokens entering LLM",
                    "tokens last layer", "prefill TFLOPs", "prefill ms"])
        for r in rows:
            w.writerow([r.get("label", r["name"]), r["params"].get("keep"), r["accuracy"],
                        *[r["per_type"].get(t, "") for t in types], r["tokens_entering_llm"], r["tokens_last_layer"],
                        r["prefill_tflops"], r["prefill_ms"]])
    return path.name


def sweep_table(rows: list[dict]) -> list[list]:
    return [[r.get("label", r["name"]), "all" if r["params"].get("keep") is None else r["params"]["keep"],
             f"{r['accuracy']:.1%}", round(r["tokens_entering_llm"], 1), round(r["tokens_last_layer"], 1),
             f"{r['prefill_tflops']:.3g}", round(r["prefill_ms"], 2)] for r in rows]


# ------------------------------------------------------------------ the Blocks

def speed_caption(report: dict) -> str:
    """What the measured-speed figure shows, from the report itself: the command, the model, the machine."""
    m, mach = report.get("model", {}), report.get("machine", {})
    return (f"Measured with `{report.get('command', 'python -m pruning speed')}`: LLaVA-1.5-7B's real widths with "
            f"random weights and {m.get('llm_layers')} LLM + {m.get('vit_layers')} ViT layers (per-layer cost is the "
            f"real model's; totals scale with depth), fp32 on {mach.get('cpu', 'a CPU')} with "
            f"{mach.get('torch_threads')} threads. Solid: measured (bars: the per-repeat quartiles); dotted: what "
            "the TFLOPs predict. Not this page's model: the toy above is too small for its timings to mean much. "
            "See docs/performance.md.")


def build(pool, examples: list[dict], speed_report: dict | None = None) -> gr.Blocks:
    """``pool``: a ``pruning.compare.ScopePool`` (its default model is loaded to lay the page out);
    ``speed_report``: a ``python -m pruning speed --json`` report shown in the Sweep tab (none: not shown)."""
    scope = pool.get()
    info = scope.info()
    n_patches, grid = info["n_patches"], info["grid"]
    names = info["strategies"]
    controls = info["controls"]
    default_keep = n_patches // 2
    first = examples[0] if examples else {"image": None, "question": ""}

    with gr.Blocks(title="PruneScope: visual-token pruning, side by side", analytics_enabled=False) as demo:
        results_state = gr.State([])
        grid_state = gr.State([n_patches, grid])  # the picked model's patch count and grid
        gr.Markdown("# PruneScope\nCompare training-free visual-token pruning strategies on one image and one "
                    "question: what each keeps, what it answers, where attention goes and what it costs.  \n"
                    "**1.** Pick an example (or upload an image) and a question. **2.** Choose strategies and a "
                    "budget. **3.** Press **Compare**. Then drag the budget slider and watch patches disappear "
                    "and answers change.")
        if info["embedded"]:
            gr.HTML("<div class='ps-toy'><b>The model here is a toy.</b> It knows only coloured shapes on grey "
                    "backgrounds (ask about colour, shape, count, existence, left/right, above/below, as in the "
                    "examples). On photos or other questions its answers are meaningless. See <i>How it works</i>."
                    "</div>")
        else:
            gr.Markdown(f"Model: `{info['model']}` on {info['device']}")
        model_choice = gr.Dropdown([(pool.label(m), m) for m in pool.names], value=pool.default, label="Model (this host's allow-list)",
                                   visible=len(pool.names) > 1, elem_id="ps-model")
        model_status = gr.Markdown("")
        with gr.Tabs():
            # -------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        image = undecoded(gr.Image(value=first["image"], type="filepath", label="Image",
                                                   sources=["upload", "clipboard"], height=260, elem_id="ps-image"))
                        question = gr.Textbox(value=first["question"], label="Question", elem_id="ps-question")
                        if examples:
                            gr.Examples([[e["image"], e["question"]] for e in examples], [image, question],
                                        label="Examples: held-out scenes the model never saw (click one, then Compare)")
                    with gr.Column(scale=1, min_width=300):
                        strategies = gr.Dropdown(names, value=info["default_strategies"], multiselect=True,
                                                 label="Strategies (none always runs first, as the reference)",
                                                 elem_id="ps-strategies")
                        keep = gr.Slider(1, n_patches, value=default_keep, step=1, elem_id="ps-keep",
                                         label="Budget: visual tokens kept (release to re-run)")
                        keep_words = gr.Markdown(budget_words(default_keep, n_patches, grid))
                        max_new = gr.Slider(1, 64, value=8, step=1, label="Max new tokens")
                        with gr.Accordion("Strategy parameters (the papers' defaults)", open=False):
                            param_inputs, param_keys = [], []
                            for name in names:
                                if not controls[name]:
                                    continue
                                with gr.Accordion(name, open=False):
                                    for c in controls[name]:
                                        param_inputs.append(_control(c, name, info))
                                        param_keys.append((name, c["name"], c["kind"], c["default"]))
                                    if name == "vtw":
                                        eta = gr.Number(value=0.003, label="eta: KL threshold for choosing K "
                                                        "(Algorithm 1; the KL plot)", minimum=1e-9)
                        run = gr.Button("Compare", variant="primary", elem_id="ps-run")
                status = gr.Markdown("", elem_id="ps-status")
                gr.HTML(overlays.legend_html())
                cards = []
                with gr.Row(equal_height=False, elem_id="ps-cards"):
                    for i in range(len(names)):
                        with gr.Column(visible=False, min_width=240, elem_classes="ps-card",
                                       elem_id=f"ps-card-{i}") as col:
                            title = gr.Markdown(elem_classes="ps-card-title")
                            picture = gr.Image(type="pil", show_label=False, interactive=False, height=240,
                                               elem_classes="ps-overlay", buttons=["download"])
                            details = gr.Markdown()
                        cards.append((col, title, picture, details))
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Comparison (timings: median of 3 runs after "
                                     "a warm-up, on a machine that may be busy with other visitors; speedup = "
                                     "time to first token of none / of the strategy)",
                                     interactive=False, elem_id="ps-table")
                gr.Markdown("## Look inside")
                with gr.Row():
                    tokens_plot = gr.Plot(label="Visual tokens per LLM layer", elem_id="ps-plot-tokens")
                    shares_plot = gr.Plot(label="Attention share per LLM layer", elem_id="ps-plot-shares")
                with gr.Row():
                    with gr.Column():
                        heat_choice = gr.Dropdown(["none"], value="none", label="LLM attention heatmap of")
                        llm_heat = gr.Plot(label="LLM attention over the patches", elem_id="ps-plot-llm")
                    cls_heat = gr.Plot(label="[CLS] attention over the patches", elem_id="ps-plot-cls")
                consistency_plot = gr.Plot(label="VTC-CLS Fig. 2 for this image and question",
                                           elem_id="ps-plot-consistency")
                with gr.Row():
                    kl_plot = gr.Plot(label="VTW: KL vs withdrawal layer", visible=False, elem_id="ps-plot-kl")
                    relevance = gr.HighlightedText(label="IVTP: question words tinted by CLIP-text relevance "
                                                   "(eq. 5-7; words >= tau build the scoring query)",
                                                   visible=False, elem_id="ps-relevance")

            # -------------------------------------------------------- Sweep
            with gr.Tab("Sweep", id="sweep"):
                gr.Markdown("Accuracy against budget on held-out questions of the shapes world (the library's "
                            "`bench` sweep). Each question runs once per strategy and budget.")
                with gr.Row():
                    sweep_strategies = gr.Dropdown([s for s in names if s != "none"],
                                                   value=[s for s in info["default_strategies"] if s != "none"],
                                                   multiselect=True, label="Strategies (none runs as the reference)")
                    sweep_budgets = gr.Textbox(value=",".join(str(round(n_patches * f)) for f in (0.333, 0.222, 0.111)),
                                               label="Budgets (visual tokens, comma-separated)", elem_id="ps-sweep-budgets")
                    sweep_n = gr.Slider(5, 400, value=40, step=5, label="Questions", elem_id="ps-sweep-n")
                    sweep_types = gr.CheckboxGroup(["colour", "shape", "exist", "count", "position"],
                                                   value=["colour", "shape", "exist", "count", "position"],
                                                   label="Question types")
                sweep_run = gr.Button("Run sweep", variant="primary", elem_id="ps-sweep-run")
                sweep_status = gr.Markdown("", elem_id="ps-sweep-status")
                with gr.Row():
                    sweep_budget_plot = gr.Plot(label="Accuracy vs budget", elem_id="ps-plot-sweep-budget")
                    sweep_tflops_plot = gr.Plot(label="Accuracy vs TFLOPs (with the Pareto front)",
                                                elem_id="ps-plot-sweep-tflops")
                sweep_df = gr.Dataframe(headers=["strategy", "keep", "accuracy", "tokens into LLM", "tokens last layer",
                                                 "prefill TFLOPs", "prefill ms"], interactive=False)
                sweep_file = gr.File(label="Download the table (CSV)")
                if speed_report is not None:
                    with gr.Accordion("Measured speed on LLaVA-1.5-7B's widths: speedup against budget",
                                      open=False, elem_id="ps-speed"):
                        gr.Markdown(speed_caption(speed_report))
                        with gr.Row():
                            gr.Plot(plots.speed_figure(speed_report, "prefill"), label="Prefill speedup",
                                    elem_id="ps-plot-speed-prefill")
                            gr.Plot(plots.speed_figure(speed_report, "ttft"), label="Time-to-first-token speedup",
                                    elem_id="ps-plot-speed-ttft")

            # -------------------------------------------------------- Teach and Lessons (app/teach.py)
            teach.build_tabs(pool, info, {"image": image, "question": question, "strategies": strategies,
                                          "keep": keep, "model": model_choice, "results": results_state})

            # -------------------------------------------------------- How it works
            with gr.Tab("How it works", id="about"):
                teach.how_it_works(pool)  # where each method acts, glossary, papers (app/teach.py)
                gr.Markdown(about.strategies_markdown(names))
                gr.Markdown(about.model_card_markdown(info, scope.model_card()))

        # hidden inputs of the JSON API (same library call, no drawing)
        with gr.Column(visible=False):
            api_image = undecoded(gr.Image(type="filepath", label="image"))
            api_question = gr.Textbox(label="question")
            api_params = gr.JSON(value={}, label="params: {strategy: {parameter: value}}")
            api_out = gr.JSON()

        # ------------------------------------------------------------ callbacks
        card_outputs = [x for card in cards for x in card]
        plot_outputs = [tokens_plot, shares_plot, llm_heat, cls_heat, consistency_plot, kl_plot, relevance, heat_choice]
        all_outputs = [status, table, results_state, *card_outputs, *plot_outputs]

        def collect_params(values) -> dict:
            """Only what the visitor changed: a parameter left at its default keeps the strategy's own rule
            (e.g. vtc-cls's positions follow its stage)."""
            out: dict = {}
            for (name, key, kind, default), value in zip(param_keys, values):
                if value is None or value == "" or value == default:
                    continue
                if kind == "int":
                    value = int(value)
                out.setdefault(name, {})[key] = value
            return out

        def run_compare(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value, model_name,
                        request: gr.Request, *values, progress=gr.Progress()):
            forget_skipped_outputs(demo, request)
            params = collect_params(values)
            results: list[dict] = []
            view = None
            try:
                stream = pool.get(model_name).compare_stream(image_path, question_text, chosen or [], int(keep_value), params,
                                              max_new_tokens=int(max_new_tokens), eta=float(eta_value or 0.003))
                total = 1 + len([s for s in dict.fromkeys(chosen or []) if s != "none"])
                progress(0, desc="preparing the image")
                for event in stream:
                    if event["kind"] == "view":
                        view = event["view"]
                        # cards this run will not fill disappear; the others stay until overwritten (no flicker
                        # when the budget slider re-runs the comparison)
                        yield {status: "Running none (the reference)...",
                               **{c[0]: gr.update(visible=False) for c in cards[total:]}}
                        continue
                    if event["kind"] == "result":
                        r = event["result"]
                        results.append(r)
                        i = len(results) - 1
                        col, title, picture, details = cards[i]
                        progress(len(results) / (total + 1), desc=f"{r['strategy']} done")
                        nxt = f"{len(results)} of {total} done; running the next..." if len(results) < total else \
                            "All strategies done; computing the look-inside analyses..."
                        yield {status: nxt, col: gr.update(visible=True), title: card_title(r),
                               picture: overlays.overlay(view, r), details: card_details(r),
                               table: table_rows(results), results_state: results}
                        continue
                    yield {status: f"Done: {len(results)} strategies on a {grid[0]}x{grid[1]} grid.",
                           **_inspect_updates(event, results, info, tokens_plot, shares_plot, llm_heat, cls_heat,
                                              consistency_plot, kl_plot, relevance, heat_choice)}
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e

        def redraw_heatmap(results, name):
            chosen = next((r for r in results if r["strategy"] == name), None)
            return plots.llm_attention_figure(chosen) if chosen and chosen.get("trace") else None

        def api_compare(image, question, strategies, keep, max_new_tokens, params, model):
            """Compare strategies on one image and question; returns one dict per strategy (none first)."""
            try:
                if isinstance(params, str):
                    params = json.loads(params or "{}")
                return pool.get(model).compare(image, question, strategies, None if keep is None else keep, params,
                                               max_new_tokens=int(max_new_tokens))
            except (ValueError, json.JSONDecodeError) as e:
                raise gr.Error(str(e), print_exception=False) from e

        def run_sweep(chosen, budgets_text, n, types, model_name, progress=gr.Progress(track_tqdm=True)):
            try:
                budgets = []
                for part in (budgets_text or "").split(","):
                    if part.strip():
                        try:
                            budgets.append(int(part))
                        except ValueError:
                            raise ValueError(f"budget {part.strip()!r} is not a whole number of tokens") from None
                if not types:
                    raise ValueError("pick at least one question type")
                rows = pool.get(model_name).sweep(chosen or [], budgets, n=int(n), types=types)
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e
            fig_budget, fig_tflops = plots.sweep_figures(rows)
            return (f"{int(n)} questions x {len(rows)} configurations.", fig_budget, fig_tflops, sweep_table(rows),
                    sweep_csv(rows))

        def switch_model(model_name, keep_value):
            try:
                picked = pool.get(model_name).info()
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e
            n = picked["n_patches"]
            return (gr.update(maximum=n, value=min(int(keep_value), n)), [n, picked["grid"]],
                    f"Loaded `{model_name}`: {picked['grid'][0]}x{picked['grid'][1]} patches, "
                    f"{picked['llm_layers']} LLM layers.")

        model_choice.change(switch_model, [model_choice, keep], [keep, grid_state, model_status], api_visibility="private",
                            concurrency_id="model")
        compare_inputs = [image, question, strategies, keep, max_new, eta, model_choice, *param_inputs]
        run.click(run_compare, compare_inputs, all_outputs, api_name="compare_stream", concurrency_id="model",
                  scroll_to_output=True)
        keep.release(run_compare, compare_inputs, all_outputs, api_visibility="undocumented", concurrency_id="model",
                     trigger_mode="always_last")
        keep.change(lambda k, g: budget_words(k, *g), [keep, grid_state], keep_words, queue=False, show_progress="hidden",
                    api_visibility="private")
        heat_choice.change(redraw_heatmap, [results_state, heat_choice], llm_heat, api_visibility="private")
        api_button = gr.Button(visible=False)
        api_button.click(api_compare, [api_image, api_question, strategies, keep, max_new, api_params, model_choice],
                         api_out,
                         api_name="compare", concurrency_id="model")
        sweep_run.click(run_sweep, [sweep_strategies, sweep_budgets, sweep_n, sweep_types, model_choice],
                        [sweep_status, sweep_budget_plot, sweep_tflops_plot, sweep_df, sweep_file], api_name="sweep",
                        concurrency_id="model")
    return demo


def _control(c: dict, strategy: str, info: dict):
    label = c["label"]
    if c["kind"] == "choice":
        return gr.Radio(c["choices"], value=c["default"], label=label)
    if c["kind"] == "bool":
        return gr.Checkbox(value=c["default"], label=label)
    if c["kind"] == "text":
        return gr.Textbox(value=c["default"], label=label)
    if c["kind"] == "float":
        return gr.Number(value=c["default"], label=label)
    if c["name"] == "layer" and c["default"] is None:
        label += f" (empty: the strategy's default for {info['llm_layers']} layers)"
    if c["name"] == "layer":
        label += f"; 1..{info['llm_layers'] - 1}"
    return gr.Number(value=c["default"], label=label, precision=0)


def _inspect_updates(event: dict, results: list[dict], info: dict, tokens_plot, shares_plot, llm_heat, cls_heat,
                     consistency_plot, kl_plot, relevance, heat_choice) -> dict:
    names = [r["strategy"] for r in results]
    default = next((n for n in names if n != "none"), "none")
    chosen = results[names.index(default)]
    out = {tokens_plot: plots.tokens_alive_figure(results), shares_plot: plots.attention_shares_figure(results),
           llm_heat: plots.llm_attention_figure(chosen), heat_choice: gr.update(choices=names, value=default)}
    out[cls_heat] = (plots.cls_attention_figure(event["cls_attention"], info["grid"], info["feature_layer"])
                     if event["cls_attention"] is not None else None)
    out[consistency_plot] = plots.consistency_figure(event["consistency"]) if event["consistency"] else None
    kl = event.get("vtw_kl")
    out[kl_plot] = gr.update(visible=kl is not None, value=plots.vtw_kl_figure(kl) if kl else None)
    rel = event.get("ivtp_relevance")
    label = None
    if rel is not None:
        label = ("IVTP: question words tinted by CLIP-text relevance (eq. 5-7); words with relevance >= tau = "
                 f"{rel['tau']} build the scoring query" + (f". {rel['note']}" if rel.get("note") else ""))
    out[relevance] = gr.update(visible=rel is not None, value=relevance_value(rel), label=label)
    return out
