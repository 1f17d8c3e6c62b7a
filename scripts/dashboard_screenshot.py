"""Make docs/dashboard.png: the dashboard of a real `modelport serve` under load, in headless
Chromium (the same repository, browser and load generator as tests/e2e/test_dashboard.py).

The load: `steady` throughout (more clients in the second half), `scorer`'s stable version
throughout, and from a third of the way in, requests routed by scorer's traffic split, so its
canary (which fails one run in five) breaches its error-rate SLO and, a minute later, is rolled
back.

    .venv/bin/python scripts/dashboard_screenshot.py [--seconds 180] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.slo_support import Load  # noqa: E402
from tests.e2e.test_dashboard import Browser, write_repository  # noqa: E402
from tests.support import run_server, wait_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240, help="how long the load runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelport-shot-") as scratch:
        folder = Path(scratch)
        repo = write_repository(folder / "repo", window_s=30, hold_s=60)
        with run_server(repo, folder / "server.log", "--slo-interval", "1") as server:
            browser = Browser(folder / "profile", width=1400, height=1500)
            loads: list[Load] = []
            try:
                browser.open(f"{server.base}/dashboard")
                browser.driver.find_element("css selector", 'button[data-span="300"]').click()
                base = ["/v2/models/steady/infer", "/v2/models/scorer/versions/stable/infer"]
                loads.append(Load(server.base, base).start(per_path=2))
                time.sleep(args.seconds / 3)
                loads.append(Load(server.base, ["/v2/models/scorer/infer"]).start(per_path=2))
                time.sleep(args.seconds / 6)
                loads.append(Load(server.base, ["/v2/models/steady/infer"]).start(per_path=3))
                time.sleep(args.seconds / 2)
                wait_until(lambda: bool(browser.texts("#rollbacks li")), "the rollback shown", 120)
                time.sleep(3)  # one more poll after the last step closed
                browser.screenshot(args.out)
            finally:
                for load in loads:
                    load.finish()
                browser.close()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
