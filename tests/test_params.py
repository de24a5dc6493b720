"""Issue 24 (library side): a request's parameters, its question and a sweep's size are checked before any work.

- Every parameter of every registered strategy is enumerated from its ``Spec`` (``pruning.strategies.base``: the
  one source of its type and range, which ``strategy_controls`` also reads), so a new strategy is covered without
  editing this file: accepted at its bounds, refused just outside them and for a wrong type, each refusal starting
  with the strategy, the parameter and the value (``app.ui.refused_input`` routes it to the settings).
- ``check_params``: ``params`` as a whole (a mapping of known strategies to mappings of known parameters).
- The question: its length counted in characters before anything tokenizes it (a tripwire on the engine and on the
  model's lock proves no model work started), lone surrogates removed with a note.
- The sweep's ceiling (configurations x questions x new tokens), refused before its questions are drawn.
"""

import pytest
import torch

from app.ui import refused_input
from pruning import bench
from pruning.compare import (SWEEP_CEILING, SWEEP_NEW_TOKENS, Scope, check_strategy_names, check_sweep_size,
                             strategy_controls)
from pruning.model import MAX_QUESTION_CHARS, check_question, clean_question
from pruning.strategies import available, get_strategy
from pruning.strategies.base import _REGISTRY, check_params, parameter_specs

# (strategy, parameter) -> why its own rule refuses a value its Spec accepts (the cases below leave it out)
OWN_RULES = {("vtw", "keep"): "vtw withdraws every token: keep is 0 or unset"}


def _cases():
    """(strategy, parameter, Spec, default) for every parameter of every registered strategy."""
    return [(name, p, spec, default) for name in available()
            for p, (spec, default) in parameter_specs(_REGISTRY[name]).items()]


CASES = _cases()
IDS = [f"{n}.{p}" for n, p, _, _ in CASES]


def _accepted(name, param, value):
    return getattr(get_strategy(name, **{param: value}), param)


def _refused(name, param, value) -> str:
    """The refusal of ``value`` (through the constructor and through ``check_params``, the same message)."""
    with pytest.raises(ValueError) as direct:
        _REGISTRY[name](**{param: value})
    with pytest.raises(ValueError) as whole:
        check_params({name: {param: value}})
    message = str(direct.value)
    assert str(whole.value) == message
    assert refused_input(message) == "settings", message  # the app shows it beside the strategy settings
    return message


def _just_outside(spec):
    """Values just below and just above the range (a float's below is its low itself when ``above``)."""
    if spec.kind == "int":
        return [spec.low - 1, spec.high + 1]
    step = 1e-6
    return [spec.low if spec.above else spec.low - step, spec.high + step]


def test_every_parameter_has_a_spec():
    assert len(CASES) >= 5 * len(available())  # keep, stage, layer, positions, seed at least
    for name, param, spec, default in CASES:
        assert spec is not None, f"{name}.{param} has no Spec"
        if default is not None and (name, param) not in OWN_RULES:
            assert _accepted(name, param, default) == default  # the default is inside its own range


@pytest.mark.parametrize("name, param, spec, default", CASES, ids=IDS)
def test_each_parameter_is_accepted_at_its_bounds_and_refused_outside(name, param, spec, default):
    if (name, param) in OWN_RULES:
        pytest.skip(OWN_RULES[(name, param)])
    strategy = _REGISTRY[name]
    if spec.kind in ("int", "float"):
        low = spec.low + (1e-6 if spec.above else 0)
        for bound in (low, spec.high):
            assert _accepted(name, param, bound) == pytest.approx(bound)
        for value in _just_outside(spec):
            message = _refused(name, param, value)
            assert message.startswith(f"{name} {param}={value!r}: expected "), message
            assert (f"{spec.low}..{spec.high}" if spec.kind == "int" else f"{spec.high:g}]") in message, message
        wrong = ["abc", True, [1], float("nan"), float("inf"), 10**30, 10**400, 10**5000]
        if spec.kind == "int":
            wrong += [2.5, spec.low + 0.5]
    elif spec.kind == "bool":
        assert _accepted(name, param, True) is True and _accepted(name, param, False) is False
        wrong = ["true", 1, 0, None]
    elif spec.kind == "choice":
        for value in spec.values(strategy):
            assert _accepted(name, param, value) == value
        wrong = ["bogus", 5, True, ["keep"]]
    else:  # patches
        assert _accepted(name, param, " " * spec.max_chars) == ""  # at its length bound (and no index in it)
        assert _accepted(name, param, list(range(int(spec.high)))) == ", ".join(map(str, range(int(spec.high))))
        wrong = [" " * (spec.max_chars + 1), list(range(int(spec.high) + 1)), 5, {"a": 1}]
    for value in wrong:
        if value is None and default is None:
            continue
        message = _refused(name, param, value) if value is not None else str(
            pytest.raises(ValueError, strategy, **{param: value}).value)
        assert message.startswith(f"{name} {param}="), message
        assert len(message) < 400, "a refusal quotes a long value cut short"


def test_whole_floats_become_ints_and_ints_become_floats():
    assert get_strategy("kmeans", iterations=30.0).iterations == 30
    assert isinstance(get_strategy("kmeans", iterations=30.0).iterations, int)
    assert isinstance(get_strategy("fastv", ratio=1).ratio, float)
    assert get_strategy("visionzip", contextual=None).contextual is None  # None: the strategy derives it


# ---------------------------------------------------------------- the issue's cases, as the library words them
ISSUE = [
    ("kmeans-iterations-1e9", {"kmeans": {"iterations": 1_000_000_000}},
     "kmeans iterations=1000000000: expected a whole number in 0..1000"),
    ("fastv-ratio-text", {"fastv": {"ratio": "abc"}}, "fastv ratio='abc': expected a share in [0, 1]"),
    ("vtc-cls-k_layers-text", {"vtc-cls": {"k_layers": "abc"}},
     "vtc-cls k_layers='abc': expected a whole number of ViT layers in 1..255"),
    ("vtc-cls-k_layers-2.5", {"vtc-cls": {"k_layers": 2.5}},
     "vtc-cls k_layers=2.5: expected a whole number of ViT layers in 1..255"),
    ("random-seed-1e30", {"random": {"seed": 10**30}},
     f"random seed={10**30}: expected a whole number in 0..4294967295"),
    ("kmeans-iterations-text", {"kmeans": {"iterations": "abc"}},
     "kmeans iterations='abc': expected a whole number in 0..1000"),
    ("params-5", 5, 'params=5: expected a mapping of strategy names to mappings of their parameters'),
    ("fastv-params-text", {"fastv": "abc"},
     "fastv params='abc': expected a mapping of fastv's parameters to values; its parameters: keep, stage, layer"),
    ("params-a-list", [("fastv", {})], "params=[('fastv', {})]: expected a mapping"),
    ("unknown-strategy", {"bogus": {}}, "unknown strategy 'bogus' in params; valid strategies: cdpruner"),
    ("strategy-name-not-text", {5: {}}, "unknown strategy 5 in params"),
    ("unknown-parameter", {"vtc-cls": {"colour": 1}}, "strategy 'vtc-cls' has no parameter(s) ['colour']; valid:"),
    ("parameter-name-not-text", {"fastv": {5: 1}}, "strategy 'fastv' has no parameter(s) [5]"),
    ("dart-no-pivot", {"dart": {"image_pivots": 0, "text_pivots": 0}}, "dart image_pivots=0, text_pivots=0"),
]


@pytest.mark.parametrize("name, params, start", ISSUE, ids=[c[0] for c in ISSUE])
def test_params_are_checked_as_a_whole(name, params, start):
    with pytest.raises(ValueError) as info:
        check_params(params)
    assert str(info.value).startswith(start), str(info.value)
    assert refused_input(str(info.value)) == "settings"


def test_params_none_or_empty_and_values_as_the_strategies_hold_them():
    assert check_params(None) == {} and check_params({}) == {} and check_params({"fastv": None}) == {"fastv": {}}
    assert check_params({"kmeans": {"iterations": 5.0, "seed": None}}) == {"kmeans": {"iterations": 5}}


@pytest.mark.parametrize("strategies, start", [
    (5, "strategies=5: expected a list of strategy names"),
    ([5], "strategies: 5 is not a strategy name"),
    ({"fastv": 1}, "strategies={'fastv': 1}: expected a list"),
])
def test_strategy_names_are_checked(strategies, start):
    with pytest.raises(ValueError) as info:
        check_strategy_names(strategies)
    assert str(info.value).startswith(start)
    assert check_strategy_names("fastv, vtw") == ["fastv", "vtw"] and check_strategy_names(None) == []


# ---------------------------------------------------------------- the app's controls read the same Spec
def test_controls_show_the_ranges_the_library_checks():
    controls = strategy_controls()
    for name, cs in controls.items():
        specs = parameter_specs(_REGISTRY[name])
        for c in cs:
            spec = specs[c["name"]][0]
            if c["kind"] in ("int", "float"):
                assert (c["min"], c["max"], c["above"]) == (spec.low, spec.high, spec.above), (name, c)
                if c["default"] is not None:
                    assert c["min"] <= c["default"] <= c["max"]
            else:
                assert c["min"] is None and c["max"] is None
            if c["kind"] == "choice":
                assert c["choices"] == list(spec.values(_REGISTRY[name]))
    kmeans = {c["name"]: c for c in controls["kmeans"]}
    assert (kmeans["iterations"]["min"], kmeans["iterations"]["max"]) == (0, 1000)


def test_controls_of_a_model_bound_its_layers():
    geometry = type("G", (), {"llm_layers": 8, "feature_layer_index": 4})()
    controls = strategy_controls(geometry)
    assert {c["name"]: c for c in controls["fastv"]}["layer"]["max"] == 7
    assert {c["name"]: c for c in controls["vtc-cls"]}["k_layers"]["max"] == 5


# ---------------------------------------------------------------- the question
def test_question_length_is_counted_in_characters():
    check_question("x" * MAX_QUESTION_CHARS)
    with pytest.raises(ValueError) as info:
        check_question("x" * (MAX_QUESTION_CHARS + 1))
    assert str(info.value).startswith(f"question is too long: {MAX_QUESTION_CHARS + 1:,} characters, more than the "
                                      f"{MAX_QUESTION_CHARS:,} accepted")
    assert refused_input(str(info.value)) == "question"
    with pytest.raises(ValueError, match="question must be text, got int"):
        check_question(5)


@pytest.mark.parametrize("question, cleaned, note", [
    ("How many\ud800 objects?", "How many objects?", "removed 1 lone surrogate(s)"),
    ("\udfffHow many objects?\ud83d", "How many objects?", "removed 2 lone surrogate(s)"),
    ("Is there a \ud83d\ude00?", "Is there a \U0001F600?", None),  # a well-formed pair is its character
])
def test_lone_surrogates_are_removed_and_said(question, cleaned, note):
    text, notes = clean_question(question)
    assert text == cleaned
    assert (notes == [] if note is None else len(notes) == 1 and notes[0].startswith(note)), notes
    text.encode("utf-8")  # text a tokenizer takes


def test_a_question_of_lone_surrogates_only_is_empty():
    with pytest.raises(ValueError, match="question is empty"):
        clean_question("\ud800\udbff")


# ---------------------------------------------------------------- the sweep's ceiling
def test_sweep_ceiling_counts_configurations_questions_and_tokens():
    assert check_sweep_size(3, 3, 8, 40) == 8 * 40 * SWEEP_NEW_TOKENS  # the app's default Sweep
    assert check_sweep_size(1, 1, SWEEP_CEILING // (SWEEP_NEW_TOKENS * 10), 10) == SWEEP_CEILING  # at the ceiling
    with pytest.raises(ValueError) as info:
        check_sweep_size(1, 1, SWEEP_CEILING // (SWEEP_NEW_TOKENS * 10), 11)
    assert str(info.value).startswith("sweep of 1 strategies x 1 budgets x 11 questions x 4 new tokens")
    assert f"more than the {SWEEP_CEILING:,} one request may ask" in str(info.value)


@pytest.mark.parametrize("strategies, budgets, n", [
    ("vtc-cls,fastv,vtw", [48, 32, 16], 40),  # the app's default Sweep
    ("all", [48, 32, 16], 40),  # every strategy at three budgets
    ("vtc-cls,fastv,vtw", [48, 32, 16], 400),  # the default strategies on the most questions the app offers
], ids=["app-default", "every-strategy", "400-questions"])
def test_typical_sweeps_pass_the_ceiling(strategies, budgets, n):
    rows = bench.configs(strategies, budgets, position_variants=False)
    names = {p["name"] for _, p in rows} - {"none"}
    assert check_sweep_size(len(names), len(budgets), len(rows), n) <= SWEEP_CEILING


# ---------------------------------------------------------------- through Scope: refused before any work
class Tripwire:
    """Stands in for the model's lock or an engine step: any use fails the test (the request got past its checks)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        raise AssertionError(f"{self.what} was taken: the refusal came after model work started")

    def __exit__(self, *exc):
        return False

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.what} was called: the refusal came after model work started")


@pytest.fixture(scope="module")
def scope():
    return Scope(threads=torch.get_num_threads())


@pytest.fixture
def tripped(scope, monkeypatch):
    """``scope`` with its lock and the engine's prepare (where the tokenizer runs) replaced by tripwires."""
    monkeypatch.setattr(scope, "lock", Tripwire("the model's lock"))
    monkeypatch.setattr(scope.engine, "prepare", Tripwire("Engine.prepare (the tokenizer)"))
    return scope


EXAMPLE = "assets/examples/example-2-count.png"
HUGE = "How many objects are there? " * 180_000  # 5,040,000 characters


def _refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("name, params, start", [c for c in ISSUE if c[0] not in ("dart-no-pivot",)],
                         ids=[c[0] for c in ISSUE if c[0] not in ("dart-no-pivot",)])
def test_compare_refuses_bad_params_before_any_work(tripped, name, params, start):
    message = _refusal(lambda: list(tripped.compare_stream(EXAMPLE, "How many objects are there?", ["fastv"], 36,
                                                           params, repeats=1, warmup=0)))
    assert message.startswith(start)


def test_compare_refuses_a_5_mb_question_before_tokenizing(tripped):
    message = _refusal(lambda: list(tripped.compare_stream(EXAMPLE, HUGE, ["fastv"], 36, repeats=1, warmup=0)))
    assert message.startswith(f"question is too long: {len(HUGE):,} characters")
    assert refused_input(message) == "question"


@pytest.mark.parametrize("method", ["probe", "kept_set", "budget_film", "agreement", "random_seeds", "handpick",
                                    "view"])
def test_teacher_refuses_a_5_mb_question_before_tokenizing(tripped, method):
    teacher = tripped.teach
    calls = {"probe": lambda: teacher.probe(EXAMPLE, HUGE, 0, 0, ["fastv"], 36),
             "kept_set": lambda: teacher.kept_set(EXAMPLE, HUGE, "fastv", 36),
             "budget_film": lambda: teacher.budget_film(EXAMPLE, HUGE, ["fastv"], [36]),
             "agreement": lambda: teacher.agreement(EXAMPLE, HUGE, ["fastv", "random"], 36),
             "random_seeds": lambda: teacher.random_seeds(EXAMPLE, HUGE, 36, 2),
             "handpick": lambda: teacher.handpick(EXAMPLE, HUGE, [1, 2, 3]),
             "view": lambda: teacher.view(EXAMPLE, HUGE)}
    assert _refusal(calls[method]).startswith("question is too long")


def test_teacher_refuses_bad_params_before_any_work(tripped):
    assert _refusal(lambda: tripped.teach.random_seeds(EXAMPLE, "How many?", 36, 2, params=5)).startswith("params=5")
    assert _refusal(lambda: tripped.teach.agreement(EXAMPLE, "How many?", ["kmeans", "random"], 36,
                                                    {"kmeans": {"iterations": 10**9}})).startswith(
        "kmeans iterations=1000000000")


def test_the_largest_sweep_is_refused_before_any_work(tripped):
    """Every strategy, budgets 1..144, 400 questions and every type: ~11 h of work before, refused at once now."""
    message = _refusal(lambda: tripped.sweep("all", list(range(1, 145)), n=400,
                                             types=["colour", "shape", "exist", "count", "position"], progress=False))
    rows = bench.configs("all", list(range(1, 145)), position_variants=False)
    size = len(rows) * 400 * SWEEP_NEW_TOKENS
    assert message.startswith(f"sweep of {len(available()) - 2} strategies x 144 budgets x 400 questions x 4 new "
                              f"tokens: {len(rows):,} configurations x 400 questions x 4 tokens = {size:,}, more than "
                              f"the {SWEEP_CEILING:,}"), message


def test_the_largest_random_band_is_refused_before_any_work(tripped):
    """The Teach tab's band is a sweep with random once per seed: the same ceiling."""
    message = _refusal(lambda: tripped.teach.random_band(available(), list(range(1, 145, 12)), n=400, seeds=20))
    assert message.startswith("sweep of ") and f"more than the {SWEEP_CEILING:,}" in message
    # the Teach tab's defaults: vtc-cls, fastv, vtw at 3 budgets, 20 questions, 5 seeds of random
    rows = 1 + 3 + 3 + 1 + 5 * 3
    assert check_sweep_size(4, 3, rows, 20) <= SWEEP_CEILING


@pytest.mark.parametrize("kwargs, start", [
    ({"budgets": 5}, "budgets=5: expected a list"),
    ({"types": "colour"}, "types='colour': expected a list of question types"),
    ({"n": True}, "n=True: expected 1..1000 questions"),
    ({"strategies": [None]}, "strategies: None is not a strategy name"),
])
def test_sweep_refuses_wrong_types_before_any_work(tripped, kwargs, start):
    args = {"strategies": ["fastv"], "budgets": [36], "n": 5, "types": None, **kwargs}
    assert _refusal(lambda: tripped.sweep(progress=False, **args)).startswith(start)


def test_cli_refuses_a_5_mb_question_before_loading_the_model(monkeypatch, capsys):
    from pruning import model
    from pruning.cli import main

    monkeypatch.setattr(model, "load_model", Tripwire("load_model"))
    code = main(["ask", "--image", EXAMPLE, "--question", HUGE, "--strategy", "fastv", "--keep", "36"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: question is too long: 5,040,000 characters")


def test_a_lone_surrogate_question_is_answered_with_a_note(scope):
    results = scope.compare(EXAMPLE, "How many objects are there?\ud800", ["fastv"], 36, max_new_tokens=2, repeats=1,
                            warmup=0)
    assert [r["strategy"] for r in results] == ["none", "fastv"] and all(r["answer"] for r in results)
    for r in results:
        assert r["notes"][0].startswith("removed 1 lone surrogate(s)"), r["notes"]
