#!/usr/bin/env python3
"""The egress demo: background workers calling a strictly limited external API through two
Envoy gateways, once per way of limiting them, side by side.

Each scenario gets its own mock reverse-geocoding API, which allows 5 calls per 15 s (a token
bucket: 5 tokens, one back every 3 s) and locks its caller out for 30 s when that is exceeded,
as strict external APIs do. Two Envoy gateways, each with a response cache in front of its
limiter, stand between the API and the workers (the seed's curl loop: random start jitter, a
static coordinate every k-th call, exponential backoff up to a maximum sleep on 429).

Scenarios:
  envoy-local     the seed's setup: Envoy's local token bucket (5 tokens, 5 per 16 s) in each
                  gateway, so two gateways let through twice the rate;
  fixed_window    ironclad-rls, one counter shared by both gateways, 5 per 16 s, fixed windows;
  sliding_window  the same with a sliding window;
  token_bucket    the same with a token bucket (burst 5, 5 per 16 s).

ironclad-rls runs as two replicas on one Redis, one per gateway. The gateway configuration of
the ironclad scenarios is printed by `ironclad-rls render envoy --response-cache`.

At the end it prints a summary and writes an SVG chart of the calls reaching the API.
Only the Python standard library is used.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

API_BURST = 5  # the API's bucket
API_REFILL_SECONDS = 3.0  # one token back every 3 s: 5 per 15 s
API_LOCKOUT_SECONDS = 30.0
GATEWAY_WINDOW_SECONDS = 16  # what the gateways enforce: 5 per 16 s
STRICT = ("sliding_window", "token_bucket")
SCENARIOS = ("envoy-local", "fixed_window", "sliding_window", "token_bucket")
# Shortnames are unique across every loaded file, so each limits file names its endpoint apart.
SHORTNAMES = {"fixed_window": "geocode-fixed", "sliding_window": "geocode-sliding",
              "token_bucket": "geocode-bucket"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MockApi:
    """A reverse-geocoding API with its own strict limit and a lockout for whoever breaks it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tokens = float(API_BURST)
        self.last = time.monotonic()
        self.locked_until = 0.0
        self.arrivals = []  # monotonic time of every call that reached the API
        self.rejected = 0  # calls over the API's limit or during a lockout
        self.lockouts = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = api.answer()
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-api", "mock-geocode")
                if status == 200:
                    # Addresses do not move: let the gateway cache them.
                    self.send_header("cache-control", "public, max-age=3600")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self):
        with self.lock:
            now = time.monotonic()
            self.arrivals.append(now)
            self.tokens = min(API_BURST, self.tokens + (now - self.last) / API_REFILL_SECONDS)
            self.last = now
            if now < self.locked_until:
                self.rejected += 1
                return 403, {"status": "LOCKED_OUT"}
            if self.tokens < 1.0:
                self.rejected += 1
                self.lockouts += 1
                self.locked_until = now + API_LOCKOUT_SECONDS
                return 429, {"status": "OVER_QUERY_LIMIT"}
            self.tokens -= 1.0
            return 200, {"status": "OK", "results": [{"formatted_address": "1 Demo Street"}]}


class Process:
    """A child process whose output goes to a log file; killed at the end."""

    running = []

    def __init__(self, args, log):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        Process.running.append(self)

    def check(self, what):
        if self.proc.poll() is not None:
            with open(self.log, errors="replace") as f:
                sys.exit(f"{what} exited:\n{f.read()}")

    @classmethod
    def stop_all(cls):
        for p in cls.running:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in cls.running:
            try:
                p.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.proc.kill()


def wait_until(what, ready, process=None, timeout=60):
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None:
            process.check(what)
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not start within {timeout} s")
        time.sleep(0.1)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def hcm(routes_to, http_filters):
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "egress",
            "route_config": {"virtual_hosts": [{
                "name": "api", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": routes_to}}],
            }]},
            "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


def local_bucket_config(listen, api_port):
    """The seed's gateway: a response cache, then Envoy's local token bucket, then the API.

    Envoy 1.40's cache filter fetches a miss itself, straight from the route's cluster, so a
    limiter after it in the same chain never runs (the seed's single chain would limit
    nothing). As `render envoy --response-cache` does, the cache has a tier of its own in
    front of an internal listener that holds the limiter."""
    cache = {"name": "envoy.filters.http.cache", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"},
    }}
    bucket = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "local",
        "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": f"{GATEWAY_WINDOW_SECONDS}s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    }}
    def cluster(name, address):
        return {"name": name, "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}}
    return {
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "static_resources": {
            "listeners": [
                {"name": "egress",
                 "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                 "filter_chains": [{"filters": [hcm("limiter", [cache])]}]},
                {"name": "limiter", "internal_listener": {},
                 "filter_chains": [{"filters": [hcm("api", [bucket])]}]},
            ],
            "clusters": [
                cluster("limiter", {"envoy_internal_address": {"server_listener_name": "limiter"}}),
                cluster("api", {"socket_address": {"address": "127.0.0.1", "port_value": api_port}}),
            ],
        },
    }


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0
        self.cached = 0
        self.gateway_rejected = 0
        self.api_answered = 0

    def add(self, field):
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)


def worker(gateway_port, stats, stop, args, rng):
    """The seed's curl loop."""
    time.sleep(rng.uniform(0, args.jitter))
    sleep = args.sleep
    n = 0
    while not stop.is_set():
        n += 1
        if n % args.static_every == 0:
            latlng = "37.789980,-122.400860"
        else:
            latlng = f"{rng.uniform(-90, 90):.6f},{rng.uniform(-180, 180):.6f}"
        url = f"http://127.0.0.1:{gateway_port}/maps/api/geocode/json?latlng={latlng}&key=demo"
        request = urllib.request.Request(url, headers={"host": "maps.example"})
        stats.add("calls")
        headers, status = {}, 0
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                status, headers = r.status, r.headers
                r.read()
        except urllib.error.HTTPError as e:
            status, headers = e.code, e.headers
        except OSError:
            status = 0
        if headers.get("age") is not None:
            stats.add("cached")  # answered by the gateway's cache
        elif headers.get("x-api") is not None:
            stats.add("api_answered")
        elif status == 429:
            stats.add("gateway_rejected")
        if status == 429 or (status != 200 and headers.get("x-api")):
            sleep = min(sleep * 2, args.max_sleep)
        else:
            sleep = args.sleep
        stop.wait(sleep)


def rate_series(arrivals, start, duration, window):
    """Calls per second reaching the API, averaged over the trailing `window` seconds."""
    points = []
    for step in range(0, int(duration * 2) + 1):
        t = start + step / 2
        n = sum(1 for a in arrivals if t - window < a <= t)
        points.append((step / 2, n / window))
    return points


def svg_chart(series, duration, path):
    width, height, left, bottom, top, right = 760, 360, 60, 40, 30, 190
    limit = API_BURST / (API_BURST * API_REFILL_SECONDS)
    ymax = max([limit * 2.5] + [y for pts in series.values() for _, y in pts]) * 1.1
    x = lambda s: left + s / duration * (width - left - right)
    y = lambda v: height - bottom - v / ymax * (height - bottom - top)
    colours = {"envoy-local": "#d62728", "fixed_window": "#ff7f0e",
               "sliding_window": "#2ca02c", "token_bucket": "#1f77b4"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">Calls per second reaching the API '
           f'(trailing 15 s average) against its limit</text>',
           f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{top}" stroke="black"/>']
    for i in range(0, 6):
        v = ymax * i / 5
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for s in range(0, int(duration) + 1, max(1, int(duration) // 6)):
        out.append(f'<text x="{x(s):.1f}" y="{height - bottom + 16}" text-anchor="middle">{s}s</text>')
    out.append(f'<line x1="{left}" y1="{y(limit):.1f}" x2="{width - right}" y2="{y(limit):.1f}" '
               f'stroke="black" stroke-dasharray="6,4"/>')
    out.append(f'<text x="{width - right + 8}" y="{y(limit) + 4:.1f}">API limit (5 per 15 s)</text>')
    for i, (name, points) in enumerate(series.items()):
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for j, (t, v) in enumerate(points))
        out.append(f'<path d="{path_d}" fill="none" stroke="{colours[name]}" stroke-width="2"/>')
        ly = top + 40 + i * 18
        out.append(f'<line x1="{width - right + 8}" y1="{ly}" x2="{width - right + 28}" y2="{ly}" '
                   f'stroke="{colours[name]}" stroke-width="2"/>')
        out.append(f'<text x="{width - right + 34}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of traffic (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="workers per scenario (default 4)")
    parser.add_argument("--sleep", type=float, default=1, help="seconds between calls (default 1)")
    parser.add_argument("--max-sleep", type=float, default=10, help="backoff ceiling (default 10)")
    parser.add_argument("--jitter", type=float, default=4, help="random start delay, max (default 4)")
    parser.add_argument("--static-every", type=int, default=6, help="every k-th call uses the static coordinate (default 6)")
    parser.add_argument("--chart", default=os.path.join(ROOT, "target", "egress", "chart.svg"),
                        help="where to write the SVG chart")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    args = parser.parse_args()

    rls_bin = os.environ.get("IRONCLAD_RLS_BIN") or os.path.join(ROOT, "target", "debug", "ironclad-rls")
    envoy_bin = os.environ.get("ENVOY_BIN")
    redis_bin = shutil.which("redis-server")
    for name, path in (("ironclad-rls (IRONCLAD_RLS_BIN)", rls_bin), ("Envoy (ENVOY_BIN)", envoy_bin),
                       ("redis-server (apt-get install redis-server)", redis_bin)):
        if not path or not os.path.exists(path):
            sys.exit(f"error: {name} not found")
    work = tempfile.mkdtemp(prefix="egress-")
    rng = random.Random(args.seed)
    try:
        run(args, rls_bin, envoy_bin, redis_bin, work, rng)
    finally:
        Process.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(args, rls_bin, envoy_bin, redis_bin, work, rng):
    redis_port = free_port()
    redis = Process([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], os.path.join(work, "redis.log"))
    wait_until("redis-server", lambda: listening(redis_port), redis)

    # Two replicas of the service on the shared Redis, one per gateway.
    replicas = []
    for i in range(2):
        grpc, admin = free_port(), free_port()
        p = Process([rls_bin, "serve", "--config", os.path.join(HERE, "limits"),
                     "--redis-url", f"redis://127.0.0.1:{redis_port}", "--redis-timeout", "1s",
                     "--grpc-addr", f"127.0.0.1:{grpc}", "--admin-addr", f"127.0.0.1:{admin}"],
                    os.path.join(work, f"rls-{i}.log"))
        wait_until(f"ironclad-rls replica {i}", lambda: answers(f"http://127.0.0.1:{admin}/readyz"), p)
        replicas.append(grpc)

    apis, gateways = {}, {}
    for scenario in SCENARIOS:
        api = MockApi()
        apis[scenario] = api
        gateways[scenario] = []
        for g in range(2):
            listen = free_port()
            config_path = os.path.join(work, f"envoy-{scenario}-{g}.yaml")
            if scenario == "envoy-local":
                with open(config_path, "w") as f:
                    json.dump(local_bucket_config(listen, api.port), f)
            else:
                rendered = subprocess.run(
                    [rls_bin, "render", "envoy", "--config",
                     os.path.join(HERE, "limits", f"{scenario}.yaml"),
                     "--response-cache", "--jwt", "ignore", "--timeout", "1s",
                     "--failure-mode-deny",
                     "--listen", f"127.0.0.1:{listen}", "--rls-addr", f"127.0.0.1:{replicas[g]}",
                     "--upstream", f"{SHORTNAMES[scenario]}=127.0.0.1:{api.port}"],
                    check=True, capture_output=True, text=True)
                with open(config_path, "w") as f:
                    f.write(rendered.stdout)
            envoy = Process([envoy_bin, "-c", config_path, "--log-level", "error",
                             "--base-id", str(listen)], config_path + ".log")
            wait_until(f"Envoy {scenario} {g}", lambda: listening(listen), envoy)
            gateways[scenario].append(listen)

    # Start together, run for the duration, stop together.
    stop = threading.Event()
    stats = {s: Stats() for s in SCENARIOS}
    start = time.monotonic()
    threads = []
    for scenario in SCENARIOS:
        for w in range(args.workers):
            port = gateways[scenario][w % 2]
            t = threading.Thread(target=worker, args=(port, stats[scenario], stop, args,
                                                      random.Random(rng.random())), daemon=True)
            t.start()
            threads.append(t)
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    print(f"{args.duration:.0f} s, {args.workers} workers per scenario, 2 gateways each; "
          f"the API allows 5 calls per 15 s and locks its caller out for {API_LOCKOUT_SECONDS:.0f} s")
    header = ("scenario", "calls", "from cache", "rejected by gateway", "reached API",
              "rejected by API", "lockouts")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    failed = []
    for scenario in SCENARIOS:
        s, api = stats[scenario], apis[scenario]
        row = (scenario, s.calls, s.cached, s.gateway_rejected, len(api.arrivals), api.rejected,
               api.lockouts)
        print("| " + " | ".join(str(v) for v in row) + " |")
        if scenario in STRICT and api.lockouts:
            failed.append(scenario)
    series = {s: rate_series(apis[s].arrivals, start, args.duration, 15.0) for s in SCENARIOS}
    os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
    svg_chart(series, args.duration, args.chart)
    print(f"chart: {args.chart}")
    if failed:
        sys.exit(f"lockouts with {', '.join(failed)}: the shared strict limit was not honoured")


if __name__ == "__main__":
    main()
