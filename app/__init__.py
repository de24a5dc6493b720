"""PruneScope's Gradio UI (arrives with the app issue): plain functions from a Result to figures and images.

Rule from the design: nothing in this package imports torch; callbacks call one library function in
``pruning`` and receive plain values.
"""
