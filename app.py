"""CIFAR-10 classifier Space: read the flags, build the UI (cifar.ui) over one Service, launch."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network to call home to
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import logging

from cifar import config
from cifar.service import Service
from cifar.ui import KEYS_JS, build, queue, sessions
from cifar.ui.common import ASSETS
from cifar.ui.retrain import status_route


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CIFAR-10 classifier app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", default=os.environ.get("GRADIO_SHARE", "").lower() == "true")
    parser.add_argument("--mcp", action="store_true", default=os.environ.get("GRADIO_MCP_SERVER", "").lower() == "true",
                        help="also serve the API as MCP tools (admin actions still need the admin key)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service()
    demo = build(service)
    demo.queue(default_concurrency_limit=4)
    queue.poll_less(demo)  # Gradio polls its queue every 1 ms, on the loop that serves all HTTP
    queue.skip_analytics(demo)  # and summarises its last 10,000 events after each one, for nobody
    sessions.install()  # a new session no longer builds every component's config up front
    sessions.keep_sessions_with_events(demo)  # a retrain's session outlives thousands of one-shot calls
    # Every API call is a new Gradio session whose state is kept up to state_session_capacity;
    # 10,000 of them grew the app by ~900 MB in a 10-minute soak. The app keeps no per-session
    # state, so a few hundred recent sessions are plenty.
    launch = dict(server_name=args.host, server_port=args.port, show_error=True, max_file_size="100mb",
                  state_session_capacity=300,
                  allowed_paths=[str(ASSETS), str(config.plots_dir())],
                  blocked_paths=[str(config.uploads_dir()), str(config.registry_dir())], mcp_server=args.mcp,
                  enable_monitoring=False)  # the Monitoring tab is the app's; Gradio's dashboard would be empty
    demo.launch(share=args.share, prevent_thread_lock=True, js=KEYS_JS, **launch)
    demo.server_app.add_api_route("/api/retrain_status", status_route(service), methods=["GET"])
    # Outside Gradio's queue: a load balancer's health check stays quick under any load.
    demo.server_app.add_api_route("/healthz", service.health, methods=["GET"])
    if args.share:
        # Offline or blocked, Gradio cannot open the tunnel; say so plainly and keep serving locally.
        print(f"Public link: {demo.share_url}" if demo.share_url else
              f"No public share link could be created (offline?); serving locally at {demo.local_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
