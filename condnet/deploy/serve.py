"""An HTTP service for a conditional model: FastAPI on uvicorn, routed micro-batches.

Why FastAPI + uvicorn: an ASGI server lets one process hold many open
requests while a single worker runs the model on their images together
(`batching.MicroBatcher`); FastAPI adds routing, JSON responses and the
OpenAPI page (`/docs`) on top of Starlette, and both are widely used and
maintained. The model runs in one worker thread at a time.

Endpoints:
- `POST /predict`: one image as the raw body (`Content-Type: image/...` or
  `application/octet-stream`), or several as `multipart/form-data` parts;
  answers a JSON list with one object per image, the objects of
  `condnet predict --json`.
- `GET /health`: `{"status": "ok"}` (needs no token).
- `GET /model`: hierarchy, routing, input size, MACs per route, limits.
- `GET /`: a page to drop an image on and see group -> class -> expert (needs no
  token itself; it asks for one when the service has one).

Every bad request is answered with a JSON `{"error": ...}` and a 4xx status:
400 unreadable image or empty body, 401 missing or wrong token, 413 upload or
image too large, 415 not an image or multipart body. The service keeps serving.
"""

import contextlib
import hmac
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import keras
import numpy as np

from condnet.data.folders import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image_bytes
from condnet.deploy.batching import MicroBatcher
from condnet.evaluation.evaluate import prediction_row
from condnet.models.dispatch import bucket_size, compiled_call

MAX_UPLOAD_BYTES = 16 * 2**20
PAGE = Path(__file__).with_name("page.html")
# The health check and the page itself (static; it asks for the token) need no token.
PUBLIC = ("/health", "/")


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def create_app(
    model,
    image_size,
    color_mode="rgb",
    info=None,
    token=None,
    max_batch=32,
    max_wait_ms=5.0,
    max_upload_bytes=MAX_UPLOAD_BYTES,
    max_pixels=MAX_IMAGE_PIXELS,
):
    """A FastAPI app serving `model` (a ConditionalModel; its routing is used as is).

    Args:
        model: the model; `model.hierarchy` names the outputs.
        image_size: `(height, width)` the model takes.
        color_mode: `"rgb"` or `"grayscale"`.
        info: extra JSON for `GET /model` (e.g. `condnet info` of the run).
        token: when set, every endpoint but `/health` needs
            `Authorization: Bearer <token>`.
        max_batch, max_wait_ms: micro-batching (`max_batch=1`: off).
        max_upload_bytes: largest request body; larger is a 413.
        max_pixels: largest image (width x height, from its header, before
            decoding); larger is a 413.
    """
    _needs_serving()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    hierarchy = model.hierarchy
    batcher = MicroBatcher(_predictor(model), max_batch=max_batch, max_wait_ms=max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()

    app = FastAPI(title="condnet", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    description = {
        "hierarchy": hierarchy.to_dict(),
        "routing": model.routing,
        "input": {"image_size": list(image_size), "color_mode": color_mode},
        "limits": {
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
        },
        **(info or {}),
    }

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    if token:
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

    @app.post("/predict")
    async def predict(request: Request):
        uploads = _uploads(await _body(request, max_upload_bytes), request.headers)
        images = np.stack(
            [_decoded(data, name, image_size, color_mode, max_pixels) for name, data in uploads]
        )
        outputs = await batcher.submit(images.astype("float32"))
        return [
            prediction_row(hierarchy, name, outputs, row) for row, (name, _) in enumerate(uploads)
        ]

    return app


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
        from starlette.datastructures import Headers

        self.app, self.token, self.headers_of = app, token, Headers
        # One response object for every refusal: it holds no per-request state.
        self.refusal = JSONResponse(
            {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            if not _authorized(self.headers_of(scope=scope), self.token):
                await self.refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _authorized(headers, token):
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


async def _body(request, limit):
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the upload is {int(declared):,} bytes; at most {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the upload is over {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise RequestError(400, "the request has no body: send an image or a multipart form")
    return body


def _uploads(body, headers):
    """[(name, bytes)] of the images in a request body."""
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [("upload", body)]
    if kind != "multipart/form-data":
        raise RequestError(
            415,
            "send an image (Content-Type image/... or application/octet-stream) or "
            f"multipart/form-data with image files. Received: Content-Type {kind or 'none'!r}",
        )
    header = f"Content-Type: {headers.get('content-type')}\r\n\r\n".encode("latin-1")
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


def run_server(app, host="127.0.0.1", port=8000, log_level="info"):
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
