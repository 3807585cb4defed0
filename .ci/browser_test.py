"""Open the built site in headless Chromium, as a reader would, and fail on what a reader meets.

Usage: ``python .ci/browser_test.py [HTML_DIR] [--screenshots DIR]`` (default
``docs/_build/html``), after ``python -m sphinx -b html docs docs/_build/html``. Needs Debian's
``chromium`` (``.ci/run`` installs it); outside the required test suite for that reason.

The site is served from 127.0.0.1; each page gets a small script that waits for MathJax and
reports, in the DOM that ``chromium --dump-dom`` prints:

- raw LaTeX: text still holding ``\\(`` or ``\\[`` outside code, i.e. a formula not rendered;
- clipped or overflowing elements: an element of the article that hides part of its content
  (``overflow: hidden`` with ``scrollWidth > clientWidth``), or whose box or visibly
  overflowing content reaches past the article's right edge (code blocks and tables scroll
  inside the column instead);
- broken links: a link to a page of the site that does not exist, or to an anchor that page
  does not have (checked here against the files);
- a code block without a copy button, or whose button copies ``>>> `` / ``... `` prompts
  (the site's ``copybutton.js`` formatting, run on the block's text);
- a search (``search.html?q=batch_scaled_l2``) that finds nothing.

Pages: the index, a guide, the formulas and conventions pages, every API page (one per public
module), the module index, the CLI reference, the benchmarks, an example notebook and a search.
Exit status 1 naming each problem, else 0.
"""
from __future__ import annotations

import argparse
import functools
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index.html", "guides/train_state.html", "formulas.html", "conventions.html",
         "cli.html", "benchmarks.html", "examples/05_nnx.html", "api/index.html",
         "py-modindex.html", "search.html?q=batch_scaled_l2"]
SCREENSHOTS = ["index.html", "formulas.html", "conventions.html", "api/nn.html",
               "api/transforms.html", "guides/from_add_decayed_weights.html",
               "examples/index.html", "examples/05_nnx.html"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1280,900"]
# Runs in the page: waits for MathJax, then writes its findings into <body data-site-check>.
CHECK = r"""<script>
window.addEventListener("load", async () => {
  try { await check(); } catch (error) {
    document.body.setAttribute("data-site-check", JSON.stringify({error: String(error)}));
  }
});
async function check() {
  if (window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
  const article = document.querySelector("article") || document.body;
  const right = article.getBoundingClientRect().right;
  const found = {raw_latex: [], clipped: [], links: [], code: 0, scrolling: 0, results: -1};
  if (location.pathname.endsWith("/search.html")) {  // the search runs after the index loads
    for (let i = 0; i < 100 && !document.querySelector("#search-results li"); i++)
      await new Promise((done) => setTimeout(done, 100));
    found.results = document.querySelectorAll("#search-results li").length;
  }
  const texts = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  while (texts.nextNode()) {
    const node = texts.currentNode;
    if (/\\[(\[]/.test(node.textContent) && !node.parentElement.closest("pre, code, script"))
      found.raw_latex.push(node.textContent.trim().slice(0, 80));
  }
  for (const el of article.querySelectorAll("*")) {
    if (el.closest("mjx-container, mjx-assistive-mml") || !el.getClientRects().length) continue;
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    const what = el.tagName.toLowerCase() + (el.className ? "." + el.className : "") + ": " +
      (el.textContent || "").trim().slice(0, 60);
    const hides = ["hidden", "clip"].includes(style.overflowX);
    if (hides && el.scrollWidth > el.clientWidth + 1)
      found.clipped.push(what + ` (${el.scrollWidth} px shown in ${el.clientWidth} px)`);
    const spill = style.overflowX === "visible" ? el.scrollWidth : 0;
    const reach = Math.max(box.right, box.left + spill);
    if (reach > right + 1 && !el.closest(".table-wrapper, div.highlight, .cell_output"))
      found.clipped.push(what + ` (reaches ${Math.round(reach - right)} px past the column)`);
  }
  for (const pre of article.querySelectorAll("pre")) {
    found.code += 1;
    if (pre.scrollWidth > pre.clientWidth + 1) found.scrolling += 1;
  }
  // What each copy button copies (copybutton.js's call with the site's settings, run on the
  // block's text by the package's own copybutton_funcs.js): no `>>> ` / `... ` prompts.
  found.copy = [];
  const script = [...document.scripts].find((s) => /copybutton\.js/.test(s.src));
  const call = script && (await (await fetch(script.src)).text())
    .match(/return (formatCopyText\(text, .*\))/);
  const {formatCopyText} = call ? await import(new URL("copybutton_funcs.js", script.src)) : {};
  for (const block of article.querySelectorAll("div.highlight")) {
    const text = block.querySelector("pre").innerText;
    if (!block.querySelector("button.copybtn") || !call) {
      found.copy.push("no copy button: " + text.slice(0, 60));
      continue;
    }
    const copied = Function("formatCopyText", "text", "return " + call[1])(formatCopyText, text);
    if (/^(>>>|\.\.\.) /m.test(copied)) found.copy.push("copies prompts: " + copied.slice(0, 60));
  }
  for (const a of document.querySelectorAll("a[href]")) found.links.push(a.href);
  document.body.setAttribute("data-site-check", JSON.stringify(found));
}
</script>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site, adding the check script to every page."""

    def log_message(self, format, *args):  # quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def chromium(*args: str) -> str:
    """Runs headless Chromium with a fresh profile; returns its stdout."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("browser_test: no chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                             capture_output=True, text=True, timeout=120, check=False)
    return run.stdout


def anchors(page: Path) -> set[str]:
    """The ids a page has."""
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))


def check_page(site: Path, base: str, page: str, code: list[int]) -> list[str]:
    """The problems a reader meets on one page; adds its code blocks, and how many of them
    scroll sideways, to ``code``."""
    dom = chromium("--dump-dom", f"{base}/{page}")
    match = re.search(r'data-site-check="([^"]*)"', dom)
    if match is None:
        return [f"{page}: the page did not finish loading (no check result)"]
    found = json.loads(html.unescape(match.group(1)))
    if "error" in found:
        return [f"{page}: the check script failed: {found['error']}"]
    code[0] += found["code"]
    code[1] += found["scrolling"]
    problems = [f"{page}: raw LaTeX (formula not rendered): {t!r}" for t in found["raw_latex"]]
    problems += [f"{page}: {c}" for c in found["copy"]]
    if found["results"] == 0:
        problems.append(f"{page}: the search found nothing")
    problems += [f"{page}: code or content wider than the column: {c}" for c in found["clipped"]]
    for href in sorted(set(found["links"])):
        url = urlsplit(urljoin(f"{base}/{page}", href))
        if f"{url.scheme}://{url.netloc}" != base:
            continue  # another site: not reachable from here
        target = site / unquote(url.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{page}: broken link {href} (no {target.relative_to(site)})")
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in anchors(
                target):
            problems.append(f"{page}: broken link {href} (no #{url.fragment})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", type=Path, default=ROOT / "docs/_build/html")
    parser.add_argument("--screenshots", type=Path, help="write PNG screenshots here")
    args = parser.parse_args()
    site = args.site.resolve()
    pages = PAGES + sorted(p.relative_to(site).as_posix() for p in (site / "api").glob("*.html"))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code = [0, 0]
        problems = [p for page in dict.fromkeys(pages) for p in check_page(site, base, page, code)]
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            for page in SCREENSHOTS:
                out = args.screenshots / (page.replace("/", "_").removesuffix(".html") + ".png")
                chromium("--window-size=1280,2400", f"--screenshot={out}", f"{base}/{page}")
    finally:
        server.shutdown()
    for problem in problems:
        print(problem)
    print(f"browser_test: {len(dict.fromkeys(pages))} pages, {len(problems)} problems; "
          f"{code[1]} of {code[0]} code blocks scroll sideways (at 1280 px)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
