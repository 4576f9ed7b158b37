"""`condnet serve`: serve a run over HTTP (routed micro-batches; POST /predict, GET /health,
/model, /)."""

import os

from condnet.runs.cli.common import add_inference_flags, add_run_dir, inference_options


def add_parser(commands, common):
    p = commands.add_parser(
        "serve",
        parents=[common],
        help="serve a run over HTTP (routed micro-batches; POST /predict, GET /health, /model, /)",
        description="An HTTP service for RUN_DIR on FastAPI + uvicorn. POST /predict takes one "
        'image as the body or several as multipart/form-data (a text run: JSON {"text": '
        '"..."} or {"text": ["...", ...]}) and answers one JSON object per image or '
        "document (those of `condnet predict --json`); requests that arrive together are "
        "routed as one batch. GET / is a page to try it in a browser.",
    )
    add_run_dir(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; any other warns when there is no token)",
    )
    p.add_argument("--port", type=int, default=8000, help="0 to 65535 (default: 8000)")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on everything but /health and / "
        "(default: $CONDNET_TOKEN, else none; an empty token is refused)",
    )
    p.add_argument(
        "--max-batch", type=int, default=32, help="inputs per model call, 1 to 4096 (default: 32)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch, 0 to 10000 "
        "(default: 5; 0: none)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=16.0,
        help="largest request body, 0.001 to 1024 (default: 16)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image, width x height, checked before decoding (default: 67,108,864)",
    )
    p.add_argument(
        "--max-documents",
        type=int,
        default=1024,
        help="a text run: most documents in one request, 1 to 100000 (default: 1024)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a request's headers, else it is closed "
        "(default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request has to send its whole body, else a 408 (default: 60)",
    )
    add_inference_flags(
        p,
        ("routing", "model", "back_off", "thresholds", "unknown"),
        defaults={"routing": "hard"},
        helps={
            "routing": "(default: {default})",
            "model": "model.keras (default), model.calibrated.keras",
        },
    )
    p.set_defaults(run=_run)


def _run(args):
    from condnet.deploy.serve import check_options, check_token, run_server
    from condnet.runs.deploy import serve_app

    options = inference_options(args)
    limits = _limits(args)
    server = {"port": args.port, "header_timeout": args.header_timeout}
    # Before loading the model, so that a bad option fails at once.
    check_options(cli=True, max_upload_mb=args.max_upload_mb, **limits, **server)
    token, source = args.token, "--token"
    if token is None:
        token, source = os.environ.get("CONDNET_TOKEN"), "$CONDNET_TOKEN"
    check_token(token, source)
    app = serve_app(
        args.run_dir,
        routing=options.routing,
        model_file=options.model,
        back_off=options.back_off,
        thresholds=options.thresholds,
        unknown=options.unknown,
        token=token,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        **limits,
    )
    access = "token required" if token is not None else "no token"
    print(f"Serving {args.run_dir} on http://{args.host}:{args.port}/ ({access}; Ctrl-C stops).")
    run_server(app, host=args.host, **server)


def _limits(args):
    """What the service accepts of each request, as `serve_app` takes it."""
    from condnet.data.decode import MAX_IMAGE_PIXELS

    return {
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_pixels": MAX_IMAGE_PIXELS if args.max_pixels is None else args.max_pixels,
        "max_documents": args.max_documents,
        "body_timeout": args.body_timeout,
    }
