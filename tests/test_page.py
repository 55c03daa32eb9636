"""The page at / as a person uses it: a real `qtts serve` on a tiny checkpoint, driven in headless Chromium
(Debian's chromium and chromium-driver, which .ci/run installs) through selenium."""

from __future__ import annotations

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Chromium and its driver (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from servers import ServeProcess  # noqa: E402

pytestmark = pytest.mark.slow
WAIT_SECONDS = 60
FRAMES = 6


@pytest.fixture(scope="module")
def serve(tiny_checkpoint):
    server = ServeProcess(tiny_checkpoint("custom_voice"), "--device", "cpu", "--served-model-name", "tiny")
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def open_page(browser, serve, frames=FRAMES):
    """Load the page; limit each segment to a few frames (random weights rarely end a segment by themselves)."""
    browser.get(serve.url + "/")
    wait = WebDriverWait(browser, WAIT_SECONDS)
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    browser.find_element(By.ID, "settings").click()
    browser.find_element(By.ID, "max-frames").send_keys(str(frames))
    return wait


def body_data(browser, name):
    return browser.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}")


def test_the_page_loads_with_the_models_speakers_and_languages(browser, serve):
    open_page(browser, serve)
    assert "tiny" in browser.find_element(By.ID, "model").text
    speakers = [option.text for option in Select(browser.find_element(By.ID, "speaker")).options]
    assert "ryan" in speakers
    assert browser.find_element(By.ID, "speaker").is_displayed()
    assert not browser.find_element(By.ID, "voice").is_displayed()  # cloned voices are for Base models
    languages = [option.text for option in Select(browser.find_element(By.ID, "language")).options]
    assert languages[0] == "auto" and "english" in languages
    for control in ("text", "play", "stop", "live", "first-audio", "rtf"):
        assert browser.find_element(By.ID, control).is_displayed()
    assert browser.find_element(By.ID, "play").is_enabled()


def test_pressing_play_streams_audio_over_the_websocket_and_reports_first_audio(browser, serve):
    wait = open_page(browser, serve)
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hello from the browser. A second sentence.")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda driver: body_data(driver, "first-audio-ms") is not None)
    wait.until(lambda driver: driver.find_element(By.ID, "status").text.startswith("done"))
    assert float(body_data(browser, "first-audio-ms")) > 0
    assert browser.find_element(By.ID, "first-audio").text.endswith(" ms")
    assert "real time" in browser.find_element(By.ID, "rtf").text
    assert int(body_data(browser, "audio-bytes")) > 0
    assert "2 segment(s)" in browser.find_element(By.ID, "status").text


def test_type_while_it_speaks_sends_text_as_it_is_typed(browser, serve):
    wait = open_page(browser, serve)
    browser.find_element(By.ID, "live").click()
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Typed first.")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda driver: body_data(driver, "state") == "live")
    text.send_keys(" Then more")
    # "Typed first." ends only when the next character is known: audio before Finish proves the typed
    # text left as it was typed.
    wait.until(lambda driver: body_data(driver, "first-audio-ms") is not None)
    assert browser.find_element(By.ID, "play").text == "Finish"
    text.send_keys(" words.")
    browser.find_element(By.ID, "play").click()  # Finish: the end of input
    wait.until(lambda driver: driver.find_element(By.ID, "status").text.startswith("done"))
    assert "2 segment(s)" in browser.find_element(By.ID, "status").text


def test_a_base_model_clones_an_uploaded_clip_and_speaks_in_that_voice(browser, tiny_checkpoint, tmp_path):
    import numpy as np
    import soundfile

    clip = tmp_path / "reference.wav"
    soundfile.write(clip, 0.1 * np.sin(np.arange(48000) / 24000 * 2 * np.pi * 220).astype(np.float32), 24000)
    server = ServeProcess(tiny_checkpoint("base"), "--device", "cpu", "--voices-dir", str(tmp_path / "voices"))
    try:
        wait = open_page(browser, server)
        assert not browser.find_element(By.ID, "speaker").is_displayed()
        browser.find_element(By.ID, "ref-audio").send_keys(str(clip))
        browser.find_element(By.ID, "voice-name").send_keys("sine")
        browser.find_element(By.ID, "clone-button").click()
        wait.until(lambda driver: driver.find_element(By.ID, "clone-status").text.startswith("made voice_"))
        voice = Select(browser.find_element(By.ID, "voice")).first_selected_option
        assert voice.text.startswith("sine (voice_")
        assert server_voices(server) == [voice.get_attribute("value")]
        browser.find_element(By.ID, "play").click()
        wait.until(lambda driver: driver.find_element(By.ID, "status").text.startswith("done"))
        assert int(body_data(browser, "audio-bytes")) > 0
    finally:
        server.close()


def server_voices(server) -> list[str]:
    import httpx

    return [voice["id"] for voice in httpx.get(server.url + "/v1/voices").json()["data"]]
