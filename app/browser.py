"""The dashboard in headless chromium: what ``trainmap screenshots`` and the browser tests share.

Selenium is imported inside the functions that need it: it comes with the
``test`` extra (``dash[testing]``), not with trainmap itself, and this module is
imported by ``trainmap screenshots --help`` too.
"""

from __future__ import annotations

import shutil
import time

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "chromedriver"


def wait_for(predicate, timeout=10, message="condition"):
    """Poll ``predicate`` until it returns something true (returned) or raise AssertionError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def cy_elements(driver, selector: str, graph: str = "map-graph") -> int:
    """How many Cytoscape elements of the graph match ``selector`` (-1 before it is drawn)."""
    return driver.execute_script(
        "const el = document.getElementById(arguments[1]);"
        "if (!el || !el._cyreg || !el._cyreg.cy) return -1;"
        "return el._cyreg.cy.elements(arguments[0]).length;",
        selector,
        graph,
    )


def hover_edge(driver, edge_id: str, graph: str = "map-graph", along: float = 1 / 3) -> None:
    """A real pointer move onto the edge, ``along`` (a third) of the way from its source.

    (Not the midpoint: the probability label sits there, and Cytoscape does not
    count labels as part of the edge for pointer events.)
    """
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    x, y = driver.execute_script(
        "const el = document.getElementById(arguments[1]);"
        "const edge = el._cyreg.cy.getElementById(arguments[0]);"
        "const a = edge.renderedSourceEndpoint(), b = edge.renderedTargetEndpoint();"
        "const box = el.getBoundingClientRect();"
        "const f = arguments[2];"
        "return [box.left + a.x + (b.x - a.x) * f, box.top + a.y + (b.y - a.y) * f];",
        edge_id,
        graph,
        along,
    )
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x) + 8, int(y) + 8)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.perform()


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or a sentence saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install 'trainmap[test]' (or pip install selenium)"
    chromium = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    driver = shutil.which(CHROMEDRIVER)
    if chromium is None or driver is None:
        return "needs chromium and chromedriver: apt-get install chromium chromium-driver"
    return chromium, driver


def start_chromium(chromium: str, chromedriver: str, profile: str, width: int, height: int):
    """A headless chromium of ``width`` x ``height`` CSS pixels with its profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless",
        "--no-sandbox",  # runs as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--disk-cache-dir={profile}/cache",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_window_position(0, 0)
    driver.set_window_size(width, height)
    return driver
