"""The lmms-eval plugin (pruning.integrations.lmms_eval) and the prunescope_shapes task, through lmms-eval itself.

lmms-eval comes from the test lock (requirements-dev.txt, docs/install.md), and the project is installed for
its entry point (README, .ci/run). lmms-eval runs in subprocesses (``python -m lmms_eval``, as documented), offline,
on the embedded model; a few calls go to the plugin class directly (the same object lmms-eval builds).
"""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("lmms_eval") is None:
    raise ImportError("lmms-eval is not installed: pip install --no-deps -r requirements-dev.txt && "
                      "pip install --no-deps -e . (README, 'Run the tests')")

from pruning.bench import load_samples, sample_record
from pruning.engine import Engine
from pruning.integrations import cli as integrations_cli
from pruning.integrations.shapes_task import METRICS, choices_for, heldout_rows, question_types
from pruning.model import DEFAULT_MODEL_DIR, load_model
from pruning.strategies import get_strategy

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 9  # odd: with 2 processes lmms-eval pads rank 1 with a copy, which must not count
KEEP = 36


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    assert integrations_cli.main(["export-task", "--out", str(out), "--n", "25"]) == 0
    return out


@pytest.fixture(scope="module")
def lmms_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(cache),
               HF_DATASETS_CACHE=str(cache / "datasets"), TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    return env


def lmms_command(model_args: str, task: str, task_dir: Path, out: Path, limit: int = LIMIT) -> list[str]:
    return ["-m", "lmms_eval", "--model", "prunescope", "--model_args", model_args, "--tasks", task,
            "--include_path", str(task_dir), "--limit", str(limit), "--output_path", str(out), "--log_samples",
            "--verbosity", "WARNING"]


def run(cmd: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def read_run(out: Path, task: str) -> tuple[dict, list[dict]]:
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob(f"*_samples_{task}.jsonl"))
    assert len(results) == 1 and len(samples) == 1, f"expected one results and one samples file under {out}"
    rows = [json.loads(line) for line in samples[0].read_text().splitlines() if line.strip()]
    return json.loads(results[0].read_text()), sorted(rows, key=lambda r: r["doc_id"])


_runs, _started = {}, {}
VTC = f"strategy=vtc-cls,keep={KEEP}"
# the lmms-eval runs each test reads, (model_args, task, processes); a run is mostly lmms-eval's own start-up (~12 s
# of one core), so those the session's selected tests need are started together, two at a time (the test process
# waits meanwhile: two cores, two runs), and each test takes its own when it is done
RUNS_READ_BY = {
    "test_lmms_eval_answers_equal_the_bench[none]": [("strategy=none", "prunescope_shapes", 1)],
    "test_lmms_eval_answers_equal_the_bench[vtc-cls]": [(VTC, "prunescope_shapes", 1)],
    "test_lmms_eval_answers_equal_the_bench[fastv]": [(f"strategy=fastv,keep={KEEP}", "prunescope_shapes", 1)],
    "test_two_processes_equal_one": [(VTC, "prunescope_shapes", 1), (VTC, "prunescope_shapes", 2)],
    "test_results_table": [(VTC, "prunescope_shapes", 1)],
    "test_multiple_choice_task_runs": [(VTC, "prunescope_shapes_mc", 1)],
    "test_bad_model_args_fail_through_lmms_eval": [("strategy=nope,keep=36", "prunescope_shapes", 1)],
}


@pytest.fixture(scope="module", autouse=True)  # the runs start with the module's first test, beside the tests before them
def lmms_run(request, task_dir, lmms_env, tmp_path_factory):
    """One lmms-eval run per (model_args, task, processes), made once per module: (results, samples in document
    order, output directory, what it printed); ``lmms_run.finished(...)``: a run that may fail, (output directory,
    the finished process). The runs the selected tests read start together (``RUNS_READ_BY``)."""
    def start(key):
        model_args, task, processes = key
        out = tmp_path_factory.mktemp("lmms")
        # each run its own datasets cache: runs side by side never share one
        env = dict(lmms_env, HF_DATASETS_CACHE=str(tmp_path_factory.mktemp("lmms-datasets")))

        def job():
            cmd = lmms_command(model_args, task, task_dir, out)
            if processes == 1:
                return run([sys.executable, *cmd], env)
            # on CPU, accelerate joins the processes over gloo when told the run is on CPU
            return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                        "--master_port", str(_free_port()), *cmd], dict(env, ACCELERATE_USE_CPU="1"))
        return out, pool.submit(job)

    pool = ThreadPoolExecutor(2)
    selected = [item.name for item in request.session.items if item.module is request.module]
    for name in selected:
        for key in RUNS_READ_BY.get(name, []):
            if key not in _runs and key not in _started:
                _started[key] = start(key)

    def finished(key):
        """(output directory, the finished process) of the run ``key``, started now if it was not."""
        out, job = _started.pop(key) if key in _started else start(key)
        return out, job.result()

    def get(model_args: str, task: str = "prunescope_shapes", processes: int = 1):
        key = (model_args, task, processes)
        if key not in _runs:
            out, proc = finished(key)
            said = proc.stdout + proc.stderr
            assert proc.returncode == 0 and "Traceback" not in said, said
            _runs[key] = (*read_run(out, task), out, said)
        return _runs[key]

    get.finished = lambda model_args, task="prunescope_shapes", processes=1: finished((model_args, task, processes))

    yield get
    pool.shutdown(wait=True)


def _free_port() -> int:
    from benchmarks.serving import free_port

    return free_port()


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model(str(DEFAULT_MODEL_DIR), device="cpu"))


# ------------------------------------------------------------------ installation and registration
def test_entry_point_resolves_to_the_plugin():
    eps = [ep for ep in importlib.metadata.entry_points(group="lmms_eval.models") if ep.name == "prunescope"]
    assert len(eps) == 1 and eps[0].value == "pruning.integrations.lmms_eval:manifests"
    from lmms_eval.models import get_model, list_available_models

    from pruning.integrations.lmms_eval import PruneScopeLMM

    assert "prunescope" in list_available_models()
    assert get_model("prunescope") is PruneScopeLMM


def test_plugin_imported_first_still_registers(lmms_env):
    """Importing the plugin before lmms-eval's model registry (a script that builds the model itself) must not
    break the registry's entry-point loading."""
    code = ("import pruning.integrations.lmms_eval as plugin\n"
            "from lmms_eval.models import get_model\n"
            "assert get_model('prunescope') is plugin.PruneScopeLMM\n"
            "print('ok')")
    proc = run([sys.executable, "-c", code], lmms_env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
    assert "Failed to load model entry-point manifests" not in proc.stdout + proc.stderr


def test_core_still_works_with_the_eval_extra_installed(lmms_env):
    """lmms-eval's own requirements would pull a torchvision that does not match this torch (and timm, which breaks
    the accelerate command without it): the extra leaves neither behind, and the core imports and runs."""
    code = ("import importlib.util, pruning.engine, pruning.compare, app.ui\n"
            "from transformers import AutoProcessor, LlavaForConditionalGeneration\n"
            "for name in ('torchvision', 'timm'):\n"
            "    if importlib.util.find_spec(name) is not None:\n"
            "        __import__(name)  # present: it must import with this torch\n"
            "import lmms_eval.evaluator\n"
            "print('ok')")
    accelerate = Path(sys.executable).with_name("accelerate")
    with ThreadPoolExecutor(2) as pool:  # two independent start-ups, side by side
        imports, env = pool.map(lambda cmd: run(cmd, lmms_env), [[sys.executable, "-c", code], [str(accelerate), "env"]])
    assert imports.returncode == 0 and imports.stdout.strip().endswith("ok"), imports.stderr
    assert env.returncode == 0 and "`Accelerate` version:" in env.stdout, env.stderr


# ------------------------------------------------------------------ the task
def test_exported_task_files(task_dir):
    rows = [json.loads(line) for line in (task_dir / "prunescope_shapes.jsonl").read_text().splitlines()]
    assert len(rows) == 25 and set(METRICS[1:]) == set(question_types())
    assert [r["type"] for r in rows[:5]] == list(question_types())  # round-robin: --limit 5 holds every type
    assert all(r["answer"] in r["choices"] == choices_for(r["type"], r["answer"]) for r in rows)
    # the set python -m pruning bench --n 25 draws, the same images pixel for pixel
    bench = {(s.question, s.answer, s.image.tobytes()) for s in load_samples("shapes", 25)}
    exported = {(s.question, s.answer, s.image.tobytes())
                for s in load_samples(str(task_dir / "prunescope_shapes.jsonl"), 25)}
    assert exported == bench
    assert {r["scene_seed"] for r in rows} == {r["scene"].seed for r in heldout_rows(25)}
    for name in ("prunescope_shapes.yaml", "prunescope_shapes_mc.yaml", "utils.py"):
        assert (task_dir / name).is_file()


# ------------------------------------------------------------------ answers, cost, data-parallel
@pytest.mark.parametrize("strategy", ["none", "vtc-cls", "fastv"])
def test_lmms_eval_answers_equal_the_bench(strategy, lmms_run, task_dir, engine):
    args = "strategy=none" if strategy == "none" else f"strategy={strategy},keep={KEEP}"
    results, samples, _, _ = lmms_run(args)
    questions = load_samples(str(task_dir / "prunescope_shapes.jsonl"), LIMIT)
    params = {"name": strategy} if strategy == "none" else {"name": strategy, "keep": KEEP}
    expected = [sample_record(engine, q, get_strategy(**params)) for q in questions]
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    assert [s["filtered_resps"] for s in samples] == [e["answer"] for e in expected]
    for s, e in zip(samples, expected):
        counts = s["token_counts"][0]
        for key in ("visual_tokens", "visual_tokens_kept", "visual_tokens_last_layer", "prompt_tokens"):
            assert counts[key] == e[key], key
        assert counts["prefill_tflops"] == pytest.approx(e["prefill_tflops"], rel=1e-9)
        assert counts["prefill_ms"] > 0 and counts["output_tokens"] >= 1
    if strategy == "vtc-cls":
        assert all(s["token_counts"][0]["visual_tokens_kept"] == KEEP for s in samples)
    if strategy == "fastv":  # all 144 enter the LLM, KEEP are left in the last layer
        assert all(s["token_counts"][0]["visual_tokens_kept"] == 144 for s in samples)
        assert all(s["token_counts"][0]["visual_tokens_last_layer"] == KEEP for s in samples)
    # the results file: accuracy overall and per type as the bench computes it, the cost next to it
    task = results["results"]["prunescope_shapes"]
    hits = [e["hit"] for e in expected]
    assert task["accuracy,none"] == pytest.approx(sum(hits) / len(hits))
    for t in question_types():
        mine = [e["hit"] for e, q in zip(expected, questions) if q.type == t]
        assert task[f"{t},none"] == pytest.approx(sum(mine) / len(mine))
    throughput = results["throughput"]
    assert throughput["avg_visual_tokens_kept"] == pytest.approx(sum(e["visual_tokens_kept"] for e in expected) / LIMIT)
    assert throughput["avg_prefill_tflops"] == pytest.approx(sum(e["prefill_tflops"] for e in expected) / LIMIT)
    assert results["config"]["model_args"] == args


def test_two_processes_equal_one(lmms_run):
    args = f"strategy=vtc-cls,keep={KEEP}"
    one, one_samples, _, _ = lmms_run(args)
    two, two_samples, _, said = lmms_run(args, processes=2)
    assert [s["doc_id"] for s in two_samples] == list(range(LIMIT))
    first = (LIMIT + 1) // 2  # rank 0 takes documents 0, 2, 4, ...: its progress bar (the only one) counts those
    assert f"prunescope: 100%|██████████| {first}/{first} [" in said and f"{LIMIT}/{LIMIT} [" not in said

    def strip(s):
        counts = {k: v for k, v in s["token_counts"][0].items() if k != "prefill_ms"}
        return s["doc_id"], s["filtered_resps"], s["target"], counts, s["accuracy"]

    assert [strip(s) for s in two_samples] == [strip(s) for s in one_samples]
    assert two["results"] == one["results"]
    for key in ("avg_visual_tokens_kept", "avg_visual_tokens_last_layer", "avg_prefill_tflops", "total_gen_tokens"):
        assert two["throughput"][key] == pytest.approx(one["throughput"][key])  # both ranks' requests, no padding


def test_results_table(lmms_run, capsys):
    _, _, out, _ = lmms_run(f"strategy=vtc-cls,keep={KEEP}")
    assert integrations_cli.main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"| vtc-cls | {KEEP} |  | prunescope_shapes |" in table and "tokens into LLM" in table
    assert integrations_cli.main(["table", str(out / "nothing-here")]) == 2


# ------------------------------------------------------------------ loglikelihood
def _instance(request_type, arguments, doc_id=0):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=request_type, arguments=arguments, idx=0,
                    metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _plugin(**args):
    from pruning.integrations.lmms_eval import PruneScopeLMM

    return PruneScopeLMM(threads=torch.get_num_threads(), **args)  # keep the test process's thread count


def test_loglikelihood_matches_transformers_forward():
    """Strategy none: the continuation's mean negative log-likelihood is the one transformers' own forward gives on
    the prompt + continuation, and greedy is whether argmax reproduces it."""
    sample = load_samples("shapes", 5)[3]  # a count question
    lm = _plugin(strategy="none")
    lm.task_dict = {"t": {"test": [{"image": sample.image}]}}
    reqs = [_instance("loglikelihood", (sample.question, f" {c}", lambda d: [d["image"]], 0, "t", "test"))
            for c in (sample.answer, "five" if sample.answer != "five" else "one")]
    out = lm.loglikelihood(reqs)
    engine = lm.engine
    processor = engine.lm.processor
    prompt = engine.lm.prompt(sample.question)
    for (nll, greedy), c in zip([o.text for o in out], (sample.answer, "five" if sample.answer != "five" else "one")):
        head = processor(images=sample.image, text=prompt, return_tensors="pt")
        whole = processor(images=sample.image, text=prompt + f" {c}", return_tensors="pt")
        n = head["input_ids"].shape[1]
        with torch.no_grad():
            logits = engine.model(**whole).logits[0].float()
        target = whole["input_ids"][0, n:]
        logp = logits[n - 1:-1].log_softmax(-1).gather(1, target[:, None])
        assert nll == pytest.approx(float(-logp.mean()), abs=1e-4)
        assert greedy == bool((logits[n - 1:-1].argmax(-1) == target).all())
    assert out[0].text[1] is True and out[0].text[0] < out[1].text[0]  # the right answer is greedy and more likely
    assert out[0].token_counts.to_dict()["visual_tokens_kept"] == 144


def test_loglikelihood_agrees_with_generation_under_pruning(engine):
    """vtc-cls before the LLM, vtw and fastv inside it, ivtp (scored by the question): the answer the pruned model
    generates is, scored by loglikelihood with the same strategy, what greedy decoding produces."""
    questions = load_samples("shapes", 5)
    for args in ({"strategy": "vtc-cls", "keep": KEEP}, {"strategy": "vtw", "layer": 3},
                 {"strategy": "fastv", "keep": KEEP}, {"strategy": "ivtp", "keep": KEEP}):
        lm = _plugin(**args)
        lm.task_dict = {"t": {"test": [{"image": q.image} for q in questions]}}
        params = {"name": args["strategy"], **{k: v for k, v in args.items() if k != "strategy"}}
        reqs = []
        for i, q in enumerate(questions):
            answer = sample_record(engine, q, get_strategy(**params))["answer"]
            reqs.append(_instance("loglikelihood", (q.question, f" {answer}", lambda d: [d["image"]], i, "t", "test"), i))
        assert all(o.text[1] for o in lm.loglikelihood(reqs)), args


def test_engine_score_teacher_forces_what_decode_generates(engine):
    """Engine.score after a FastV prefill: the tokens greedy decoding produced are greedy under scoring, the first
    log-probability is the prefill logits', and a token decode did not pick is scored lower and not greedy."""
    from pruning.bench import timed_prefill

    q = load_samples("shapes", 5)[2]
    strategy = get_strategy("fastv", keep=KEEP)
    prepared = engine.prepare(q.image, q.question)
    state, _ = timed_prefill(engine, prepared, strategy)
    first = state.logits.log_softmax(-1)
    tokens = engine.decode(state, 4)
    state, _ = timed_prefill(engine, prepared, strategy)  # decode grew the cache: a fresh prefill to score
    logprobs, greedy = engine.score(state, tokens)
    assert greedy and len(logprobs) == len(tokens)
    assert logprobs[0] == pytest.approx(float(first[tokens[0]]), abs=1e-5)
    other = int(first.argsort()[-2])  # the second most likely first token
    state, _ = timed_prefill(engine, prepared, strategy)
    worse, greedy = engine.score(state, [other])
    assert not greedy and worse[0] < logprobs[0]
    with pytest.raises(ValueError, match="at least one token"):
        engine.score(state, [])


def test_engine_decode_stops_when_told(engine):
    q = load_samples("shapes", 5)[0]
    prepared = engine.prepare(q.image, q.question)
    from pruning.bench import timed_prefill

    none = get_strategy("none")
    state, _ = timed_prefill(engine, prepared, none)
    seen = []
    free = engine.decode(state, 8)
    assert len(free) >= 2, "the answer has at least two tokens (the last one EOS)"
    state, _ = timed_prefill(engine, prepared, none)
    tokens = engine.decode(state, 8, stop=lambda toks: seen.append(list(toks)) or len(toks) >= 1)
    assert tokens == free[:1] and seen == [free[:1]]


def test_multiple_choice_task_runs(lmms_run, task_dir):
    results, samples, _, _ = lmms_run(f"strategy=vtc-cls,keep={KEEP}", task="prunescope_shapes_mc")
    docs = [json.loads(line) for line in (task_dir / "prunescope_shapes.jsonl").read_text().splitlines()]
    acc = results["results"]["prunescope_shapes_mc"]["acc,none"]
    for s in samples:  # each choice scored: (mean NLL, greedy); the smallest NLL is the prediction
        doc = docs[s["doc_id"]]
        nlls = [float(nll) for nll, _ in s["filtered_resps"]]
        assert len(nlls) == len(doc["choices"]) and all(v > 0 for v in nlls)
        assert s["acc"] == float(doc["choices"][nlls.index(min(nlls))] == doc["answer"])
        assert all(c["visual_tokens_kept"] == KEEP for c in s["token_counts"])
    assert acc == pytest.approx(sum(s["acc"] for s in samples) / LIMIT)


# ------------------------------------------------------------------ bad input
def test_bad_model_args_fail_through_lmms_eval(lmms_run):
    out, proc = lmms_run.finished("strategy=nope,keep=36")
    said = proc.stdout + proc.stderr
    assert "unknown strategy 'nope'; valid strategies: cdpruner, dart, divprune, evit, fastv," in said
    assert not list(out.rglob("*_results.json"))


@pytest.mark.parametrize("args, message", [
    ({"strategy": "vtc-cls", "keep": 1000}, r"keep=1000 is out of range: expected 1\.\.144"),
    ({"strategy": "vtc-cls", "keep": 0}, r"keep=0 is out of range"),
    ({"strategy": "vtc-cls", "keep": 2.5}, r"keep=2\.5: expected a whole number"),
    ({"strategy": "fastv", "keep": 36, "layer": 8}, r"layer=8: stage 'llm' needs 1 <= layer < 8"),
    ({"strategy": "vtw", "keep": 36}, r"keep=36 with strategy 'vtw', which keeps no budget"),
    ({"strategy": "vtc-cls", "kep": 36}, r"kep: neither a model option .* nor a parameter of strategy 'vtc-cls'"),
    ({"strategy": "vtc-cls", "positions": "sideways"}, r"positions='sideways'"),
    ({"strategy": "none", "batch_size": 4}, r"batch_size=4: the engine answers one image and question at a time"),
])
def test_bad_model_args_name_the_problem(args, message):
    from lmms_eval.api.model import lmms  # noqa: F401  (lmms-eval builds the model from the arg string like this)

    from pruning.integrations.lmms_eval import PruneScopeLMM

    text = ",".join(f"{k}={v}" for k, v in args.items() if k != "batch_size")
    extra = {"batch_size": args["batch_size"]} if "batch_size" in args else {}
    with pytest.raises(ValueError, match=message):
        PruneScopeLMM.create_from_arg_string(text + f",threads={torch.get_num_threads()}", extra)


def test_generation_settings_and_stop_strings():
    from pruning.integrations.lmms_eval import _generation_settings, cut_at_stop

    s = _generation_settings({"until": ["\n", "ASSISTANT"], "max_new_tokens": 16, "temperature": 0, "top_p": 1.0,
                              "num_beams": 1, "do_sample": False}, "doc")
    assert s["max_new_tokens"] == 16 and s["temperature"] == 0 and s["until"] == ["\n", "ASSISTANT"]
    assert _generation_settings({"temperature": 0.7, "do_sample": True, "top_p": 0.9}, "doc")["temperature"] == 0.7
    assert _generation_settings({"temperature": 0.7, "do_sample": False}, "doc")["temperature"] == 0.0
    assert _generation_settings({}, "doc")["max_new_tokens"] == 1024
    with pytest.raises(ValueError, match="num_beams=4: beam search is not supported"):
        _generation_settings({"num_beams": 4}, "doc")
    with pytest.raises(ValueError, match="until=3"):
        _generation_settings({"until": 3}, "doc")
    assert cut_at_stop("red\nblue ASSISTANT", ["ASSISTANT", "\n"]) == "red"
    assert cut_at_stop("red", ["", "x"]) == "red"


def test_one_image_per_document():
    from PIL import Image

    from pruning.integrations.lmms_eval import _one_image

    img = Image.new("RGB", (8, 8))
    assert _one_image([img], "d").size == (8, 8)
    with pytest.raises(ValueError, match="gives 2 visual"):
        _one_image([img, img], "d")
    with pytest.raises(ValueError, match=r"gives 1 visual\(s\) \(str\)"):
        _one_image(["clip.mp4"], "d")
    with pytest.raises(ValueError, match="gives 0 visual"):
        _one_image([], "d")


# ------------------------------------------------------------------ the families beyond LLaVA-1.5 (issue 27)
@pytest.fixture(scope="module")
def family_checkpoints(family_dirs):
    return {name: str(family_dirs[name]) for name in ("qwen2.5-vl", "llava-next")}


def _hub_cache(tmp_path, checkpoint: str, repo: str) -> Path:
    """An offline hub cache holding ``checkpoint`` as ``repo`` (the layout huggingface_hub reads: refs/main names a
    snapshot), so loading by hub id is tested without a network."""
    import shutil

    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    shutil.copytree(checkpoint, folder / "snapshots" / ("0" * 40))
    return tmp_path / "hub"


@pytest.mark.parametrize("family", ["qwen2.5-vl", "llava-next"])
def test_generate_on_a_family_checkpoint_equals_the_engine(family, family_checkpoints, family_engines, tmp_path,
                                                           monkeypatch):
    """The plugin's generate_until on a tiny Qwen2.5-VL (a dynamic grid) and LLaVA-NeXT (anyres): loaded by path, and
    by hub id from an offline hub cache, through the same load_model; a count budget larger than some images'
    tokens is accepted (it keeps them all there) and the answers and kept counts are the engine's own."""
    from PIL import Image

    images = [Image.fromarray(np.random.RandomState(i).randint(0, 255, (h, w, 3), dtype=np.uint8))
              for i, (h, w) in enumerate(((64, 80), (48, 48), (30, 100)))]
    question = "What colour is the biggest shape?"
    path = family_checkpoints[family]
    repo = f"prunescope-test/tiny-{family}"
    cache = _hub_cache(tmp_path, path, repo)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = family_engines(family)  # the same checkpoint (conftest's), loaded by load_model with sdpa
    strategy = get_strategy("random", keep=60)
    for source in (path, repo):
        lm = _plugin(pretrained=source, strategy="random", keep=60, device="cpu")
        assert type(lm.engine.model).__name__ == type(engine.model).__name__
        lm.task_dict = {"t": {"test": [{"image": im} for im in images]}}
        reqs = [_instance("generate_until", (question, {"max_new_tokens": 3, "until": []}, lambda d: [d["image"]],
                                             i, "t", "test"), i) for i in range(len(images))]
        out = lm.generate_until(reqs)
        for i, (o, im) in enumerate(zip(out, images)):
            answer, state = engine.generate(im, question, strategy, max_new_tokens=3)
            n = engine.prepare(im, question).n_image
            assert o.text == answer.strip(), (source, i)
            counts = o.token_counts.to_dict()
            assert counts["visual_tokens"] == n
            assert counts["visual_tokens_kept"] == min(60, n) == len(state.kept_before)
        assert len({o.token_counts.to_dict()["visual_tokens"] for o in out}) > 1  # the count follows the image
