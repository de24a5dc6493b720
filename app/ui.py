"""The Gradio Blocks: Compare, Sweep and How it works. Callbacks call the library and draw its results.

``build(scope, examples)`` takes a loaded ``pruning.compare.Scope`` (made by ``app.py``, the composition
root) and a list of examples ``{"image": path, "question": text, ...}``. Nothing here imports torch or
computes what the library computes: it formats, draws and lays out.

How the Compare tab streams (and why it is built this way). Gradio 6's page does not mount a component created
with ``visible=False``: it is loaded when it first becomes visible, and updates sent to it (or to its children)
before then wait in a buffer that its registration reads; and an update of a container's ``visible`` reads every
child's current value back into the page's tree, concurrently with the other updates of the same message (one
message's outputs are applied with ``Promise.all``). A streamed message that both revealed a card and gave its
image, answer and cost therefore raced with itself: some cards never appeared, others lost their image, and the
status still said "Done". So here nothing on the Compare tab changes its ``visible`` (or any other property) while a comparison streams:

- every card slot, the results box and the look-inside box are created visible, so they are mounted with the
  page; what shows follows what there is (``CSS``): a card slot shows while its title has a heading, the results
  box while a card does, the look-inside box while it holds a drawn plot, the KL plot and IVTP's words while they
  hold something;
- a comparison's first message gives each of its slots a "waiting" title (the others an empty one), so all of
  its cards are laid out at once (no reflow as they arrive); each result then sends only values: the card's
  answer, overlay and cost, the table, the status line;
- a yield leaves out what it does not change (a skip), never re-sends it.

Refused input (``ValueError`` from the library, which checks everything before it runs anything) is shown beside
the input it names and in the status line; the results on the page stay. The JSON API (``/compare``,
``/compare_stream``) still raises, so a program gets the message in its exception.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict

import gradio as gr
from gradio.components.plot import PlotData

from . import about, overlays, plots, teach
from .colors import swatch_html
from .units import bytes_unit, flops_unit, format_bytes, format_flops, format_ms

CSS = """
.ps-intro p {margin: 0 0 4px 0;}
.ps-toy {background: #fff7e0; border-left: 4px solid #f0a500; padding: 6px 10px; border-radius: 4px; color: #222;}
.ps-toy .ps-short {display: none;}
.ps-legend {display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 0.85em; margin: 4px 0;}
.ps-legend-item {display: inline-flex; align-items: center; gap: 6px;}
.ps-swatch {display: inline-block; width: 18px; height: 14px; border: 1px solid #888; border-radius: 2px;}
.ps-differs {color: #c0392b; font-weight: 600;}
/* what shows follows what there is: nothing on the Compare tab changes its visibility while a comparison streams
   (the module docstring says why) */
.ps-card:not(:has(.ps-card-title h3)) {display: none !important;}
#ps-results:not(:has(.ps-card-title h3)) {display: none !important;}
#ps-inside:not(:has(.js-plotly-plot)) {display: none !important;}
#ps-plot-kl:not(:has(.js-plotly-plot)) {display: none !important;}
#ps-relevance-box:not(:has(.ps-relevance-note p)) {display: none !important;}
#ps-placeholder:not(:has(p)) {display: none !important;}
#ps-image-changed {display: none !important;}
#ps-view-box:not(:has(#ps-view img)) {display: none !important;}
#ps-compare-export-file:not(:has(a)) {display: none !important;}
/* the Teach and Lessons tabs' plots take no room until they hold a figure */
:is(#ps-probe-plot, #ps-film-plot, #ps-agree-plot, #ps-position-plot, #ps-band-plot,
    #ps-lesson-plot):not(:has(.js-plotly-plot)) {display: none !important;}
#ps-view-box {align-items: flex-start; gap: 12px;}
.ps-view-note {font-size: 0.9em;}
.ps-offworld {color: #9a3412; font-weight: 600;}
.ps-view-note .ps-offworld {font-weight: 400;}
.ps-timing-note {color: #555; font-style: italic; font-size: 0.92em;}
/* a message beside an input: takes no room while empty */
.ps-field-msg:not(:has(p)) {display: none !important;}
.ps-field-msg p {color: #b42318; font-weight: 600; margin: 0;}
#ps-status p {margin: 0;}
/* the cards: a fixed grid, every slot of a run laid out when the run starts */
#ps-cards {display: grid !important; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px;
           align-items: start;}
#ps-cards > .ps-card {min-width: 0 !important; width: auto !important; margin: 0 !important;}
.ps-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px !important;}
.ps-card-title h3 {margin: 0 0 2px 0;}
.ps-card-waiting {color: #777;}
/* the comparison table: scrolls sideways inside its box, strategy column pinned, headers wrap */
.ps-table-wrap {overflow-x: auto; max-width: 100%; border: 1px solid var(--border-color-primary); border-radius: 8px;}
table.ps-table {border-collapse: collapse; width: 100%; font-size: 0.86em; font-variant-numeric: tabular-nums;}
table.ps-table th, table.ps-table td {padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary);
                                      text-align: right; white-space: nowrap;}
table.ps-table th {white-space: normal; vertical-align: bottom; font-weight: 600; min-width: 4.5em; max-width: 8em;
                   background: var(--background-fill-secondary);}
table.ps-table th small {display: block; font-weight: 400; color: #666;}
table.ps-table th:first-child, table.ps-table td:first-child {text-align: left; position: sticky; left: 0;
                                                              background: var(--background-fill-primary); z-index: 1;}
table.ps-table th:first-child {background: var(--background-fill-secondary);}
table.ps-table .ps-text {text-align: left;}
.ps-table-caption {font-size: 0.85em; color: #555; margin: 4px 0 8px 0;}
@media (max-width: 640px) {
  .ps-intro .ps-steps {display: none;}
  .ps-toy .ps-long {display: none;}
  .ps-toy .ps-short {display: inline;}
  .ps-toy {padding: 4px 8px; font-size: 0.9em;}
  .ps-intro h1 {font-size: 1.5em; margin: 0;}
  #ps-cards {grid-template-columns: 1fr;}
  .js-plotly-plot .modebar-container {display: none !important;}
}
"""

PLOT_CONFIG = {"displaylogo": False, "scrollZoom": False}
PLACEHOLDER = ("_Results appear here after **Compare**: one card per strategy (its answer, and the image with the "
               "patches it discarded masked), a table of what each cost, then plots of what happens inside the "
               "model._")
WAITING = "waiting…"
BAND_SEEDS = 5  # the Sweep's band: random run with seeds 0..4


class Upload(os.PathLike):
    """An uploaded file as the library gets it: its path on the server (``os.fspath``) and, for every message
    about it, the name the visitor gave it (``str``), never the server's temp path."""

    def __init__(self, path: str, name: str | None):
        self.path = str(path)
        self.name = upload_name(name)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Upload({self.name!r})"


def upload_name(name: str | None) -> str:
    """A visitor's file name as messages show it: its last component, printable, at most 80 characters."""
    name = os.path.basename(str(name or "").replace("\\", "/")) if name else ""
    name = "".join(ch for ch in name if ch.isprintable())[:80]
    return name or "the uploaded image"


UNDECODED = "_prunescope_undecoded"


def undecoded(image: gr.Image) -> gr.Image:
    """``image`` (type filepath) hands the library the uploaded file undecoded, as an ``Upload`` named by the
    visitor's own file name. The library's loader checks the header (not an image, empty, too many pixels, an
    extreme aspect ratio) before it decodes anything and says what is wrong; Gradio's own preprocessing would open
    and convert it first, failing in its own words (or clipping a 16-bit image). An image sent as a ``data:`` URL
    reaches this as a file too (``app.server.guard_inputs`` writes its bytes to Gradio's cache undecoded, and
    re-applies this to a session's copy of the component).
    (An instance attribute, not a subclass: Gradio writes a .pyi stub next to the module of every subclass.)"""
    default = image.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return default(payload)
        return Upload(payload.path, payload.orig_name)

    image.preprocess = preprocess
    setattr(image, UNDECODED, True)
    return image


_FORGET_WARNED = False


def forget_skipped_outputs(demo: gr.Blocks, request) -> None:
    """Keep a visitor's session from growing with every streamed comparison (a Gradio 6 leak).

    An output a generator's yield leaves out is a skip (``{"__type__": "update"}``), and Gradio answers each skip by
    constructing a fresh copy of that component (a new id) for the session; when a later yield gives the component
    a value, the copy is registered in the session's config under its own id, holding the value (plots, images).
    Each streamed comparison would add ~18 such entries (~0.3 MB) to the session, kept until an hour after it
    closes. They are never looked up by a page (which knows the components by their original ids), so they are
    dropped before each run and once its last message has gone. Does nothing where Gradio's internals differ."""
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


class PageImages:
    """Which image each visitor's Compare page shows results of (or is about to), by session.

    Why: the Compare tab's image box sends its change event several times for one upload (seen in Chromium with
    Gradio 6.31, for several seconds after it: the box dispatches a change whenever its value is handed back to it
    as a new object), and a late one can come after a Compare clicked at once has started. When that event
    cancelled the comparison (Gradio's ``cancels``), it stopped the very comparison asked for the new image: the
    status stayed at "1 of 4 done" and the other cards never came. So:

    - a change to another image than the one recorded gets a change number (``changed``), and the page is cleared
      for it unless a comparison has started since (``clearing``: the comparison, on the new image, lays the page
      out itself); a change to the image recorded does nothing;
    - a comparison records its image when it starts (``started``);
    - a comparison waiting or running for the old image is cancelled by the events that change the image once each
      (an upload, a removal, an example picked, a lesson opened).

    At most ``cap`` sessions are remembered (the oldest forgotten first: its next change clears, as a first one
    does)."""

    def __init__(self, cap: int = 10_000):
        self.cap = cap
        self._by_session: OrderedDict[str, tuple[str | None, int | None]] = OrderedDict()
        self._changes = itertools.count(1)
        self._lock = threading.Lock()

    @staticmethod
    def key(image) -> str | None:
        return os.fspath(image) if image is not None else None

    def _record(self, session: str, image, change: int | None) -> None:
        self._by_session[session] = (self.key(image), change)
        self._by_session.move_to_end(session)
        while len(self._by_session) > self.cap:
            self._by_session.popitem(last=False)

    def started(self, session: str, image) -> None:
        """A comparison on ``image`` starts for ``session``: the page's results will be of it."""
        with self._lock:
            self._record(session, image, None)

    def changed(self, session: str, image) -> int | None:
        """The image box says ``image``: a new change number (and ``image`` recorded with it) when the page's
        results are of another image, or none is recorded; None when it is the image recorded (a repeated change
        event: nothing to do)."""
        key = self.key(image)
        with self._lock:
            held = self._by_session.get(session)
            if held is not None and held[0] == key:
                self._by_session.move_to_end(session)
                return None
            change = next(self._changes)
            self._record(session, image, change)
        return change

    def clearing(self, session: str, change) -> bool:
        """Whether change number ``change`` still stands: no comparison has started since, and no other change
        (then the page is cleared; else what started since keeps the page)."""
        with self._lock:
            held = self._by_session.get(session)
        return held is not None and change is not None and held[1] == int(change)


# ------------------------------------------------------------------ formatting (plain values -> text)

def plot_value(fig):
    """A plotly figure as ``gr.Plot``'s value, with the page's plotly config (no plotly logo, no scroll zoom: a page
    scrolls past a plot); None stays None (an empty plot)."""
    if fig is None:
        return None
    spec = json.loads(fig.to_json())
    spec["config"] = {**spec.get("config", {}), **PLOT_CONFIG}
    return PlotData(type="plotly", plot=json.dumps(spec))


def run_order(chosen) -> list[str]:
    """The strategies a comparison runs, in the order its results come: none (the reference) first, then the chosen
    ones, each once."""
    return ["none", *[s for s in dict.fromkeys(chosen or []) if s != "none"]]


def card_title(r: dict) -> str:
    differs = "" if r["same_as_none"] else " <span class='ps-differs'>≠ unpruned answer</span>"
    differs += teach.truth_mark(r)  # ✓ / ✗ against the scene's answer, when known (app/teach.py)
    return f"### {swatch_html(r['strategy'])}\n**Answer:** {html.escape(r['answer'] or '(empty)')}{differs}"


def card_waiting(name: str) -> str:
    """A card's title while its strategy waits or runs: the slot is laid out, the answer not there yet."""
    return f"### {swatch_html(name)}\n<span class='ps-card-waiting'>{WAITING}</span>"


def _spread_words(sp: dict | None, unit: str = "", fmt: str = "{:.2f}") -> str:
    """``(min–max over n)`` of a ``timing_spread`` / ``speedup_spread`` entry; empty without one."""
    if not sp or sp.get("n", 0) < 2:
        return ""
    return f" ({fmt.format(sp['min'])}–{fmt.format(sp['max'])}{unit} over {sp['n']})"


def speedup_words(r: dict) -> str:
    """The measured speedup with its per-pair spread and the FLOPs' prediction: never a bare ratio."""
    sp = r.get("speedup_spread")
    spread = (f", {sp['min']:.2f}–{sp['max']:.2f}x over {sp['n']} paired runs" if sp and sp.get("n", 0) > 1
              else "")
    return f"**{r['speedup']:.2f}x** vs none, measured{spread} (FLOPs predict {r['speedup_predicted']:.2f}x)"


def projected_words(r: dict) -> str:
    """One line: what this kept set would cost on the speed report's target model (``result["projected"]``);
    empty when the library could not project it (the table caption then says why)."""
    p = r.get("projected") or {}
    if not p.get("available"):
        return ""
    lo, hi = p["ttft_ms_range"]
    speed = "" if r["strategy"] == "none" else f" · **{p['speedup_ttft']:.2f}x**"
    return (f"**{p['target_name']}, projected:** first token {format_ms(p['ttft_ms'])} "
            f"({format_ms(lo)}–{format_ms(hi)}) · prefill {format_ms(p['prefill_ms'])} · KV cache "
            f"{format_bytes(p['kv_cache_bytes'])}{speed}")


def offworld_words(r: dict) -> str:
    """A card's warning when the input is outside the embedded model's world (the full reasons sit under the
    image as the model sees it)."""
    if not r.get("offworld_warnings"):
        return ""
    return ("<span class='ps-offworld'>⚠ Outside the toy model's world: this answer is a guess "
            "(why: under <i>As the model sees it</i>).</span>")


def view_words(view_event: dict) -> str:
    """Under the image as the model sees it: how the processor resized or cropped the upload, then every reason
    the input lies outside the embedded model's world (the library's ``view`` event)."""
    lines = ["**As the model sees it** (left): " + html.escape(view_event.get("view_note") or "")]
    lines += [f"<span class='ps-offworld'>⚠ {html.escape(w)}</span>" for w in view_event.get("warnings") or []]
    return "  \n".join(line for line in lines if line)


def card_details(r: dict) -> str:
    t, sp = r["timings"], r.get("timing_spread") or {}
    ttft = (sp.get("ttft_ms") or {}).get("median", t["vision_ms"] + t["prefill_ms"])
    lines = [offworld_words(r),
             f"{r['visual_tokens_kept']} of {r['visual_tokens']} visual tokens enter the LLM, "
             f"{r['image_tokens_per_layer'][-1]} reach its last layer",
             f"**Here, measured:** first token {ttft:.1f} ms{_spread_words(sp.get('ttft_ms'), ' ms', '{:.1f}')} · "
             f"{t['decode_ms_per_token']:.2f} ms per decoded token · {format_flops(r['tflops']['prefill'])} prefill",
             "the reference the speedups are measured against" if r["strategy"] == "none" else speedup_words(r)]
    if r.get("timing_note"):
        lines.append(f"<span class='ps-timing-note'>{html.escape(r['timing_note'])}</span>")
    lines.append(projected_words(r))
    if r.get("notes"):
        lines.append("_" + "; ".join(r["notes"]) + "_")
    lines.append(teach.card_lines(r))  # ground truth, random's seeds (app/teach.py)
    return "  \n".join(line for line in lines if line)


def _yes_no(r: dict, ctx: dict) -> str:
    return "yes" if r["same_as_none"] else "<span class='ps-differs'>no</span>"


def _speedup_cell(r: dict, c: dict) -> str:
    """The measured speedup and its per-pair range; a † where the card carries a note on why it is not a clear
    gain (below 1, or a range that holds 1)."""
    if r["strategy"] == "none":
        return "reference"
    sp = r.get("speedup_spread")
    spread = f" <small>({sp['min']:.2f}–{sp['max']:.2f})</small>" if sp and sp.get("n", 0) > 1 else ""
    return f"{r['speedup']:.2f}x{spread}{' †' if r.get('timing_note') else ''}"


def _projected(key: str, fmt):
    def cell(r: dict, c: dict) -> str:
        p = r.get("projected") or {}
        if not p.get("available"):
            return "n/a"
        if key == "speedup_ttft" and r["strategy"] == "none":
            return "reference"
        return fmt(p[key], c)
    return cell


# The comparison table, one column per entry: (header, unit line under it, cell from (result, context), text-aligned).
# ``context`` holds what a whole column shares (one FLOPs unit, one bytes unit). A new column is one more entry.
# "{target}" in a header is the projection's target model (LLaVA-1.5-7B).
TABLE_COLUMNS = [
    ("strategy", "", lambda r, c: swatch_html(r["strategy"]), True),
    ("answer", "", lambda r, c: html.escape(r["answer"] or "(empty)"), True),
    ("same as none", "", _yes_no, True),
    ("visual tokens", "into the LLM", lambda r, c: str(r["visual_tokens_kept"]), False),
    ("in last layer", "tokens", lambda r, c: str(r["image_tokens_per_layer"][-1]), False),
    ("first token", "ms, here", lambda r, c: f"{r['timings']['vision_ms'] + r['timings']['prefill_ms']:.1f}", False),
    ("decode", "ms / token, here", lambda r, c: f"{r['timings']['decode_ms_per_token']:.2f}", False),
    ("compute", "prefill", lambda r, c: format_flops(r["tflops"]["prefill"], unit=c["flops"]), False),
    ("KV cache", "here", lambda r, c: format_bytes(r["kv_cache_bytes"], unit=c["bytes"]), False),
    ("speedup", "measured here (range)", _speedup_cell, False),
    ("speedup", "FLOPs predict", lambda r, c: "reference" if r["strategy"] == "none" else
     f"{r['speedup_predicted']:.2f}x", False),
    ("first token", "{target}, projected", _projected("ttft_ms", lambda v, c: format_ms(v)), False),
    ("KV cache", "{target}, projected", _projected("kv_cache_bytes", lambda v, c: format_bytes(v)), False),
    ("speedup", "{target}, projected", _projected("speedup_ttft", lambda v, c: f"{v:.2f}x"), False),
]
TABLE_HEADERS = [h if not u else f"{h} ({u})" for h, u, _, _ in TABLE_COLUMNS]


def _target(results: list[dict]) -> str:
    return next((r["projected"]["target_name"] for r in results if (r.get("projected") or {}).get("available")),
                "target model")


def table_html(results: list[dict], columns=TABLE_COLUMNS) -> str:
    """The comparison table as HTML: one row per finished strategy, a unit line under each header, numbers in one
    unit per column; it scrolls sideways inside its box where the page is narrower than the table."""
    ctx = {"flops": flops_unit([r["tflops"]["prefill"] for r in results]) if results else None,
           "bytes": bytes_unit([r["kv_cache_bytes"] for r in results]) if results else None}
    target = _target(results)
    head = "".join(f"<th{' class=ps-text' if text else ''}>{h}"
                   f"{f'<small>{u.format(target=target)}</small>' if u else ''}</th>" for h, u, _, text in columns)
    body = "".join("<tr>" + "".join(f"<td{' class=ps-text' if text else ''}>{cell(r, ctx)}</td>"
                                    for _, _, cell, text in columns) + "</tr>" for r in results)
    if not results:
        body = f"<tr><td class='ps-text' colspan='{len(columns)}'>{WAITING}</td></tr>"
    return (f"<div class='ps-table-wrap'><table class='ps-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def overhead_words(results: list[dict], embedded: bool) -> str:
    """One line on why the embedded model's times are overhead-bound, from none's own figures (empty before
    none's result, or for a model that is not the toy)."""
    none = next((r for r in results if r["strategy"] == "none"), None)
    if none is None or not embedded:
        return ""
    gflops, ms = none["tflops"]["prefill"] * 1e3, none["timings"]["prefill_ms"]
    return (f"<b>Why the toy's speedups are small or even below 1:</b> its whole unpruned prefill is {gflops:.2f} "
            f"GFLOPs in {ms:.1f} ms, so fixed per-layer costs (Python, kernel launches, the selection itself) that "
            "pruning does not remove outweigh the arithmetic it saves. ")


def table_caption(results: list[dict], projection: dict | None = None, embedded: bool = False) -> str:
    """What the table's figures are: how the times were taken, why the toy's are overhead-bound (``embedded``),
    and what the projected columns rest on (``projection``: ``Scope.projection_info()``)."""
    repeats = next((r.get("repeats") for r in results if r.get("repeats")), None)
    runs = f"median of {repeats} runs after a warm-up" if repeats else "median of the timed runs after a warm-up"
    text = (f"Timings here: {runs}, on a machine that may be busy with other visitors. Speedup: time to first token "
            "(vision + prefill) of none over the strategy's, each run paired with a run of none moments apart; the "
            "range spans the pairs; † : not a clear gain, the card says why. FLOPs predict: the same ratio of "
            "prefill compute. ")
    text += overhead_words(results, embedded)
    if projection is not None:
        if projection.get("available"):
            text += (f"<b>Projected columns:</b> the same kept tokens per layer on {_target(results)}, timed from "
                     f"<code>python -m pruning speed</code>'s per-layer times measured at its real widths on "
                     f"{html.escape(projection['machine'])} (not a run of that model; range: the measurement's "
                     "quartiles; KV cache in fp16, as that model keeps it).")
        else:
            text += f"No projection to a larger model: {html.escape(projection.get('reason', ''))}."
    return f"<p class='ps-table-caption'>{text}</p>"


def refused_input(message: str) -> str:
    """Which input a library refusal names: ``image``, ``question``, ``model`` or ``settings`` (the strategies,
    the budget and the strategies' parameters). The library's messages start with the value they refuse
    (docs/robustness.md)."""
    m = message.strip().lower()
    if m.startswith(("no image", "image ", "image '", "cannot read image")):
        return "image"
    if m.startswith("question"):
        return "question"
    if m.startswith(("model", "cannot load")) or "allow-list" in m:
        return "model"
    return "settings"


def refusal_status(message: str, had_results: bool) -> str:
    kept = " The results below are still those of the previous comparison." if had_results else ""
    return f"**Not run:** {message}.{kept}".replace("..", ".")


def budget_words(keep: int | float | None, n_patches: int | None, grid: list[int] | None) -> str:
    """The slider's value in words: a count of the fixed grid, or (``n_patches`` None: a model whose token count
    depends on the image, ``Scope.info()["budget"]`` unit "ratio") a percentage of each image's own tokens."""
    keep = int(keep or 0)
    if n_patches is None:
        return (f"**{keep}%** of each image's visual tokens (this model's token count depends on the image; each card "
                "says how many it had; vtw withdraws all at its layer K; none keeps all)")
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
    unit = flops_unit([r["prefill_tflops"] for r in rows])  # one unit for the column
    return [[r.get("label", r["name"]), "all" if r["params"].get("keep") is None else r["params"]["keep"],
             f"{r['accuracy']:.1%}", round(r["tokens_entering_llm"], 1), round(r["tokens_last_layer"], 1),
             format_flops(r["prefill_tflops"], unit=unit), round(r["prefill_ms"], 2)] for r in rows]


# ------------------------------------------------------------------ the Blocks

def slider_settings(budget: dict) -> dict:
    """The budget slider from ``Scope.info()["budget"]``: a count (1..the grid's tokens) as it is; a ratio of each
    image's tokens as a whole percentage (1..100), which ``library_budget`` turns back into ``keep_ratio``."""
    if budget["unit"] == "ratio":
        return {"minimum": max(1, round(budget["min"] * 100)), "maximum": round(budget["max"] * 100),
                "value": round(budget["default"] * 100), "step": 1,
                "label": "Budget: % of the image's visual tokens kept (release to re-run)"}
    return {"minimum": budget["min"], "maximum": budget["max"], "value": budget["default"], "step": budget["step"],
            "label": "Budget: visual tokens kept (release to re-run)"}


def library_budget(value, budget: dict) -> dict:
    """The slider's value as the library's budget argument: ``keep`` (a count) or ``keep_ratio`` (the percentage a
    ratio slider shows, / 100); None: no budget."""
    if value is None:
        return {"keep": None}
    if budget["unit"] == "ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"keep={value!r}: expected a percentage of the image's visual tokens (1..100)")
        return {"keep_ratio": value / 100}
    return {"keep": int(value) if isinstance(value, float) and value.is_integer() else value}


def model_words(name: str, picked: dict) -> str:
    """The line under the Model menu once a model is loaded: its grid, or why there is none, and what the page does
    not show for it (the overlay, the sweep) with the library's reasons."""
    if picked["grid"] is not None:
        said = (f"Loaded `{name}`: {picked['grid'][0]}x{picked['grid'][1]} patches, {picked['llm_layers']} LLM "
                "layers.")
    else:
        said = (f"Loaded `{name}` ({picked['family_name']}, {picked['llm_layers']} LLM layers): the budget is "
                f"{picked['budget']['sentence']}.")
    notes = [picked["overlay"]["note"]] if not picked["overlay"]["drawn"] else []
    if not picked["sweep"]["available"]:
        notes.append(f"The Sweep tab: {picked['sweep']['reason']}.")
    return " ".join([said, *notes])


def session_of(request) -> str:
    """A page event's session (its ``gr.Request``'s session hash; "" where there is none)."""
    return getattr(request, "session_hash", None) or ""


TOY_BANNER = ("<div class='ps-toy'><span class='ps-long'><b>The model here is a toy.</b> It knows only coloured "
              "shapes on grey backgrounds (ask about colour, shape, count, existence, left/right, above/below, as in "
              "the examples). On photos or other questions its answers are meaningless. See <i>How it works</i>."
              "</span><span class='ps-short'><b>A toy model:</b> it knows only coloured shapes on grey (see "
              "<i>How it works</i>).</span></div>")


def banner_html(label: str, picked: dict) -> str:
    """The line above the Model menu for the model picked: the toy's warning for the embedded model, else the
    model's name (its menu label) and device."""
    if picked["embedded"]:
        return TOY_BANNER
    return (f"<p class='ps-model-line'>Model: <code>{html.escape(label)}</code> on "
            f"{html.escape(str(picked['device']))}</p>")


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
    page_images = PageImages()  # which image each visitor's results are of (the class says why)
    controls = info["controls"]
    slider = slider_settings(info["budget"])
    default_keep = slider["value"]
    first = examples[0] if examples else {"image": None, "question": ""}

    with gr.Blocks(title="PruneScope: visual-token pruning, side by side", analytics_enabled=False) as demo:
        results_state = gr.State([])
        inside_state = gr.State(None)  # what the heatmaps are redrawn from: the view and [CLS] attention of the run
        grid_state = gr.State([n_patches, grid])  # the picked model's patch count and grid
        gr.HTML("<div class='ps-intro'><h1>PruneScope</h1><p>Compare training-free visual-token pruning strategies "
                "on one image and one question: what each keeps, what it answers, where attention goes and what "
                "it costs.</p><p class='ps-steps'><b>1.</b> Pick an example (or upload an image) and a question. "
                "<b>2.</b> Choose strategies and a budget. <b>3.</b> Press <b>Compare</b>. Then drag the budget "
                "slider and watch patches disappear and answers change.</p></div>", padding=False)
        # what the model picked is: the toy's warning, or its name (it follows the Model menu: switch_model)
        banner = gr.HTML(banner_html(pool.label(pool.default), info), padding=False, elem_id="ps-banner")
        # labels, never the host's paths (the page's config shows every choice); pool.get takes a label
        model_choice = gr.Dropdown(pool.labels, value=pool.label(pool.default),
                                   label="Model (this host's allow-list)", visible=len(pool.names) > 1,
                                   elem_id="ps-model")
        model_status = gr.Markdown("", elem_classes="ps-field-msg", elem_id="ps-model-msg")
        with gr.Tabs():
            # -------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        image = undecoded(gr.Image(value=first["image"], type="filepath", label="Image",
                                                   sources=["upload", "clipboard"], height=230, elem_id="ps-image"))
                        image_msg = gr.Markdown("", elem_classes="ps-field-msg", elem_id="ps-image-msg")
                        # changes when the page's image does (note_image); shown to nobody (CSS), but mounted
                        image_changed = gr.Number(0, precision=0, show_label=False, elem_id="ps-image-changed")
                        question = gr.Textbox(value=first["question"], label="Question", elem_id="ps-question")
                        question_msg = gr.Markdown("", elem_classes="ps-field-msg", elem_id="ps-question-msg")
                        # right under the question: on a phone the first screen holds image, question and Compare
                        run = gr.Button("Compare", variant="primary", elem_id="ps-run")
                        # the one progress text, where the eye is after a click (the results come below)
                        status = gr.Markdown("", elem_id="ps-status")
                        forms = info["question_forms"]
                        question_form = gr.Dropdown(
                            [(f"{f['form']}  (e.g. {f['example']})" + ("" if f["evaluated"] else " [training only]"),
                              f["example"]) for f in forms], value=None, elem_id="ps-question-form",
                            label="Or pick a question form the toy model knows (fills the question; edit the "
                                  "colour or shape)", visible=bool(forms))
                        examples_box = None
                        if examples:
                            examples_box = gr.Examples(
                                [[e["image"], e["question"]] for e in examples], [image, question],
                                label="Examples: held-out scenes the model never saw (click one, then Compare)")
                    with gr.Column(scale=1, min_width=300):
                        strategies = gr.Dropdown(names, value=info["default_strategies"], multiselect=True,
                                                 label="Strategies (none always runs first, as the reference)",
                                                 elem_id="ps-strategies")
                        keep = gr.Slider(elem_id="ps-keep", **slider)
                        keep_words = gr.Markdown(budget_words(default_keep, n_patches, grid))
                        max_new = gr.Slider(1, 64, value=8, step=1, label="Max new tokens", elem_id="ps-max-new")
                        with gr.Accordion("Strategy parameters (the papers' defaults)", open=False, elem_id="ps-params"):
                            param_inputs, param_keys = [], []
                            for name in names:
                                if not controls[name]:
                                    continue
                                with gr.Accordion(name, open=False, elem_id=f"ps-params-{name}"):
                                    for c in controls[name]:
                                        param_inputs.append(_control(c, name, info))
                                        param_keys.append((name, c["name"], c["kind"], c["default"]))
                                    if name == "vtw":
                                        # no minimum here: the library refuses eta <= 0 in its own words, shown
                                        # beside these settings (a widget bound would be an error on every output)
                                        eta = gr.Number(value=0.003, label="eta: KL threshold for choosing K "
                                                        "(Algorithm 1; the KL plot)", elem_id="ps-eta")
                        settings_msg = gr.Markdown("", elem_classes="ps-field-msg", elem_id="ps-settings-msg")
                placeholder = gr.Markdown(PLACEHOLDER, elem_id="ps-placeholder")
                with gr.Column(elem_id="ps-results"):
                    with gr.Row(elem_id="ps-view-box", equal_height=False):
                        view_image = gr.Image(type="pil", show_label=False, interactive=False,
                                              height=160, width=160, min_width=170, scale=0, elem_id="ps-view",
                                              buttons=["download"])
                        view_note = gr.Markdown("", elem_id="ps-view-note", elem_classes="ps-view-note")
                    gr.HTML(overlays.legend_html(), padding=False)
                    cards = []
                    with gr.Row(equal_height=False, elem_id="ps-cards"):
                        for i in range(len(names)):
                            with gr.Column(min_width=240, elem_classes="ps-card", elem_id=f"ps-card-{i}"):
                                title = gr.Markdown(elem_classes="ps-card-title")
                                picture = gr.Image(type="pil", show_label=False, interactive=False, height=240,
                                                   elem_classes="ps-overlay", buttons=["download"])
                                details = gr.Markdown(elem_classes="ps-card-details")
                            cards.append((title, picture, details))
                    gr.Markdown("### What each strategy cost")
                    table = gr.HTML(table_html([]), elem_id="ps-table", padding=False)
                    table_note = gr.HTML(table_caption([], info["projection"], info["embedded"]), padding=False)
                    with gr.Row(elem_id="ps-compare-export-row", equal_height=False):
                        export_button = gr.Button("Save this comparison as one HTML page (opens offline)",
                                                  size="sm", scale=0, min_width=280, elem_id="ps-compare-export")
                        export_file = gr.File(label="The comparison (HTML)", elem_id="ps-compare-export-file",
                                              min_width=280)
                    export_msg = gr.Markdown("", elem_classes="ps-field-msg", elem_id="ps-compare-export-msg")
                with gr.Column(elem_id="ps-inside"):
                    gr.Markdown("## Look inside")
                    heat_over = gr.Checkbox(True, elem_id="ps-heat-over",
                                            label="Draw the attention heatmaps over the image (untick: the grid "
                                                  "of cells alone)")
                    with gr.Row():
                        tokens_plot = gr.Plot(show_label=False, elem_id="ps-plot-tokens", min_width=300)
                        shares_plot = gr.Plot(show_label=False, elem_id="ps-plot-shares", min_width=300)
                    with gr.Row():
                        with gr.Column(min_width=300):
                            heat_choice = gr.Dropdown(["none"], value="none", label="LLM attention heatmap of",
                                                      elem_id="ps-heat-choice")
                            llm_heat = gr.Plot(show_label=False, elem_id="ps-plot-llm")
                        cls_heat = gr.Plot(show_label=False, elem_id="ps-plot-cls", min_width=300)
                    consistency_plot = gr.Plot(show_label=False, elem_id="ps-plot-consistency")
                    with gr.Row():
                        kl_plot = gr.Plot(show_label=False, elem_id="ps-plot-kl", min_width=300)
                        with gr.Column(elem_id="ps-relevance-box", min_width=300):
                            relevance = gr.HighlightedText(label="IVTP: question words tinted by CLIP-text relevance",
                                                           elem_id="ps-relevance")
                            relevance_note = gr.Markdown("", elem_classes="ps-relevance-note")

            # -------------------------------------------------------- Sweep
            with gr.Tab("Sweep", id="sweep"):
                gr.Markdown("Accuracy on held-out questions of the shapes world (the library's `bench` sweep), "
                            "against the visual tokens each LLM layer reads on average (a budget's cost for every "
                            "method, FastV's and VTW's included) and against prefill compute. Each question runs "
                            "once per strategy and budget; bars: Wilson 95% intervals.")
                with gr.Row():
                    sweep_strategies = gr.Dropdown([s for s in names if s != "none"],
                                                   value=[s for s in info["default_strategies"] if s != "none"],
                                                   multiselect=True, label="Strategies (none runs as the reference)")
                    sweep_budgets = gr.Textbox(value=",".join(str(round(n_patches * f)) for f in (0.333, 0.222, 0.111))
                                               if n_patches else "",
                                               label="Budgets (visual tokens, comma-separated)", elem_id="ps-sweep-budgets")
                    sweep_n = gr.Slider(5, 400, value=40, step=5, label="Questions", elem_id="ps-sweep-n")
                    sweep_types = gr.CheckboxGroup(["colour", "shape", "exist", "count", "position"],
                                                   value=["colour", "shape", "exist", "count", "position"],
                                                   label="Question types")
                with gr.Row():
                    sweep_seed = gr.Number(0, precision=0, elem_id="ps-sweep-seed", min_width=200,
                                           label="Seed: 0 = the default held-out questions; 1..999 draw another "
                                                 "set (and seed random and k-means)")
                    sweep_band = gr.Checkbox(False, elem_id="ps-sweep-band", min_width=200,
                                             label=f"Also run random with {BAND_SEEDS} seeds and draw its range as a "
                                                   f"band (random's luck; {BAND_SEEDS} more runs per budget)")
                sweep_run = gr.Button("Run sweep", variant="primary", elem_id="ps-sweep-run")
                sweep_status = gr.Markdown("", elem_id="ps-sweep-status")
                with gr.Row():
                    # the figures carry their own titles (a label badge would sit over them)
                    sweep_budget_plot = gr.Plot(show_label=False, elem_id="ps-plot-sweep-budget", min_width=300)
                    sweep_tflops_plot = gr.Plot(show_label=False, elem_id="ps-plot-sweep-tflops", min_width=300)
                sweep_df = gr.Dataframe(headers=["strategy", "keep", "accuracy", "tokens into LLM", "tokens last layer",
                                                 "prefill compute", "prefill ms"], interactive=False)
                sweep_file = gr.File(label="Download the table (CSV)")
                if speed_report is not None:
                    with gr.Accordion("Measured speed on LLaVA-1.5-7B's widths: speedup against budget",
                                      open=False, elem_id="ps-speed"):
                        gr.Markdown(speed_caption(speed_report))
                        with gr.Row():
                            gr.Plot(plot_value(plots.speed_figure(speed_report, "prefill")), show_label=False,
                                    min_width=300,
                                    elem_id="ps-plot-speed-prefill")
                            gr.Plot(plot_value(plots.speed_figure(speed_report, "ttft")),
                                    show_label=False, min_width=300, elem_id="ps-plot-speed-ttft")

            # -------------------------------------------------------- Teach and Lessons (app/teach.py)
            teach_parts = teach.build_tabs(pool, info, {
                "image": image, "question": question, "strategies": strategies, "keep": keep, "model": model_choice,
                "results": results_state, "export_button": export_button, "export_file": export_file,
                "export_msg": export_msg, "grid_state": grid_state})

            # -------------------------------------------------------- How it works
            with gr.Tab("How it works", id="about"):
                teach.how_it_works(pool)  # where each method acts, glossary, papers (app/teach.py)
                gr.Markdown(about.strategies_markdown(names))
                gr.Markdown(about.model_card_markdown({**info, "model": pool.label(pool.default)}, scope.model_card()))

        # hidden inputs of the JSON API (same library calls, no drawing)
        with gr.Column(visible=False):
            api_image = undecoded(gr.Image(type="filepath", label="image"))
            api_question = gr.Textbox(label="question")
            api_params = gr.JSON(value={}, label="params: {strategy: {parameter: value}}")
            api_out = gr.JSON()
            api_eta = gr.Number(value=0.003, label="eta", minimum=1e-9)

        # ------------------------------------------------------------ callbacks
        card_outputs = [x for card in cards for x in card]
        plot_outputs = [tokens_plot, shares_plot, llm_heat, cls_heat, consistency_plot, kl_plot, relevance,
                        relevance_note, heat_choice, inside_state]
        messages = {"image": image_msg, "question": question_msg, "settings": settings_msg, "model": model_status}
        all_outputs = [status, table, results_state, table_note, placeholder, view_image, view_note,
                       *messages.values(), *card_outputs,
                       *plot_outputs]

        def collect_params(values) -> dict:
            """Only what the visitor changed: a parameter left at its default keeps the strategy's own rule
            (e.g. vtc-cls's positions follow its stage)."""
            out: dict = {}
            for (name, key, kind, default), value in zip(param_keys, values):
                if isinstance(value, str) and kind != "text":
                    value = value.strip()
                if value is None or value == "" or value == default:
                    continue
                if kind == "int":
                    try:
                        value = int(value) if not isinstance(value, str) else int(value, 10)
                    except ValueError:
                        raise ValueError(f"{name} {key}={value!r}: expected a whole number (empty: the strategy's "
                                         "default)") from None
                out.setdefault(name, {})[key] = value
            return out

        def whole(value):
            """A slider's float (8.0) as the int it stands for; anything else as given (the library checks it)."""
            return int(value) if isinstance(value, float) and value.is_integer() else value

        def stream_updates(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value, model_name,
                           values, in_page: bool, had_results: bool, over: bool = True):
            """The Compare tab's messages for one comparison: values only (the module docstring says why).
            ``in_page``: a refusal becomes a message beside the input it names and in the status line, and the
            page keeps its results; else (the API) it raises."""
            def refuse(e: ValueError):
                if not in_page:
                    raise gr.Error(str(e), print_exception=False) from e
                message = str(e)
                target = refused_input(message)
                return {status: refusal_status(message, had_results),
                        **{m: (f"⚠ {message}" if key == target else "") for key, m in messages.items()}}

            order = run_order(chosen)
            total = len(order)
            try:
                picked = pool.get(model_name).info()
                stream = pool.get(model_name).compare_stream(
                    image_path, question_text, chosen or [], params=collect_params(values),
                    max_new_tokens=whole(max_new_tokens), eta=0.003 if eta_value is None else float(eta_value),
                    **library_budget(whole(keep_value), picked["budget"]))
                first_event = next(stream)  # the library checks the whole request before its first event
            except ValueError as e:
                yield refuse(e)
                return
            view = first_event["view"]
            drawn = first_event.get("overlay_drawn", True)  # False: the library says the kept patches can't be drawn
            seen_words = view_words(first_event) + (f"  \n{first_event['overlay_note']}" if not drawn else "")
            # the result's grid lies over ``view`` (LLaVA-1.5, Qwen2.5-VL), or its rows are several grids (the anyres
            # crops, InternVL's tiles): then each view of the library's layout gets its own panel
            on_view = first_event["grid_on_view"]
            layout, pictures = first_event["layout"], first_event["views"]
            panels = not on_view

            def card_picture(r):
                if not drawn:
                    return None
                return overlays.overlay_views(pictures, layout, r) if panels else overlays.overlay(view, r)

            def card_words(r):
                said = overlays.newline_words(layout, r) if panels else None
                return card_details(r) + (f"  \n{said}" if said else "")

            # every slot of this run laid out at once, waiting; the others empty (hidden by CSS)
            names_ = order + [None] * (len(cards) - total)
            yield {status: f"Running none, the unpruned reference (1 of {total})... The cards fill in below.",
                   placeholder: "",
                   view_image: (overlays.overlay_views(pictures, layout, None, overlays.DISPLAY // 2) if panels
                                else overlays.as_seen(view)), view_note: seen_words,
                   table: table_html([]), **{m: "" for m in messages.values()},
                   **{x: v for (title, picture, details), name in zip(cards, names_)
                      for x, v in ((title, card_waiting(name) if name else ""), (picture, None), (details, ""))}}
            results: list[dict] = []
            try:
                for event in stream:
                    if event["kind"] == "result":
                        r = event["result"]
                        results.append(r)
                        title, picture, details = cards[len(results) - 1]
                        done = len(results)
                        nxt = (f"{done} of {total} done; running {order[done]}... The cards fill in below."
                               if done < total else
                               f"All strategies done ({total} of {total}); drawing the look-inside plots...")
                        yield {status: nxt, title: card_title(r), picture: card_picture(r),
                               details: card_words(r), table: table_html(results),
                               table_note: table_caption(results, picked["projection"], picked["embedded"]),
                               results_state: list(results)}
                    elif event["kind"] == "inspect":
                        # no view where the grid is not the picture's (the anyres crops, InternVL's tiles): the
                        # heatmaps are then drawn as the strip alone
                        inside = {"view": view if on_view else None, "cls_attention": event["cls_attention"],
                                  "grid": first_event["grid"], "feature_layer": picked["feature_layer"]}
                        values_ = _inspect_updates(event, results, picked, tokens_plot, shares_plot, llm_heat,
                                                   cls_heat, consistency_plot, kl_plot, relevance, relevance_note,
                                                   heat_choice, view if over and on_view else None,
                                                   grid=first_event["grid"])
                        values_[inside_state] = inside
                        g = first_event["grid"]
                        where = (f"on a {g[0]}x{g[1]} grid, budget {whole(keep_value)} of {g[0] * g[1]} visual tokens"
                                 if picked["grid"] is not None else
                                 f"on this image's {first_event['visual_tokens']} visual tokens, budget "
                                 f"{whole(keep_value)}% of them")
                        said = f" {event['inspect_note']}." if event.get("inspect_note") else ""
                        # the table again: a program calling /compare_stream gets the last message's values
                        yield {status: f"Done: {len(results)} strategies {where}: cards, table and plots below.{said}",
                               table: table_html(results), **values_}
            except ValueError as e:  # refused after it started (the library checks first, so rarely)
                if not in_page:
                    raise gr.Error(str(e), print_exception=False) from e
                yield {status: f"**Stopped after {len(results)} of {total}:** {e}"}

        def run_compare(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value, model_name,
                        results, over, request: gr.Request, *values):
            forget_skipped_outputs(demo, request)
            page_images.started(session_of(request), image_path)
            yield from stream_updates(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value,
                                      model_name, values, in_page=True, had_results=bool(results), over=over)
            # this runs once the last message has gone: its skips' copies are of no further use (every slot is
            # skipped by most messages, so a run leaves one copy of nearly every output)
            forget_skipped_outputs(demo, request)

        def api_compare_stream(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value, model_name,
                               request: gr.Request, *values):
            """What the Compare button shows, streamed; a refused request raises (its message names the value)."""
            forget_skipped_outputs(demo, request)
            yield from stream_updates(image_path, question_text, chosen, keep_value, max_new_tokens, eta_value,
                                      model_name, values, in_page=False, had_results=False)
            forget_skipped_outputs(demo, request)  # as in run_compare

        cleared = [status, results_state, placeholder, table, view_image, view_note, inside_state, export_file,
                   *messages.values(), *card_outputs, tokens_plot,
                   shares_plot, llm_heat, cls_heat, consistency_plot, kl_plot, relevance, relevance_note]

        def note_image(image_path, request: gr.Request):
            """The image box's change event: a new change number (which clears the page) when the page's results
            are of another image; the same image again (the box repeats its change event): nothing."""
            change = page_images.changed(session_of(request), image_path)
            return gr.skip() if change is None else change

        def clear_results(change, request: gr.Request):
            """A new image: the results of the old one go, unless a comparison (on the new image) has started
            since the change was noted: it lays the page out itself (``PageImages``)."""
            if not page_images.clearing(session_of(request), change):
                return {status: gr.skip()}  # (a dict names its outputs; an empty one would be read as one value)
            return {status: "New image: press **Compare** to compare the strategies on it.", results_state: [],
                    placeholder: PLACEHOLDER, table: table_html([]), view_image: None, view_note: "",
                    inside_state: None, export_file: None,
                    **{m: "" for m in messages.values()},
                    **{x: v for title, picture, details in cards for x, v in ((title, ""), (picture, None),
                                                                               (details, ""))},
                    **{x: None for x in (tokens_plot, shares_plot, llm_heat, cls_heat, consistency_plot, kl_plot,
                                         relevance)}, relevance_note: ""}

        def question_changed(results):
            if not results:
                return {question_msg: ""}
            return {status: "The question changed: press **Compare** to answer it (the results below answer the "
                            "previous question).", question_msg: ""}

        def pick_question(example, results):
            """A question form picked from the list fills the question box (the visitor may edit its colour or
            shape); as for a typed question, the results on the page say they answer the previous one."""
            if not example:
                return {question: gr.skip(), status: gr.skip(), question_msg: gr.skip()}
            return {question: example, **question_changed(results)}

        def redraw_heatmap(results, name, inside, over):
            chosen = next((r for r in results if r["strategy"] == name), None)
            view = inside["view"] if inside and over else None
            return plot_value(plots.llm_attention_figure(chosen, view)) if chosen and chosen.get("trace") else None

        def redraw_heatmaps(results, name, inside, over):
            """Both heatmaps again, over the image or as grids alone (no model call)."""
            if not inside:
                return gr.skip(), gr.skip()
            cls = inside["cls_attention"]
            return (redraw_heatmap(results, name, inside, over),
                    plot_value(plots.cls_attention_figure(cls, inside["grid"], inside["feature_layer"],
                                                          inside["view"] if over else None))
                    if cls is not None else None)

        def api_compare(image, question, strategies, keep, max_new_tokens, params, model):
            """Compare strategies on one image and question; returns one dict per strategy (none first)."""
            try:
                if isinstance(params, str):
                    params = json.loads(params or "{}")
                scope = pool.get(model)
                return scope.compare(image, question, strategies, params=params, max_new_tokens=int(max_new_tokens),
                                     **library_budget(keep, scope.info()["budget"]))
            except json.JSONDecodeError as e:
                raise gr.Error(f"params is not valid JSON ({e.msg} at character {e.pos}): expected a mapping of "
                               'strategy names to mappings of their parameters, e.g. {"fastv": {"ratio": 0.75}}',
                               print_exception=False) from e
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e

        def run_sweep(chosen, budgets_text, n, types, model_name, seed=0, band=False,
                      progress=gr.Progress(track_tqdm=True)):
            try:
                sweep = pool.get(model_name).info()["sweep"]
                if not sweep["available"]:
                    raise ValueError(sweep["reason"])
                budgets = []
                for part in (budgets_text or "").split(","):
                    if part.strip():
                        try:
                            budgets.append(int(part))
                        except ValueError:
                            raise ValueError(f"budget {part.strip()!r} is not a whole number of tokens") from None
                if not types:
                    raise ValueError("pick at least one question type")
                seed = whole(seed) if seed not in (None, "") else 0
                bands = None
                if band:
                    out = pool.get(model_name).teach.random_band(chosen or [], budgets, whole(n), BAND_SEEDS,
                                                                 progress=progress, types=types, seed=seed)
                    rows = out["rows"] + out["random_runs"][0]
                    bands = {"random": plots.band_from_seeds(out["random_runs"])}
                else:
                    rows = pool.get(model_name).sweep(chosen or [], budgets, n=whole(n), types=types, seed=seed)
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e
            fig_budget, fig_tflops = plots.sweep_figures(rows, bands=bands)
            said = f"{whole(n)} questions x {len(rows)} configurations (question set: seed {seed})"
            said += f"; random over {BAND_SEEDS} seeds drawn as a band." if band else "."
            return (said, plot_value(fig_budget), plot_value(fig_tflops),
                    sweep_table(rows), sweep_csv(rows))

        def switch_model(model_name, keep_value):
            try:
                picked = pool.get(model_name).info()
            except ValueError as e:
                return gr.skip(), gr.skip(), f"⚠ {e}", gr.skip()
            settings = slider_settings(picked["budget"])
            if picked["budget"]["unit"] == "count":  # a count carries over to the new grid, clamped to it
                settings["value"] = min(int(keep_value), settings["maximum"])
            return (gr.update(**settings), [picked["n_patches"], picked["grid"]], model_words(model_name, picked),
                    banner_html(model_name, picked))

        model_choice.change(switch_model, [model_choice, keep], [keep, grid_state, model_status, banner],
                            api_visibility="private", concurrency_id="model")
        compare_inputs = [image, question, strategies, keep, max_new, eta, model_choice, results_state, heat_over,
                          *param_inputs]
        in_page = dict(concurrency_id="model", show_progress="minimal", show_progress_on=[status],
                       api_visibility="private")
        click = run.click(run_compare, compare_inputs, all_outputs, scroll_to_output=True, **in_page)
        release = keep.release(run_compare, compare_inputs, all_outputs, trigger_mode="always_last", **in_page)
        # the box repeats its change event (PageImages): note_image answers each in a hidden number, which changes
        # (and clears the page) only for another image; the page's outputs are not touched by the repeats (Gradio
        # 6.31 draws a timer on every output of a pending event, whatever its show_progress says)
        image.change(note_image, image, image_changed, queue=False, show_progress="hidden", api_visibility="private")
        image_changed.change(clear_results, image_changed, cleared, queue=False, show_progress="hidden",
                             api_visibility="private")
        # a comparison waiting or running for the old image: the events that change the image once each cancel it
        # (not the change event, which repeats and can come after a Compare clicked at once: PageImages)
        for changing in (image.upload, image.clear, examples_box.dataset.click if examples_box else None,
                         teach_parts["lesson_open"].click):
            if changing is not None:
                changing(None, None, None, queue=False, show_progress="hidden", api_visibility="private",
                         cancels=[click, release])
        question.input(question_changed, [results_state], [status, question_msg], queue=False,
                       show_progress="hidden", api_visibility="private")
        question_form.input(pick_question, [question_form, results_state], [question, status, question_msg],
                            queue=False, show_progress="hidden", api_visibility="private")
        keep.change(lambda k, g: budget_words(k, *g), [keep, grid_state], keep_words, queue=False, show_progress="hidden",
                    api_visibility="private")
        heat_choice.change(redraw_heatmap, [results_state, heat_choice, inside_state, heat_over], llm_heat,
                           api_visibility="private")
        heat_over.change(redraw_heatmaps, [results_state, heat_choice, inside_state, heat_over], [llm_heat, cls_heat],
                         api_visibility="private", queue=False, show_progress="hidden")
        api_stream_button = gr.Button(visible=False)
        api_stream_button.click(api_compare_stream, [image, question, strategies, keep, max_new, api_eta, model_choice,
                                                     *param_inputs], all_outputs, api_name="compare_stream",
                                concurrency_id="model", show_progress="hidden")
        api_button = gr.Button(visible=False)
        api_button.click(api_compare, [api_image, api_question, strategies, keep, max_new, api_params, model_choice],
                         api_out,
                         api_name="compare", concurrency_id="model")
        sweep_run.click(run_sweep, [sweep_strategies, sweep_budgets, sweep_n, sweep_types, model_choice, sweep_seed,
                                    sweep_band],
                        [sweep_status, sweep_budget_plot, sweep_tflops_plot, sweep_df, sweep_file], api_name="sweep",
                        concurrency_id="sweep")  # its own group: it lets go of the model between questions
    return demo


def range_words(c: dict) -> str:
    """A numeric control's accepted range, from the strategy's own parameter spec (the library refuses anything
    outside it in its own words, shown beside the settings): "1..7", "0 to 1", "above 0, up to 1"."""
    lo, hi = c.get("min"), c.get("max")
    if lo is None or hi is None or c["kind"] not in ("int", "float"):
        return ""
    if c["kind"] == "int":
        return f"{lo}..{hi:,}" if hi >= 10_000 else f"{lo}..{hi}"
    return f"above {lo:g}, up to {hi:g}" if c.get("above") else f"{lo:g} to {hi:g}"


def _control(c: dict, strategy: str, info: dict):
    label = c["label"]
    if range_words(c):
        label += f"; {range_words(c)}"
    if c["kind"] == "choice":
        return gr.Radio(c["choices"], value=c["default"], label=label)
    if c["kind"] == "bool":
        return gr.Checkbox(value=c["default"], label=label)
    if c["kind"] == "text":
        return gr.Textbox(value=c["default"], label=label)
    if c["kind"] == "float":
        return gr.Number(value=c["default"], label=label)
    if c["default"] is None:
        # a text box, not a gr.Number: an empty Number shows (and sends) 0 once its accordion is opened, which the
        # library then refused ("layer=0") for every visitor who only looked at the parameters
        return gr.Textbox(value="", label=label, placeholder=f"empty: the strategy's default for "
                          f"{info['llm_layers']} LLM layers")
    return gr.Number(value=c["default"], label=label, precision=0)


def _inspect_updates(event: dict, results: list[dict], info: dict, tokens_plot, shares_plot, llm_heat, cls_heat,
                     consistency_plot, kl_plot, relevance, relevance_note, heat_choice, view=None, *,
                     grid: list[int]) -> dict:
    """The look-inside plots of one comparison, values only (what has none is emptied, and its CSS hides it);
    ``info``: the picked model's ``Scope.info()``; ``grid``: this comparison's token grid (its ``view`` event's, the
    picked model's, never the default model's); ``view``: the heatmaps drawn over the image."""
    names = [r["strategy"] for r in results]
    default = next((n for n in names if n != "none"), "none")
    chosen = results[names.index(default)]
    out = {tokens_plot: plot_value(plots.tokens_alive_figure(results)),
           shares_plot: plot_value(plots.attention_shares_figure(results)),
           llm_heat: plot_value(plots.llm_attention_figure(chosen, view)), heat_choice: gr.update(choices=names, value=default)}
    out[cls_heat] = (plot_value(plots.cls_attention_figure(event["cls_attention"], grid, info["feature_layer"],
                                                           view))
                     if event["cls_attention"] is not None else None)
    out[consistency_plot] = plot_value(plots.consistency_figure(event["consistency"])) if event["consistency"] else None
    kl, rel = event.get("vtw_kl"), event.get("ivtp_relevance")
    out[kl_plot] = plot_value(plots.vtw_kl_figure(kl)) if kl else None
    out[relevance] = relevance_value(rel)
    out[relevance_note] = ("" if rel is None else
                           f"Relevance of each question word to the image (eq. 5-7); the words with relevance >= tau = "
                           f"{rel['tau']} build the scoring query." + (f" {rel['note']}" if rel.get("note") else ""))
    return out
