"""Benchmarks that print figures (not tests): ``python -m benchmarks.<name>``."""


def timing_parser(prog: str, description: str, new_tokens: int, repeats: int | None = None):
    """The options every timing benchmark on a ``python -m pruning speed`` geometry shares: ``--geometry``,
    ``--llm-layers``, ``--vit-layers``, ``--new-tokens``, ``--threads``, ``--json`` (and ``--repeats`` when given a
    default)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--geometry", default="llava-1.5-7b")
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--vit-layers", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=new_tokens)
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the report here")
    return p
