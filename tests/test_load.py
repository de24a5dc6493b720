"""Many visitors at once (issue 17): 16 concurrent ``/compare`` requests against the served app (``app_server``), one
gradio_client per visitor, 16 different held-out scenes and questions, several strategies. All return, none is lost,
and each equals (answer, kept, kept_final per strategy) the same request made alone afterwards: no visitor gets
another's image, kept set or answer. Bounded: every request has a timeout, and the whole runs in about a minute.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from pruning.shapes.world import HELD_OUT_SEED, heldout_questions

VISITORS = 16
KEEP = 24  # of 144 patches
STRATEGY_SETS = [["vtc-cls", "fastv"], ["tome", "random"], ["vtw", "pooling"], ["evit", "kmeans"]]
TIMEOUT_S = 240  # per request, queue wait included


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    """16 (image path, question, strategies): held-out scenes the model never saw, away from the examples' seeds."""
    d = tmp_path_factory.mktemp("load")
    out = []
    for i, (scene, question) in enumerate(heldout_questions(VISITORS, seed0=HELD_OUT_SEED + 700_000)):
        path = d / f"scene-{i:02d}.png"
        scene.image.save(path)
        out.append((str(path), question.text, STRATEGY_SETS[i % len(STRATEGY_SETS)]))
    assert len({open(p, "rb").read() for p, _, _ in out}) == VISITORS, "16 different images"
    return out


def _ask(client, image, question, strategies):
    return client.predict(image=handle_file(image), question=question, strategies=strategies, keep=KEEP,
                          max_new_tokens=2, params={}, api_name="/compare")


def _key(results):
    return [(r["strategy"], r["answer"], r["kept"], r["kept_final"]) for r in results]


def test_sixteen_concurrent_visitors_get_their_own_results(app_server, requests, one_timed_run):
    clients = [Client(app_server.url, verbose=False) for _ in range(VISITORS)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(VISITORS) as pool:
        jobs = [pool.submit(_ask, c, *req) for c, req in zip(clients, requests)]
        together = [job.result(timeout=TIMEOUT_S) for job in jobs]
    t_together = time.perf_counter() - t0
    assert len(together) == VISITORS and all(together), "every request returned"

    t0 = time.perf_counter()
    alone = [_ask(clients[0], *req) for req in requests]
    t_alone = time.perf_counter() - t0
    for i, (req, got, ref) in enumerate(zip(requests, together, alone)):
        assert [r["strategy"] for r in got] == ["none", *req[2]], f"visitor {i}: its own strategies"
        assert _key(got) == _key(ref), f"visitor {i} ({req[1]!r}): concurrent result differs from the same request alone"
    distinct_views = {tuple(r["kept"]) for results in together for r in results if r["strategy"] == "vtc-cls"}
    assert len(distinct_views) > 1, "different images give different kept sets"
    print(f"\n{VISITORS} concurrent /compare requests: {t_together:.1f} s; the same {VISITORS} one by one: "
          f"{t_alone:.1f} s")


def test_a_visitors_session_does_not_grow_with_streamed_comparisons(app_server, requests, one_timed_run):
    """The Compare button's stream (``/compare_stream``) three times in one session: Gradio's per-session config
    keeps no copy of a component from an earlier run (``app.ui.forget_skipped_outputs``; without it, ~18 entries
    and their plots and images more per run)."""
    client = Client(app_server.url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare_stream"]
    unset = {p["parameter_name"]: None for p in api["parameters"] if not p["parameter_has_default"]}
    demo, sizes = app_server.demo, []
    for image, question, _ in requests[:3]:
        status = client.predict(image_path=handle_file(image), question_text=question, chosen=["vtc-cls", "fastv"],
                                keep_value=KEEP, max_new_tokens=2, api_name="/compare_stream", **unset)[0]
        assert status.startswith("Done:")
        session = demo.state_holder.session_data[client.session_hash]
        sizes.append(len(session.blocks_config.blocks))
    assert sizes[1] == sizes[2] and sizes[2] - len(demo.blocks) <= 20, sizes
