"""What an image costs the server in memory: peak RSS for the worst image the app accepts and for each refused bomb.

    .venv/bin/python -m benchmarks.image_memory [--repeats 1]

Starts the app in-process (``app.make_demo`` + ``app.launch``, embedded model, a free loopback port) and sends each
case through raw HTTP (``/gradio_api/upload``, then ``/gradio_api/queue/join`` of ``/compare`` and its event stream),
as a program or a hostile visitor would, one at a time. Before each case the process's peak RSS (VmHWM) is reset
(``/proc/self/clear_refs``); after it the peak and the RSS after a garbage collection are read. Prints, per case:
how it arrived, what the server said, the peak over the RSS before the case, and the RSS left after it over the
RSS before (memory the request did not give back). The app and the HTTP client share the process. Linux only.

The cases (docs/robustness.md has the figures): the worst accepted image (a 7071x7071 PNG: 50.0 M pixels, the most
``pruning.images.MAX_PIXELS`` lets in, as an upload and as a data: URL); the same file cut in half (its header passes,
its decoding fails half way); the bombs refused from their header (a
13000x13000 PNG of 37 kB, a 277-byte 1x100000 PNG, a 30000x30000 PNG, each as an upload and as a data: URL); a data:
URL of 10.2 MiB; a 30 MB request body.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import struct
import sys
import time
import uuid
import zlib

from benchmarks.serving import free_port, load_app_main

QUESTION = "How many objects are there?"


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (this benchmark needs Linux)")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def bomb_png(width: int, height: int, rows: int = 8) -> bytes:
    """A PNG declaring ``width`` x ``height`` with only its first rows of data: tiny on disk, huge decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\0" + b"\0" * (3 * width)) for _ in range(min(rows, height))) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def worst_accepted() -> bytes:
    """A complete 7071x7071 RGB PNG (grey with a few coloured squares): the largest pixel count accepted."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (7071, 7071), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(220, 30, 30), (30, 160, 40), (40, 60, 220)]):
        draw.rectangle([800 + 2000 * i, 2500, 2000 + 2000 * i, 3700], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take (300)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import httpx

    app_main = load_app_main()
    demo = app_main.make_demo()
    port = free_port()
    app_main.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    config = httpx.get(url + "config", timeout=30).json()
    compare_fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "compare")

    def upload(raw: bytes, name: str) -> dict:
        r = httpx.post(url + "gradio_api/upload", files={"files": (name, raw, "image/png")}, timeout=args.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"upload refused: {r.status_code} {r.text[:200]}")
        return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def as_data_url(raw: bytes, name: str) -> dict:
        return {"url": "data:image/png;base64," + base64.b64encode(raw).decode(), "orig_name": name}

    def compare(image: dict) -> str:
        session = uuid.uuid4().hex
        body = {"data": [image, QUESTION, ["fastv"], 36, 2, {}, "embedded toy model"], "fn_index": compare_fn,
                "session_hash": session, "event_data": None, "trigger_id": None}
        r = httpx.post(url + "gradio_api/queue/join", json=body, timeout=args.timeout)
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.json().get('detail', r.text)}"
        with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=args.timeout) as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        if msg["success"]:
                            return "answered: " + msg["output"]["data"][0][0]["answer"]
                        return "refused: " + str(msg["output"].get("error"))
        return "no answer"

    def big_body() -> str:
        r = httpx.post(url + "gradio_api/queue/join", content=b"x" * (30 * 10**6),
                       headers={"content-type": "application/json"}, timeout=args.timeout)
        return f"HTTP {r.status_code}: {r.json().get('detail', r.text)}"

    print("building the images...", flush=True)
    worst = worst_accepted()
    cases = [
        ("worst accepted: 7071x7071 PNG", "upload", lambda: compare(upload(worst, "worst-7071.png"))),
        ("worst accepted: 7071x7071 PNG", "data: URL", lambda: compare(as_data_url(worst, "worst-7071.png"))),
    ]
    truncated = worst[: len(worst) // 2]
    cases.append(("failed: 7071x7071 PNG, first half", "upload", lambda: compare(upload(truncated, "half.png"))))
    for name, raw in (("bomb 13000x13000", bomb_png(13000, 13000)), ("thin 1x100000", bomb_png(1, 100000)),
                      ("bomb 30000x30000", bomb_png(30000, 30000))):
        label = f"{name} PNG ({len(raw):,} bytes)"
        file_name = name.replace(" ", "-") + ".png"
        cases.append((label, "upload", lambda raw=raw, f=file_name: compare(upload(raw, f))))
        cases.append((label, "data: URL", lambda raw=raw, f=file_name: compare(as_data_url(raw, f))))
    oversize = b"\x89PNG" + b"\0" * int(10.2 * 2**20)
    cases.append(("10.2 MiB of bytes", "data: URL", lambda: compare(as_data_url(oversize, "big.png"))))
    cases.append(("30 MB request body", "queue/join", big_body))

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: no trim column
        libc = None
    rows = []
    try:
        compare(upload(bomb_png(96, 96, rows=96), "warm.png"))  # first-call allocations out of the way
        for label, way, run in cases:
            gc.collect()
            before = status_kib("VmRSS")
            reset_peak()
            t0 = time.perf_counter()
            said = run()
            seconds = time.perf_counter() - t0
            peak = status_kib("VmHWM")
            gc.collect()
            after = status_kib("VmRSS")
            trimmed = after
            if libc is not None:
                libc.malloc_trim(0)  # what the allocator kept for reuse, handed back to the system
                trimmed = status_kib("VmRSS")
            rows.append((label, way, said, before, peak - before, after - before, trimmed - before, seconds))
            print(f"{label:<36} {way:<10} peak +{(peak - before) / 1024:7.1f} MiB  after {(after - before) / 1024:+7.1f}"
                  f" MiB  trimmed {(trimmed - before) / 1024:+7.1f} MiB  {seconds:5.1f} s  {said[:100]}", flush=True)
    finally:
        demo.close()
    print()
    print(f"PruneScope image memory: RSS before the first case {rows[0][3] / 1024:.1f} MiB (app and client in one "
          "process); peak = the process's peak RSS during the case over its RSS before it; after = RSS after the case "
          "(and a garbage collection) over before; trimmed = the same after glibc's malloc_trim(0) (what is left is "
          "held by live objects, not kept by the allocator for reuse)")
    print("| image | sent as | server's answer | peak RSS over before | after | trimmed | seconds |")
    print("|---|---|---|---|---|---|---|")
    for label, way, said, _, peak, left, trimmed, seconds in rows:
        print(f"| {label} | {way} | {said[:90].replace('|', '/')} | +{peak / 1024:.1f} MiB | {left / 1024:+.1f} MiB "
              f"| {trimmed / 1024:+.1f} MiB | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
