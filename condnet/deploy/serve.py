"""An HTTP service for a conditional model: FastAPI on uvicorn, routed micro-batches.

Why FastAPI + uvicorn: an ASGI server lets one process hold many open
requests while a single worker runs the model on their inputs together
(`batching.MicroBatcher`); FastAPI adds routing, JSON responses and the
OpenAPI page (`/docs`) on top of Starlette, and both are widely used and
maintained. The model runs in one worker thread at a time.

Endpoints:
- `POST /predict`: one image as the raw body (`Content-Type: image/...` or
  `application/octet-stream`), or several as `multipart/form-data` parts;
  a model that reads documents (a text run's, whose `preprocessor` is its
  TextVectorization) takes JSON instead: `{"text": "..."}` or
  `{"text": ["...", ...]}`, the documents named `text:1`, `text:2`, ...
  Answers a JSON list with one object per input, the objects of
  `condnet predict --json`.
- `GET /health`: `{"status": "ok"}` (needs no token).
- `GET /model`: hierarchy, routing, modality (`"image"` or `"text"`), input
  size or sequence length, MACs per route, limits.
- `GET /`: a page to drop an image on (or paste a document into) and see
  group -> class -> expert (needs no token itself; it asks for one when the
  service has one).

Every bad request is answered with a JSON `{"error": ...}` and a 4xx status:
400 unreadable image, JSON without a "text" string or list of them, blank
document or empty body, 401 missing or wrong token, 408 body not received
within `body_timeout`, 413 upload or image too large or too many documents,
415 not an image or multipart body (not JSON, for documents). The service
keeps serving.

No request can hold the others up: parsing and decoding run in a pool of
threads (Pillow releases the GIL while it decodes) and the model in its own
thread, so the event loop only moves bytes and `/health` answers while a large
upload decodes. A connection must deliver its request headers within
`header_timeout` and its body within `body_timeout`; an idle keep-alive
connection is closed after 5 s. Every option is checked when the app is built.
"""

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import numbers
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import keras
import numpy as np

from condnet.data.decode import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image_bytes
from condnet.data.text import token_ids
from condnet.deploy.batching import MicroBatcher
from condnet.evaluation.backoff import answer_fields, back_off, check_thresholds
from condnet.evaluation.evaluate import prediction_row
from condnet.evaluation.unknown import (
    UnknownDetector,
    unknown_fields,
)
from condnet.models.dispatch import bucket_size, compiled_call

MAX_UPLOAD_BYTES = 16 * 2**20
MAX_DOCUMENTS = 1024  # documents per request: each costs its tokenizing and a model row
HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive
BODY_TIMEOUT = 60.0  # seconds for its body (16 MB at about 2 Mbit/s)
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open (uvicorn's default)
PAGE = Path(__file__).with_name("page.html")
# The health check and the page itself (static; it asks for the token) need no token.
PUBLIC = ("/health", "/")
# Every option's type and valid range (inclusive), checked before the service starts.
OPTIONS = {
    "port": (int, 0, 65535, " (0: any free port)"),
    "max_batch": (int, 1, 4096, " inputs"),
    "max_wait_ms": (float, 0, 10_000, " milliseconds"),
    "max_upload_bytes": (int, 1, 2**30, " bytes"),
    "max_upload_mb": (float, 0.001, 1024, " MB"),  # the command line's unit
    "max_pixels": (int, 1, 2**30, " pixels"),
    "max_documents": (int, 1, 100_000, " documents"),
    "header_timeout": (float, 0.01, 3600, " seconds"),
    "body_timeout": (float, 0.01, 3600, " seconds"),
}
# uvicorn's logger, so that condnet's lines come out with uvicorn's own.
log = logging.getLogger("uvicorn.error")


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class ClientGone(Exception):
    """The client closed its connection before its request body was complete."""


def create_app(
    model,
    image_size=None,
    color_mode="rgb",
    info=None,
    token=None,
    max_batch=32,
    max_wait_ms=5.0,
    max_upload_bytes=MAX_UPLOAD_BYTES,
    max_pixels=MAX_IMAGE_PIXELS,
    max_documents=MAX_DOCUMENTS,
    body_timeout=BODY_TIMEOUT,
    thresholds=None,
    unknown_thresholds=None,
):
    """A FastAPI app serving `model` (a ConditionalModel; its routing is used as is).

    A model with a `preprocessor` (a text run's adapted TextVectorization)
    reads documents: `POST /predict` takes JSON `{"text": ...}`, and the
    documents go through the preprocessor as `condnet predict` sends them.

    Args:
        model: the model; `model.hierarchy` names the outputs.
        image_size: `(height, width)` the model takes; None for a model that
            reads documents (and only for one).
        color_mode: `"rgb"` or `"grayscale"`.
        info: extra JSON for `GET /model` (e.g. `condnet info` of the run).
        token: when set (a non-empty string), every endpoint but `/health` and
            `/` needs `Authorization: Bearer <token>`.
        max_batch, max_wait_ms: micro-batching (`max_batch=1`: off).
        max_upload_bytes: largest request body; larger is a 413.
        max_pixels: largest image (width x height, from its header, before
            decoding); larger is a 413.
        max_documents: most documents in one request; more is a 413.
        body_timeout: seconds a request's whole body may take to arrive; later
            is a 408.
        thresholds: optional dict `level -> threshold`: each answer also says
            the deepest node the model is sure of (`answer`, `answer_level`,
            `answer_confidence`; `condnet.evaluation.backoff.back_off`).
        unknown_thresholds: optional dict `group -> threshold` (maximum-softmax
            thresholds) or an `UnknownDetector` (a run's, `condnet.runs.run_dir.
            run_unknown_detector`, any score): each answer also says whether the
            chosen expert knows none of its classes (`unknown`, `unknown_score`;
            `condnet.evaluation.unknown`).
    """
    check_options(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_documents=max_documents,
        body_timeout=body_timeout,
    )
    check_token(token)
    documents = _reads_documents(model, image_size)
    if thresholds is not None:
        thresholds = check_thresholds(model.hierarchy, thresholds)
    detector = unknown_thresholds
    if detector is not None and not isinstance(detector, UnknownDetector):
        detector = UnknownDetector(model.hierarchy, detector)
    _needs_serving()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    hierarchy = model.hierarchy
    batcher = MicroBatcher(_predictor(model), max_batch=max_batch, max_wait_ms=max_wait_ms)
    decoder = decoding_pool()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="condnet", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.token_required = token is not None
    description = {
        "hierarchy": hierarchy.to_dict(),
        "routing": model.routing,
        "backoff_thresholds": thresholds,
        "unknown_thresholds": None if detector is None else detector.thresholds,
        "unknown_score": None if detector is None else detector.score,
        "modality": "text" if documents else "image",
        "input": _input_of(model, image_size, color_mode),
        "limits": {
            "max_upload_bytes": max_upload_bytes,
            **({"max_documents": max_documents} if documents else {"max_pixels": max_pixels}),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "body_timeout": body_timeout,
        },
        **(info or {}),
    }

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"error": str(error)}, error.status, headers=error.headers)

    @app.exception_handler(ClientGone)
    async def gone(request, error):
        log.warning("%s", error)
        return Response(status_code=400)  # nobody is left to read it

    if token is not None:
        app.add_middleware(_TokenGuard, token=token)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model_info():
        return description

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    def inputs_of(body, content_type):
        if documents:  # token ids, as `condnet predict` computes them
            names, texts = _documents(body, content_type, max_documents)
            return names, token_ids(model.preprocessor, texts)
        uploads = _uploads(body, content_type)
        names = [name for name, _ in uploads]
        images = [_decoded(data, n, image_size, color_mode, max_pixels) for n, data in uploads]
        return names, np.stack(images).astype("float32")

    expected = TEXT_BODY if documents else "an image or a multipart form"

    @app.post("/predict")
    async def predict(request: Request):
        body = await _body(request, max_upload_bytes, body_timeout, expected)
        content_type = request.headers.get("content-type", "")
        loop = asyncio.get_running_loop()
        names, inputs = await loop.run_in_executor(decoder, inputs_of, body, content_type)
        outputs = await batcher.submit(inputs)
        rows = [prediction_row(hierarchy, name, outputs, row) for row, name in enumerate(names)]
        if thresholds is not None:
            answers = back_off(hierarchy, outputs["classes"], thresholds, outputs["groups"])
            rows = [row | answer_fields(answers, index) for index, row in enumerate(rows)]
        if detector is not None:
            scored, flagged = await loop.run_in_executor(decoder, detector, model, inputs, outputs)
            rows = [row | unknown_fields(scored, flagged, i) for i, row in enumerate(rows)]
        return rows

    return app


def _reads_documents(model, image_size):
    """Whether the app reads documents (the model has a `preprocessor`) rather than images
    of `image_size`; refuses an `image_size` that does not fit the model."""
    documents = getattr(model, "preprocessor", None) is not None
    if documents and image_size is not None:
        raise ValueError(
            "This model reads documents through its preprocessor "
            f"({type(model.preprocessor).__name__}), so the service takes text, not images: "
            f"pass image_size=None. Received: image_size={image_size!r}"
        )
    if not documents and image_size is None:
        raise ValueError(
            "This model reads images: pass the image_size it takes, (height, width). "
            "Received: image_size=None"
        )
    return documents


def _input_of(model, image_size, color_mode):
    """What `GET /model` says the model reads: image size and colours, or for documents the
    token ids kept of each (the vectorizer's `output_sequence_length`, a keras-hub
    tokenizer's `sequence_length`)."""
    if image_size is None:
        length = getattr(model.preprocessor, "sequence_length", None)
        if length is None:
            length = model.preprocessor.get_config().get("output_sequence_length")
        return {"sequence_length": length}
    return {"image_size": list(image_size), "color_mode": color_mode}


def decoding_pool():
    """Threads that parse and decode uploads: one per core and a few more, as many as
    Python's own default pool (Pillow releases the GIL while it decodes)."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    return ThreadPoolExecutor(workers, thread_name_prefix="condnet-decode")


# === Options ===


def check_options(cli=False, **options):
    """Refuse any option outside `OPTIONS` (not finite, out of range, wrong type), naming
    it as the command line does (`--max-wait-ms`) when `cli`, else as Python does."""
    for name, value in options.items():
        kind, lowest, highest, unit = OPTIONS[name]
        option = f"--{name.replace('_', '-')}" if cli else name
        number = numbers.Integral if kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number):
            what = "an integer" if kind is int else "a number"
            raise TypeError(f"{option} must be {what}. Received: {option}={value!r}")
        if not lowest <= value <= highest:  # also false for NaN
            what = "an integer" if kind is int else "a finite number"
            raise ValueError(
                f"{option} must be {what} from {_number(lowest)} to {_number(highest)}{unit}. "
                f"Received: {option}={value!r}"
            )


def _number(value):
    return f"{value:,}" if value >= 100_000 else f"{value:g}"


def check_token(token, option="token"):
    """Refuse a token that would leave the service open or could never match: empty
    (an unset shell variable), blank, with spaces at its ends or control characters."""
    if token is None:
        return
    if not isinstance(token, str):
        raise TypeError(f"{option} must be a string. Received: {option}={token!r}")
    if not token.strip():
        raise ValueError(
            f"{option} is empty: the service would run with no authentication (an unset "
            f"shell variable?). Give a token, or none at all to serve without one. "
            f"Received: {option}={token!r}"
        )
    if token != token.strip() or any(ord(c) < 32 or ord(c) == 127 for c in token):
        raise ValueError(
            f"{option} has spaces at its ends or control characters, which an "
            f"Authorization header cannot carry. Received: {option}={token!r}"
        )


def _predictor(model):
    """numpy batch -> {"classes", "groups", "route"}: condnet's routed predict when the
    model routes; soft, one compiled call of the whole model (Keras's `predict` costs
    tens of milliseconds per call, which would dominate one-image requests)."""
    keys = ("classes", "groups", "route")
    if model.routes_at_inference:

        def routed(images):
            outputs = model.predict(images, batch_size=len(images), verbose=0)
            return {k: outputs[k] for k in keys}

        return routed
    calls = {}
    pad = keras.backend.backend() == "jax"  # one compiled program per batch shape

    def soft(images):
        if "call" not in calls:
            calls["call"] = compiled_call(model, images.shape[1:], str(images.dtype))
        rows = len(images)
        if pad:
            padding = np.zeros((bucket_size(rows) - rows, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        outputs = calls["call"](images)
        return {k: np.asarray(outputs[k])[:rows] for k in keys}

    return soft


class _TokenGuard:
    """ASGI middleware: a 401 for any request but `PUBLIC` without the Bearer token.

    A plain ASGI class rather than `@app.middleware("http")`: Starlette's
    `BaseHTTPMiddleware` runs every request through extra tasks and streams,
    a fixed cost per request that one-image requests feel.
    """

    def __init__(self, app, token):
        from fastapi.responses import JSONResponse

        self.app, self.token = app, token.encode("utf-8")
        # One response object for every refusal: it holds no per-request state.
        self.refusal = JSONResponse(
            {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            if not _authorized(scope["headers"], self.token):
                await self.refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _authorized(headers, token):
    """Whether the raw ASGI `headers` carry `Bearer <token>` (`token` as UTF-8 bytes).

    Compared as bytes, in constant time: a header is bytes on the wire, and one that
    is not ASCII (or not even UTF-8) is simply not the token."""
    given = next((value for name, value in headers if name.lower() == b"authorization"), b"")
    scheme, _, value = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)


async def _body(request, limit, timeout, expected):
    """The request body, refused as soon as it passes `limit` bytes (413) or is not
    complete `timeout` seconds after its headers (408), or when empty (400, saying to
    send the `expected` body)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the upload is {int(declared):,} bytes; at most {limit:,}")
    chunks, size = [], 0
    async for chunk in _deadline(_stream(request, declared), timeout):
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the upload is over {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise RequestError(400, f"the request has no body: send {expected}")
    return body


async def _stream(request, declared):
    """`request.stream()`, with a client that hangs up mid-body as `ClientGone`."""
    from starlette.requests import ClientDisconnect

    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            yield chunk
    except ClientDisconnect:
        client = "{}:{} - ".format(*request.client) if request.client else ""
        raise ClientGone(
            f"{client}disconnected during the body of {request.method} {request.url.path} "
            f"({size:,} of {declared or 'unknown'} bytes received); request dropped"
        ) from None


async def _deadline(chunks, timeout):
    """The items of the async iterator `chunks`, or a 408 once `timeout` seconds passed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    iterator = chunks.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), max(0.0, end - loop.time()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestError(
                408,
                f"the request body did not arrive within {timeout:g} s (the body timeout)",
                headers={"Connection": "close"},  # the client is stalled: nothing to drain
            ) from None
        yield chunk


def _uploads(body, content_type):
    """[(name, bytes)] of the images in a request body."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [("upload", body)]
    if kind != "multipart/form-data":
        raise RequestError(
            415,
            "send an image (Content-Type image/... or application/octet-stream) or "
            f"multipart/form-data with image files. Received: Content-Type {kind or 'none'!r}",
        )
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise RequestError(400, "the multipart body cannot be parsed (no parts found)")
    uploads = []
    for i, part in enumerate(message.iter_parts()):
        data = part.get_payload(decode=True) or b""
        uploads.append((part.get_filename() or f"part-{i}", data))
    if not uploads:
        raise RequestError(400, "the multipart form holds no files")
    return uploads


TEXT_BODY = 'JSON {"text": "a document"} or {"text": ["a document", "another"]}'


def _documents(body, content_type, limit):
    """`(names, texts)` of the documents of a JSON body: `{"text": str or [str, ...]}`,
    named `text:1`, `text:2`, ... in order."""
    kind = content_type.split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(
            415,
            f"this service reads documents: send {TEXT_BODY} with Content-Type "
            f"application/json. Received: Content-Type {kind or 'none'!r}",
        )
    try:
        record = json.loads(body)
    except (ValueError, RecursionError) as error:  # bad UTF-8 is a ValueError too
        raise RequestError(400, f"the body is not JSON ({str(error)[:200]})") from None
    texts = record.get("text") if isinstance(record, dict) else None
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise RequestError(400, f"send {TEXT_BODY}. Received: {_shape_of(record)}")
    if not texts:
        raise RequestError(400, '"text" is an empty list: send at least one document')
    if len(texts) > limit:
        raise RequestError(413, f"the request holds {len(texts):,} documents; at most {limit:,}")
    for number, text in enumerate(texts, 1):
        _check_document(number, text)
    return [f"text:{number}" for number in range(1, len(texts) + 1)], texts


def _shape_of(record):
    """What a JSON body holds instead of a "text" string or list of strings, in words."""
    if not isinstance(record, dict):
        return f"a JSON {_JSON_KINDS[type(record)]}, not an object"
    if "text" not in record:
        return f'an object without "text" (keys: {sorted(record)[:10]})'
    texts = record["text"]
    if not isinstance(texts, list):
        return f'"text" is a {_JSON_KINDS[type(texts)]}'
    kinds = sorted({_JSON_KINDS[type(text)] for text in texts if not isinstance(text, str)})
    return f'"text" is an array holding {" and ".join(kinds)} items'


_JSON_KINDS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _check_document(number, text):
    if not text.strip():
        raise RequestError(400, f"document text:{number} is blank: there is nothing to classify")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate escaped in the JSON
        raise RequestError(
            400, f"document text:{number} is not valid Unicode ({error.reason} at {error.start})"
        ) from None


def _decoded(data, name, image_size, color_mode, max_pixels):
    try:
        return decode_image_bytes(data, image_size, color_mode, name=name, max_pixels=max_pixels)
    except ImageDecodeError as error:
        status = 413 if error.reason.startswith("too many pixels") else 400
        raise RequestError(status, f"{name}: {error.reason}") from None


def _needs_serving():
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"condnet serve needs {' and '.join(missing)}: pip install 'condnet[serve]'"
        )


# === Server ===


def run_server(app, host="127.0.0.1", port=8000, log_level="info", header_timeout=HEADER_TIMEOUT):
    """Serve `app` with uvicorn until interrupted (see `server_config`); warns on stderr
    when it binds beyond loopback with no token."""
    import uvicorn

    config = server_config(app, host, port, log_level, header_timeout)
    if not getattr(app.state, "token_required", False) and not _is_loopback(host):
        print(
            f"warning: serving on {host} (reachable from other machines) with no token: "
            "anyone who reaches the port can use the model; set --token or $CONDNET_TOKEN",
            file=sys.stderr,
        )
    uvicorn.Server(config).run()


def server_config(
    app, host="127.0.0.1", port=8000, log_level="info", header_timeout=HEADER_TIMEOUT
):
    """uvicorn's configuration for `app`: a connection that has not delivered its
    request's headers `header_timeout` seconds after it opened (or after its previous
    response) is closed; an idle keep-alive connection after `KEEP_ALIVE_TIMEOUT`."""
    import uvicorn

    check_options(port=port, header_timeout=header_timeout)
    protocol = _with_header_deadline(header_timeout)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
    )


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or "" for every interface): it may reach out
        return False


def _with_header_deadline(seconds):
    """uvicorn's HTTP protocol ("auto": httptools when installed, else h11) with a
    deadline for request headers, which uvicorn lacks: a connection that sends nothing
    stays open, and the keep-alive timer stops at the first byte of the next request,
    so a client that sends its headers a byte at a time holds a connection forever.
    The deadline starts when the connection opens and at the first byte after each
    response; unless a request's headers are complete by then, the connection is
    closed (with a 408 when part of a request arrived). Between requests, uvicorn's
    keep-alive timer closes an idle connection as before."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderDeadline(AutoHTTPProtocol):
        header_timer = None
        partial = False  # bytes of a request's head arrived since the deadline started

        def connection_made(self, transport):
            super().connection_made(transport)
            self._start_deadline()

        def data_received(self, data):
            if self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._start_deadline()  # the first bytes of the next request
            self.partial = True
            super().data_received(data)

        def on_response_complete(self):
            self._stop_deadline()  # first: a pipelined request may start in the call
            super().on_response_complete()

        def connection_lost(self, exc):
            self._stop_deadline()
            super().connection_lost(exc)

        def _start_deadline(self):
            self._stop_deadline()
            self.partial = False
            self.header_timer = self.loop.call_later(seconds, self._deadline_passed, self.cycle)

        def _stop_deadline(self):
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _deadline_passed(self, cycle):
            if self.cycle is not cycle or self.transport.is_closing():
                return  # a request's headers arrived in time
            # (Bytes after an early answer, such as a 413's, are the rest of its body.)
            if self.partial and not (cycle is not None and cycle.more_body):
                client = "{}:{} - ".format(*self.client) if self.client else ""
                log.warning(
                    "%sclosed: request headers incomplete after %g s (the header timeout)",
                    client,
                    seconds,
                )
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return HeaderDeadline


_LATE_HEADERS = b'{"error": "the request headers did not arrive in time"}'
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_LATE_HEADERS), _LATE_HEADERS)
)
