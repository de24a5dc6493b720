"""How fast the app feels: start-up, Compare, the budget slider and one Sweep, measured as a visitor sees them.

    .venv/bin/python -m benchmarks.app_latency [--repeats 5] [--sweep-n 40] [--budgets 48,32,16]

Starts the app in-process (``app.make_demo`` + ``app.launch``, embedded model) on a free loopback port and
drives it with headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright; never Playwright's own
browser download). Measured, each as wall-clock time seen from the browser side:

- start-up: from the start of ``make_demo`` until the page is served and the Compare button is visible;
- Compare with the default strategies (none, vtc-cls, fastv, vtw): click -> the first card's overlay visible,
  and click -> the whole comparison (status says Done and the consistency plot is drawn);
- the budget slider: a mouse click on its track (pointerup fires ``release``) -> every card shows the new
  budget, and -> the whole comparison again;
- one Sweep through the ``/sweep`` API (gradio_client): strategies x budgets x questions.

Each Compare repeat starts from a freshly loaded page; a first round (cold: first requests after start-up) is
printed apart and left out of the medians. Goals: first card < 1 s, full < 3 s, slider re-run < 1 s. The browser
and the app share this machine's CPUs, so on a small machine the browser's rendering slows the app's model runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.serving import free_port, load_app_main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SWEEP_STRATEGIES = ["vtc-cls", "fastv", "vtw", "tome"]
GOALS = {"click -> first card": 1.0, "click -> full comparison": 3.0, "slider release -> cards updated": 1.0}
TIMEOUT_MS = 300_000


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        sys.exit("error: Chromium is not installed (apt-get install chromium); Playwright's own download is not used")
    return path


# ------------------------------------------------------------------ what the browser waits for

DONE_AND_PLOTTED = """() => {
  const s = document.querySelector('#ps-status');
  return s && s.innerText.includes('Done:') && document.querySelector('#ps-plot-consistency .js-plotly-plot');
}"""

# the default strategies' cards after a re-run at budget k: vtc-cls keeps k, fastv keeps k in its last layer,
# and the status has moved past the last card (all strategies done, or done altogether)
CARDS_AT = """(k) => {
  const text = (i) => { const c = document.querySelector('#ps-card-' + i); return c ? c.innerText : ''; };
  const s = document.querySelector('#ps-status');
  const status = s ? s.innerText : '';
  return text(1).includes(k + ' of 144 visual tokens enter the LLM')
      && text(2).includes('144 of 144 visual tokens enter the LLM, ' + k + ' reach its last layer')
      && (status.includes('All strategies done') || status.includes('Done:'));
}"""


# Questions about the first example's scene: each round asks a different one, so that its first Compare is
# never an identical request the app has already answered (the app reuses those; the slider re-run may).
QUESTIONS = ["What colour is the triangle?", "What colour is the square?", "What colour is the circle?",
             "How many objects are there?", "Is there a red triangle?", "Is there a blue circle?",
             "What shape is the purple object?", "What shape is the cyan object?", "Is there a green cross?",
             "Is the red triangle left or right of the purple circle?", "Is the cyan square above or below the purple circle?"]


def compare_round(page, url: str, question: str) -> dict:
    """One visitor: a fresh page, a question not asked before, Compare with the defaults, then one release of
    the budget slider."""
    page.goto(url)
    page.wait_for_selector("#ps-run", state="visible")
    page.fill("#ps-question textarea", question)
    out = {}
    t0 = time.perf_counter()
    page.click("#ps-run")
    page.wait_for_selector("#ps-card-0 .ps-overlay img", state="visible")
    out["click -> first card"] = time.perf_counter() - t0
    page.wait_for_function(DONE_AND_PLOTTED)
    out["click -> full comparison"] = time.perf_counter() - t0

    track = page.locator("#ps-keep input[type=range]")
    box = track.bounding_box()
    t0 = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    keep = int(track.input_value())
    page.wait_for_function(CARDS_AT, arg=keep)
    out["slider release -> cards updated"] = time.perf_counter() - t0
    page.wait_for_function(DONE_AND_PLOTTED)  # the status has said the re-run's words since the cards updated
    out["slider release -> full comparison"] = time.perf_counter() - t0
    return out


def fmt(seconds: float) -> str:
    return f"{seconds:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Compare + slider rounds after the cold one (5)")
    parser.add_argument("--sweep-n", type=int, default=40, help="questions in the Sweep (40; 0 skips it)")
    parser.add_argument("--budgets", default="48,32,16", help="the Sweep's budgets (48,32,16)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    executable = chromium_path()

    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    main_module = load_app_main()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)

        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        t0 = time.perf_counter()
        demo = main_module.make_demo()
        t_built = time.perf_counter()
        main_module.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        t_launched = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#ps-run", state="visible")
        t_ready = time.perf_counter()
        try:
            import torch

            threads = torch.get_num_threads()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if args.repeats + 1 > len(QUESTIONS):
                sys.exit(f"error: --repeats {args.repeats}: at most {len(QUESTIONS) - 1} (one new question a round)")
            cold = compare_round(page, url, QUESTIONS[0])
            rounds = [compare_round(page, url, QUESTIONS[i + 1]) for i in range(args.repeats)]

            sweep = None
            if args.sweep_n > 0:
                client = Client(url, verbose=False)
                ts = time.perf_counter()
                result = client.predict(chosen=SWEEP_STRATEGIES, budgets_text=args.budgets, n=args.sweep_n,
                                        types=["colour", "shape", "exist", "count", "position"], api_name="/sweep")
                sweep = (time.perf_counter() - ts, result[0])
        finally:
            browser.close()
            demo.close()

    load = os.getloadavg()
    print(f"PruneScope app latency: embedded model on {device}, torch threads {threads}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} (browser and app on this machine)")
    print(f"start-up: make_demo {fmt(t_built - t0)} s + launch {fmt(t_launched - t_built)} s + page served and "
          f"Compare visible {fmt(t_ready - t_launched)} s = {fmt(t_ready - t0)} s")
    print()
    header = f"{'measure (seconds)':36} {'goal':>6} {'cold':>6} {'median':>7} {'min':>6} {'max':>6}  met"
    print(header)
    print("-" * len(header))
    for key in cold:
        values = [r[key] for r in rounds]
        goal = GOALS.get(key)
        median = statistics.median(values) if values else float("nan")
        met = "" if goal is None or not values else ("yes" if median < goal else "no")
        print(f"{key:36} {('< ' + str(goal)) if goal else '':>6} {fmt(cold[key]):>6} {fmt(median):>7} "
              f"{fmt(min(values)) if values else '':>6} {fmt(max(values)) if values else '':>6}  {met}")
    print(f"({args.repeats} rounds after the cold one; each from a freshly loaded page with a question not asked "
          "before; default strategies none, vtc-cls, fastv, vtw at budget 72, the slider released at about 36: "
          "every strategy is timed again on the re-run; none's and vtw's attention traces, which ignore the "
          "budget, are reused)")
    if sweep is not None:
        said = re.search(r"x (\d+) configurations", sweep[1])
        n_configs = int(said.group(1)) if said else len(SWEEP_STRATEGIES) * len(args.budgets.split(","))
        print()
        print(f"Sweep via /sweep: {len(SWEEP_STRATEGIES)} strategies ({', '.join(SWEEP_STRATEGIES)}) x budgets "
              f"{args.budgets} x {args.sweep_n} questions: {fmt(sweep[0])} s "
              f"({1000 * sweep[0] / (n_configs * args.sweep_n):.1f} ms per question and configuration, none and "
              f"budget-free vtw counted once; "
              f"app says: {sweep[1].strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
