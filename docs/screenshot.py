"""Remake docs/demo.png and docs/demo-result.png: the demo page in Chromium, recording from
Chromium's built-in fake camera (its test pattern, no face) with a drawn ID card, so the
pictures hold no real person.

    python docs/screenshot.py     # needs `portrait models build` and /usr/bin/chromium
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
KEY = "demo-key-0123456789abcdef"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def drawn_id_card() -> bytes:
    """A grey ID card with a silhouette and bars for text: no face of anyone."""
    card = np.full((300, 480, 3), (236, 226, 214), np.uint8)
    cv2.rectangle(card, (0, 0), (479, 48), (150, 90, 30), -1)
    cv2.putText(card, "IDENTITY CARD", (18, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.rectangle(card, (24, 70), (174, 270), (205, 200, 195), -1)
    cv2.circle(card, (99, 140), 40, (140, 130, 125), -1, cv2.LINE_AA)
    cv2.ellipse(card, (99, 270), (70, 70), 0, 180, 360, (140, 130, 125), -1, cv2.LINE_AA)
    for row, width in enumerate((220, 170, 240, 120, 200)):
        cv2.rectangle(card, (200, 84 + row * 36), (200 + width, 98 + row * 36), (170, 160, 150), -1)
    return cv2.imencode(".png", card)[1].tobytes()


def main() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORTRAIT_PORT": str(port), "PORTRAIT_API_KEYS": f"carrier:{KEY}",
           "PORTRAIT_DEMO": "1", "PORTRAIT_CLIENT_ACTIONS_TENANTS": "demo"}
    server = subprocess.Popen([sys.executable, "-m", "portrait.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(f"{url}/demo?actions=turn_left,blink&schedule=1.2,3.0")
            page.set_input_files("#id-image", files=[{"name": "id.png", "mimeType": "image/png",
                                                      "buffer": drawn_id_card()}])
            page.click("#start")
            page.wait_for_selector(".pc-prompt.pc-active", timeout=30_000)
            page.wait_for_timeout(600)
            page.screenshot(path=str(DOCS / "demo.png"))
            page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached",
                                   timeout=180_000)
            page.screenshot(path=str(DOCS / "demo-result.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
