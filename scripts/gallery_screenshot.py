"""Look at a gallery in a real browser: headless Chromium renders FOLDER/index.html and saves a screenshot.

    python scripts/gallery_screenshot.py avdit-demo/samples -o docs/gallery.png

A development tool (CI has no browser; tests/test_gallery.py checks the page by parsing it). It needs
Debian's `chromium` (`apt-get install chromium`) or any Chromium/Chrome named by --browser. The browser runs
with a fresh profile, no network services and no GPU, and only opens the file:// URL of the page, so the
picture also shows that the page needs nothing from the network.

Chromium's own `--screenshot` races the video decoders (the players come out black one run in three), so
the browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`, stdlib only): load
the page, wait until every player has decoded its first frame and every picture is loaded, then capture.
The PNG is reduced to a 256-colour palette so that it stays small enough to commit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio"]
READY = """(() => {
  const videos = [...document.querySelectorAll('video')], images = [...document.querySelectorAll('img')];
  const settled = v => (v.readyState >= 2 && !v.seeking && v.networkState !== 2) || v.error;
  return videos.every(settled) && images.every(i => i.complete);
})()"""  # readyState 2: the frame is decoded (and no seek pending); an error counts as settled


class Browser:
    """A headless Chromium and one page, spoken to in DevTools protocol messages over fds 3 and 4."""

    def __init__(self, binary: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            # Copies first, as the pipes may themselves be fds 3..6; dup2 makes 3 and 4 inheritable.
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0,
             session: bool = True) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def open_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True},
                                 session=False)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else ["chromium", "chromium-browser", "google-chrome", "chrome"]):
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    sys.exit("error: no Chromium found; install it (`apt-get install chromium`) or pass --browser PATH")


def screenshot(page: Path, out: Path, width: int, height: int | None, binary: str, wait_s: float) -> Path:
    """Render `page` at `width` px (the whole page, or its top `height` px) into `out`."""
    with tempfile.TemporaryDirectory(prefix="avdit-chromium-") as profile:
        browser = Browser(binary, profile)
        try:
            browser.open_page()
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height or 800, "deviceScaleFactor": 1, "mobile": False})
            browser.send("Page.navigate", {"url": page.resolve().as_uri()})
            deadline = time.monotonic() + wait_s
            while not (browser.evaluate("document.readyState") == "complete" and browser.evaluate(READY)):
                if time.monotonic() > deadline:
                    sys.exit(f"error: the page did not finish loading its clips within {wait_s:g} s")
                time.sleep(0.2)
            full = int(browser.evaluate("document.documentElement.scrollHeight"))
            shot_height = min(full, height) if height else full
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": shot_height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(2.0)  # the new size laid out, and the players' loading spinners faded (on their own clock)
            png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
        finally:
            browser.close()
    from io import BytesIO

    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(BytesIO(png)) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder `avdit generate` wrote (it holds index.html)")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/gallery.png"), help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in px")
    parser.add_argument("--height", type=int, default=None, help="crop to the top N px (default: whole page)")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the clips to load")
    parser.add_argument("--browser", help="the Chromium binary (default: chromium on PATH)")
    args = parser.parse_args()
    page = args.folder / "index.html"
    if not page.is_file():
        sys.exit(f"error: {page} does not exist; run `avdit generate -o {args.folder}` first")
    out = screenshot(page, args.out, args.width, args.height, find_browser(args.browser), args.wait)
    print(f"{out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
