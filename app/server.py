"""What the server does around the page, so that one visitor cannot freeze a public Space (issue 24).

``app.py`` (the composition root) calls ``guard(demo, check_image)`` after ``demo.queue(...)`` and launches with
``launch_kwargs(demo)``. Nothing here imports torch or ``pruning``: the image header check is handed in.

- ``Guard``, an ASGI middleware in front of Gradio's routes:
  - caps request bodies: an upload (``/gradio_api/upload``) at ``MAX_UPLOAD_BODY``, anything else at ``MAX_BODY``
    (enough for one image of ``MAX_FILE_BYTES`` sent as a base64 ``data:`` URL); over the cap: 413 with a
    sentence, from the declared length before any byte is read, or as soon as a streamed body passes it;
  - bounds each visitor's pending jobs: a ``queue/join`` of a session that already has ``max_pending`` events
    waiting or running is answered 429 with a sentence, and the rest of the queue stays open to others (a call
    through ``/gradio_api/call/<name>`` without a session is counted under one session per client address);
  - refuses the events the API does not offer when they are called by name (``/gradio_api/run|call/<name>``
    of a page-only event: 404 naming the endpoints there are); the page calls its own events by ``fn_index``,
    and each of those validates its input as the public ones do (docs/robustness.md lists them);
  - sends ``X-Content-Type-Options: nosniff``, a frame policy (``X-Frame-Options: SAMEORIGIN`` and CSP
    ``frame-ancestors 'self'``; on a HuggingFace Space, which shows the app in a frame of huggingface.co, that
    site too) and a content security policy the app's own page passes (``CSP``; tests/test_server.py checks the
    page in Chromium).
- ``guard_inputs(demo, check_image)``: before Gradio preprocesses an event's inputs, every image input is
  screened: an image given as a URL is refused (the server fetches nothing a visitor names); an image sent as a
  ``data:`` URL is measured from its length, refused over ``MAX_FILE_BYTES``, else its bytes are written to
  Gradio's upload folder undecoded and it continues as an upload; every uploaded image's header is checked
  (declared size, pixel count, aspect ratio: ``check_image``) before anything decodes it; a file outside the
  upload folder is refused without the server's paths in the message; and the Compare tab's undecoded image
  inputs stay undecoded in a session's copy of the component (``app.ui.undecoded``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import gradio as gr

from .ui import UNDECODED, undecoded, upload_name

MAX_FILE_BYTES = 10 * 2**20  # one uploaded file (launch's max_file_size), and one image sent as a data: URL
MAX_UPLOAD_BODY = MAX_FILE_BYTES + 2**20  # an upload request: one file and its multipart framing
MAX_BODY = 14 * 2**20  # any other request: an image of MAX_FILE_BYTES as base64 is 13.3 MiB
MAX_PENDING = 4  # events one session may have waiting or running at once
QUEUE_SIZE = 64  # events the whole queue holds

# The page's own needs: Gradio's scripts and styles from this origin (some inline, and its gr.HTML components run
# their scripts with new Function), plotly, images and overlays as data:/blob: URLs, Gradio's default font from
# Google Fonts (a page offline just falls back to system fonts).
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
       "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com; font-src 'self' data: https://fonts.gstatic.com; "
       "img-src 'self' data: blob:; media-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
       "frame-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'")
SPACE_FRAME_ANCESTORS = "https://huggingface.co https://*.huggingface.co https://*.hf.space"

log = logging.getLogger("prunescope.server")


def security_headers(on_space: bool | None = None) -> dict[str, str]:
    """The headers every response carries. ``on_space`` (default: ``SPACE_ID`` is set): the page may be framed by
    huggingface.co, as a Space's page is."""
    on_space = bool(os.environ.get("SPACE_ID")) if on_space is None else on_space
    ancestors = "'self'" + (f" {SPACE_FRAME_ANCESTORS}" if on_space else "")
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": f"{CSP}; frame-ancestors {ancestors}",
               "Referrer-Policy": "strict-origin-when-cross-origin"}
    if not on_space:  # X-Frame-Options cannot name another site; CSP's frame-ancestors does (and wins where both are)
        headers["X-Frame-Options"] = "SAMEORIGIN"
    return headers


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class Guard:
    """The ASGI middleware (the module docstring says what it does). ``demo``: the queued, launched Blocks."""

    def __init__(self, app, demo: gr.Blocks, max_pending: int = MAX_PENDING, max_body: int = MAX_BODY,
                 max_upload_body: int = MAX_UPLOAD_BODY, headers: dict[str, str] | None = None):
        self.app, self.demo = app, demo
        self.max_pending, self.max_body, self.max_upload_body = max_pending, max_body, max_upload_body
        self.headers = [(k.lower().encode(), v.encode()) for k, v in (headers or security_headers()).items()]
        self.joining: defaultdict[str, int] = defaultdict(int)  # joins of a session on their way into the queue

    # ------------------------------------------------------------ plumbing
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_headers(send)
        path = scope.get("path", "")
        cap = self.max_upload_body if path.rstrip("/").endswith("/upload") else self.max_body
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _respond(send, 400, "the request's Content-Length is not a number")
            if int(declared) > cap:
                return await _respond(send, 413, self._too_large(path, int(declared), cap))
        route = _route(path)
        if scope["method"] != "POST" or route is None:
            return await self._capped(scope, receive, send, cap, path)
        body = await _read(receive, cap)
        if body is None:
            return await _respond(send, 413, self._too_large(path, None, cap))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = None  # Gradio answers a body that is not JSON with its own 422
        if not isinstance(payload, dict):
            return await self.app(scope, _replay(body), send)
        kind, name = route
        if kind == "named" and payload.get("fn_index") is None and name not in self.public_names():
            return await _respond(send, 404, f"there is no API endpoint '/{name}': this app's endpoints are "
                                  f"{', '.join('/' + n for n in sorted(self.public_names()))} (see the page's "
                                  "'Use via API' link)")
        if kind == "call" and name not in self.public_names():
            return await _respond(send, 404, f"there is no API endpoint '/{name}': this app's endpoints are "
                                  f"{', '.join('/' + n for n in sorted(self.public_names()))}")
        if kind in ("join", "call"):
            session = payload.get("session_hash")
            if kind == "call" and not session:  # each such call would be a session of its own: one per address
                session = "addr-" + hashlib.sha1(str((scope.get("client") or ("?",))[0]).encode()).hexdigest()[:16]
                payload["session_hash"] = session
                body = json.dumps(payload).encode()
            if session:
                waiting = self.pending(str(session))
                if waiting >= self.max_pending:
                    return await _respond(send, 429, f"you already have {waiting} requests waiting or running (at "
                                          f"most {self.max_pending} at a time): wait for one to finish, then send "
                                          "the next", {"Retry-After": "2"})
                self.joining[str(session)] += 1
                try:
                    return await self.app(scope, _replay(body), send)
                finally:
                    self.joining[str(session)] -= 1
                    if self.joining[str(session)] <= 0:
                        self.joining.pop(str(session), None)
        return await self.app(scope, _replay(body), send)

    def pending(self, session: str) -> int:
        """A session's events waiting in the queue or running, and its joins on their way in."""
        queue = self.demo._queue
        ids = queue.pending_event_ids_session.get(session) or ()
        return sum(1 for i in list(ids) if i in queue.event_ids_to_events) + self.joining.get(session, 0)

    def public_names(self) -> set[str]:
        return {fn.api_name for fn in self.demo.fns.values() if fn.api_visibility == "public" and fn.api_name}

    def _too_large(self, path: str, size: int | None, cap: int) -> str:
        what = "an upload" if cap == self.max_upload_body else "a request"
        said = f" ({_mib(size)})" if size is not None else ""
        extra = (f" (one file of at most {_mib(MAX_FILE_BYTES)})" if cap == self.max_upload_body else
                 f" (an image sent inside a request, as a data: URL, may be at most {_mib(MAX_FILE_BYTES)})")
        return f"request body too large{said}: {what} to {path} may be at most {_mib(cap)}{extra}"

    def _with_headers(self, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers") or []}
                message = {**message, "headers": [*(message.get("headers") or []),
                                                  *[(k, v) for k, v in self.headers if k not in have]]}
            await send(message)
        return sending

    async def _capped(self, scope, receive, send, cap: int, path: str):
        """Pass a request on, counting its body as it streams in: past ``cap`` the app sees the client go away, and
        the client gets a 413 (unless the app had already answered)."""
        state = {"read": 0, "over": False, "started": False}

        async def receiving():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > cap:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message):
            if state["over"] and not state["started"]:
                return  # the app's answer to a body cut short; ours follows
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        except Exception:
            if not state["over"]:
                raise
            log.info("a request to %s passed the %s body cap and was cut off", path, _mib(cap))
        if state["over"] and not state["started"]:
            await _respond(send, 413, self._too_large(path, None, cap))


def _route(path: str) -> tuple[str, str] | None:
    """What a POST to ``path`` is, for ``Guard``: ("join", ""), ("named", name) for /run|api/<name>, ("call", name) for
    /call[/v2]/<name>, or None (not looked into)."""
    if path.rstrip("/").endswith("/queue/join"):
        return "join", ""
    m = re.search(r"/(run|api)/([^/]+)/?$", path)
    if m:
        return "named", m.group(2)
    m = re.search(r"/call/(?:v2/)?([^/]+)/?$", path)
    if m:
        return "call", m.group(1)
    return None


async def _read(receive, cap: int) -> bytes | None:
    """The whole request body, or None once it passes ``cap``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        body = message.get("body", b"")
        size += len(body)
        if size > cap:
            return None
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive


async def _respond(send, status: int, message: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            *[(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------ the inputs of every event

def guard_inputs(demo: gr.Blocks, check_image, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Screen every event's image inputs before Gradio preprocesses them (the module docstring says how).
    ``check_image(path, label)`` reads only the header of the image file at ``path`` and raises ``ValueError``
    naming ``label`` when its declared size is refused (``pruning.images.check_header``). A per-instance
    attribute of ``demo``: Gradio's ``Blocks.preprocess_data`` is called through it."""
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        inputs = list(inputs)
        for i, block in enumerate(block_fn.inputs):
            if not isinstance(block, gr.Image) or i >= len(inputs):
                continue
            copy = state.blocks_config.blocks.get(block._id) if state is not None else None
            if getattr(block, UNDECODED, False) and copy is not None and not getattr(copy, UNDECODED, False):
                undecoded(copy)  # a session's copy of the component (made when an event skipped or updated it)
            inputs[i] = screen_image(inputs[i], check_image, max_bytes)
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except gr.exceptions.InvalidPathError as e:
            log.info("refused a file outside the upload folder: %s", e)
            raise gr.Error("a file in this request was not uploaded to this app: upload it first (POST "
                           "/gradio_api/upload; gradio_client's handle_file does), then name the path the upload "
                           "returned", print_exception=False) from None

    demo.preprocess_data = preprocess_data


def screen_image(payload, check_image, max_bytes: int = MAX_FILE_BYTES):
    """One image input as the client sent it (a FileData dict, or None), screened: refused with a ``gr.Error``
    that names the image by the visitor's file name, or returned (a data: URL as an upload of its bytes)."""
    if not isinstance(payload, dict):
        return payload
    name = upload_name(payload.get("orig_name"))
    path, url = payload.get("path"), payload.get("url")
    for given in (path, url if not path else None):
        if isinstance(given, str) and re.match(r"(?i)\s*(https?|ftp|file)://", given):
            raise gr.Error(f"image {given[:100]!r}: this app does not fetch images from URLs; download the image "
                           "and upload the file", print_exception=False)
    if isinstance(url, str) and url.startswith("data:") and not path:
        payload = _data_url_to_upload(url, payload.get("orig_name"), max_bytes)
        path, name = payload["path"], upload_name(payload["orig_name"])
    if isinstance(path, str) and path:
        upload_dir = Path(gr.utils.get_upload_folder()).resolve()
        try:
            real = Path(path).resolve()
        except (OSError, ValueError):  # a NUL byte, a loop of links
            raise gr.Error(f"image path {upload_name(path)!r} is not a valid file path", print_exception=False) from None
        if not real.is_relative_to(upload_dir):
            raise gr.Error(f"image '{upload_name(path)}' was not uploaded to this app: upload the file first (POST "
                           "/gradio_api/upload; gradio_client's handle_file does), then name the path the upload "
                           "returned", print_exception=False)
        if real.is_file():  # a missing one: Gradio and the library say so
            size = real.stat().st_size
            if size > max_bytes:
                raise gr.Error(f"image '{name}' is {_mib(size)}, more than the {_mib(max_bytes)} accepted",
                               print_exception=False)
            if size > 0:  # an empty file: the library says so in its own words
                try:
                    check_image(str(real), repr(name))
                except ValueError as e:
                    raise gr.Error(str(e), print_exception=False) from None
    return payload


def _data_url_to_upload(url: str, orig_name: str | None, max_bytes: int) -> dict:
    """An image sent as ``data:[<mime>][;base64],<data>``: refused from its length over ``max_bytes``, else its
    bytes written, undecoded, to a file in Gradio's upload folder; returns the FileData of that upload."""
    label = f"'{upload_name(orig_name)}' (sent as a data: URL)" if orig_name else "sent as a data: URL"
    head, sep, data = url.partition(",")
    if not sep or ";base64" not in head:
        raise gr.Error(f"the image {label} is not base64 data (expected data:image/...;base64,...)",
                       print_exception=False)
    size = len(data) * 3 // 4
    if size > max_bytes:
        raise gr.Error(f"the image {label} is {_mib(size)}, more than the {_mib(max_bytes)} accepted",
                       print_exception=False)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error(f"the image {label} is not valid base64", print_exception=False) from None
    if not raw:
        raise gr.Error(f"the image {label} is empty (0 bytes)", print_exception=False)
    digest = hashlib.sha256(raw).hexdigest()
    mime = head[5:].split(";")[0] or "image/png"
    suffix = {"image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp", "image/bmp": ".bmp",
              "image/tiff": ".tif"}.get(mime, ".png")
    folder = Path(gr.utils.get_upload_folder()) / digest
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (Path(upload_name(orig_name)).stem.replace(" ", "_")[:40] + suffix if orig_name else "image" + suffix)
    if not target.exists():
        target.write_bytes(raw)
    return {"path": str(target), "url": None, "orig_name": orig_name or "image sent as a data: URL",
            "size": len(raw), "mime_type": mime, "meta": {"_type": "gradio.FileData"}}


# ------------------------------------------------------------------ what app.py calls

def guard(demo: gr.Blocks, check_image) -> None:
    """Screen the inputs of every event (``guard_inputs``) and check that the queue holds what ``Guard`` reads."""
    queue = getattr(demo, "_queue", None)
    for attr in ("pending_event_ids_session", "event_ids_to_events"):
        if not hasattr(queue, attr):
            raise RuntimeError(f"Gradio's queue has no {attr!r} (a Gradio version this app was not built for): the "
                               "per-visitor bound cannot work; call demo.queue() first, or pin Gradio as "
                               "requirements.txt does")
    guard_inputs(demo, check_image)


def launch_kwargs(demo: gr.Blocks, max_pending: int = MAX_PENDING, on_space: bool | None = None) -> dict:
    """``demo.launch``'s server arguments: the upload cap and the ``Guard`` middleware."""
    from starlette.middleware import Middleware

    return {"max_file_size": MAX_FILE_BYTES,
            "app_kwargs": {"middleware": [Middleware(Guard, demo=demo, max_pending=max_pending,
                                                     headers=security_headers(on_space))]}}


__all__ = ["Guard", "guard", "guard_inputs", "screen_image", "launch_kwargs", "security_headers", "CSP",
           "MAX_FILE_BYTES", "MAX_BODY", "MAX_UPLOAD_BODY", "MAX_PENDING", "QUEUE_SIZE"]
