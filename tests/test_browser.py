"""Swagger that works: the spec lists the live services and flavors, and "Try it out" in a real
browser (Debian's headless Chromium, driven by Selenium) queues a job on a running gateway.

The browser test needs /usr/bin/chromium and /usr/bin/chromedriver (scripts/install_browser.sh
installs them); without them it is skipped. It saves a picture of the Swagger UI with the answer
in its temporary folder, and refreshes document/swagger.png (the README's) only when
LLM_GATEWAY_UPDATE_SCREENSHOT=1, so a test run leaves the checkout unchanged.
"""
import base64
import json
import os
import shutil

import pytest
import requests
from openapi_spec_validator import validate
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.services.registry import ServiceRegistry
from app.settings import Settings
from app.web import create_app
from tests.manifest_factory import flavor, manifest, write_service
from tests.processes import FakeEngineProcess, Gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSCRIPT = os.path.join(ROOT, "tests", "data", "fr", "fr_small_an_qag_securite_alimentaire_2013-02-12.txt")
README_SCREENSHOT = os.path.join(ROOT, "document", "swagger.png")
GENERATE_OP = "operations-services-post_services__name__generate"  # Swagger UI's id for the operation
# As root, on a machine with a closed network: no sandbox, and no background connections to Google.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")
WAIT = 60  # seconds, for any one thing to appear in the page


def test_spec_lists_live_services_and_flavors(tmp_path):
    """FlavorName carries every flavor; a manifest change shows at the next GET /openapi.json."""
    folder = tmp_path / "services"
    folder.mkdir()
    write_service(str(folder), "two", manifest(name="two", flavors=[flavor("a"), flavor("b")]))
    registry = ServiceRegistry(str(folder))
    registry.reload()
    app = create_app(Settings(db_path=str(tmp_path / "jobs.sqlite"), services_dir=str(folder)), registry=registry)
    assert not app.debug  # flasgger caches its part of the spec outside debug mode: the live part must not be
    client = app.test_client()

    spec = client.get("/openapi.json").get_json()
    validate(spec)
    schemas = spec["components"]["schemas"]
    assert schemas["ServiceName"]["enum"] == ["two"]
    assert (schemas["FlavorName"]["enum"], schemas["FlavorName"]["example"]) == (["a", "b"], "a")
    assert "`two`: a, b" in schemas["FlavorName"]["description"]
    for form in ("GenerateForm", "GenerateJson"):
        assert schemas[form]["properties"]["flavor"] == {"$ref": "#/components/schemas/FlavorName"}

    write_service(str(folder), "one", manifest(name="one", flavors=[flavor("c")]))
    registry.reload()  # what the folder watcher does on a change
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    schemas = spec["components"]["schemas"]
    assert schemas["ServiceName"]["enum"] == ["one", "two"]
    assert schemas["FlavorName"]["enum"] == ["a", "b", "c"]
    assert "`one`: c; `two`: a, b" in schemas["FlavorName"]["description"]

    for path in os.listdir(folder):
        os.remove(folder / path)
    registry.reload()
    spec = client.get("/openapi.json").get_json()
    validate(spec)  # no services: no (empty, invalid) enums
    assert "enum" not in spec["components"]["schemas"]["FlavorName"]


@pytest.fixture
def gateway(tmp_path):
    """The real gateway (supervisor, Gunicorn, runner) on the shipped services, with a fake engine."""
    engine = FakeEngineProcess()
    gw = Gateway(tmp_path, engine.base_url, services_dir=os.path.join(ROOT, "services"), workers=1)
    try:
        yield gw.start()
    finally:
        gw.stop()
        engine.stop()


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium through /usr/bin/chromedriver (Selenium never downloads a driver)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("no chromium/chromedriver on PATH: run scripts/install_browser.sh (Debian's chromium and"
                    " chromium-driver) to run the Swagger UI browser test")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver, top, bottom, path: str) -> None:
    """A PNG of the page between two elements (top of the first to bottom of the second), beyond the window."""
    box = driver.execute_script(
        "const a = arguments[0].getBoundingClientRect(), b = arguments[1].getBoundingClientRect();"
        "return {y: a.top + window.scrollY, height: b.bottom - a.top, width: document.documentElement.clientWidth};",
        top, bottom)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": box["y"] - 10, "width": box["width"], "height": box["height"] + 20, "scale": 1}})
    with open(path, "wb") as handle:
        handle.write(base64.b64decode(shot["data"]))


@pytest.mark.slow
def test_try_it_out_uploads_a_transcript_and_returns_a_job_id(gateway, browser, tmp_path):
    """In Swagger UI: open POST /services/{name}/generate, Try it out, upload a file, Execute: 202 + jobId."""
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{gateway.url}/docs")
    operation = wait.until(EC.presence_of_element_located((By.ID, GENERATE_OP)))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"#{GENERATE_OP} .try-out__btn"))).click()
    execute = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"#{GENERATE_OP} .btn.execute")))

    # The path parameter: a select of the live service names (an input if the spec had no enum).
    name_cell = operation.find_element(By.CSS_SELECTOR, "tr[data-param-name='name'] .parameters-col_description")
    name_selects = name_cell.find_elements(By.TAG_NAME, "select")
    if name_selects:
        Select(name_selects[0]).select_by_value("cra")
    else:
        field = name_cell.find_element(By.TAG_NAME, "input")
        field.clear()
        field.send_keys("cra")

    operation.find_element(By.CSS_SELECTOR, "tr[data-property-name='file'] input[type='file']").send_keys(TRANSCRIPT)
    flavor_select = Select(operation.find_element(By.CSS_SELECTOR, "tr[data-property-name='flavor'] select"))
    assert {"mixtral", "vigostral", "smollm2-135m"} <= {o.get_attribute("value") for o in flavor_select.options}
    flavor_select.select_by_value("smollm2-135m")

    execute.click()
    live = f"#{GENERATE_OP} .live-responses-table .response"
    status_cell = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"{live} .response-col_status")))
    body_pre = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f"{live} .response-col_description .highlight-code pre")))
    assert status_cell.text.strip() == "202", body_pre.text
    body = json.loads(body_pre.text)
    job_id = body["jobId"]

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", body_pre)
    update = os.environ.get("LLM_GATEWAY_UPDATE_SCREENSHOT") == "1"
    screenshot = README_SCREENSHOT if update else str(tmp_path / "swagger.png")
    save_screenshot(browser, operation.find_element(By.CSS_SELECTOR, ".opblock-summary"),
                    operation.find_element(By.CSS_SELECTOR, ".live-responses-table"), screenshot)
    assert os.path.getsize(screenshot) > 10_000          # a picture of the page, not an empty file

    result = requests.get(f"{gateway.url}/results/{job_id}", timeout=10)
    assert result.status_code in (200, 202), result.text
    assert (result.json()["jobId"], result.json()["service"], result.json()["flavor"]) == (job_id, "cra", "smollm2-135m")
    finished = gateway.wait_finished(job_id)
    assert finished["status"] == "complete", finished
    assert "Yves Jégo" in finished["summarization"]  # the uploaded file's speakers reached the engine
