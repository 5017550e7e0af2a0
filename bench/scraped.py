"""Runs a command while scraping its HTTP endpoints, as Prometheus and a person with
the status page open would: `python bench/scraped.py --port P --every 1 -- CMD...`.

The benchmark harness kills the whole process group at the end of a run, so the
scraper needs no stop signal; it exits by itself when the command does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between scrapes")
    ap.add_argument("--paths", default="/metrics,/", help="comma list of paths to fetch each time")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    child = subprocess.Popen(command)
    paths = args.paths.split(",")
    scrapes = failures = 0
    while child.poll() is None:
        time.sleep(args.every)
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}{path}", timeout=5) as response:
                    response.read()
                scrapes += 1
            except OSError:
                failures += 1  # not serving yet, or stopping
    print(f"scraped {scrapes} times, {failures} failed", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
