"""``make demo``: one box joins a meeting, on real parts, on this machine.

Stands up what the centre would have (a Mosquitto broker, an ``ffmpeg`` SRT
listener as the media server, and the meeting's programme: stamped pictures
and a tone served by Debian's ``srt-live-transmit``), one box with simulated
hardware (a test pattern camera, a test tone microphone through ALSA, a TV
that logs what it shows, a speaker that is a file), and drives it with the
centre's own console, ``diemcau-centre``. The centre's web console
(``diemcau-centre console-web``) watches the box and a small simulated fleet
beside it; at the end a headless chromium logs in and saves the fleet page.
Everything it makes is under ``out/demo/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt

from diemcau.core.idlescreen import IdleScreen
from diemcau.core.prompts import PROMPTS
from diemcau.media.idle import VIETNAM_TIME, render
from diemcau.protocol import Event, Reply, State, Status, decode, device_topic
from diemcau_centre.manifest import FleetStore
from tests.harness.alsa import make_microphone, make_speaker
from tests.harness.box import Box, CentreKey
from tests.harness.broker import Broker, free_port, wait_for_port
from tests.harness.console import headless_chromium, log_in, manifest_of
from tests.harness.observer import Observer
from tests.harness.process import stop_process
from tests.harness.programme import ProgrammeFeed
from tests.harness.screen import shown
from tests.harness.simulator import Fleet, FleetSettings
from tests.harness.srt_listener import SrtListener, read_recording, save_frame_png

DEV = "c00001-r1"
MEETING = "giao-ban-2026-11"
OUT = Path("out/demo")
STREAM_S = 10
VOLUME = 80
# The web console's fleet beside the demo box: simulated boxes in three provinces,
# a few never online again after their first connection.
SIMULATED = {f"c{n:05d}-r1": ("p01", "p02", "p79")[n % 3] for n in range(2, 26)}
CONSOLE_USER, CONSOLE_PASSWORD = "admin", "demo-mat-khau"


def say(text: str) -> None:
    print(f"\n\033[1m▶ {text}\033[0m", flush=True)


def centre(*args: str, config: Path) -> int:
    """Run the centre's console as an operator would, showing what it prints."""
    shown = " ".join(a if " " not in a else f"'{a}'" for a in args)
    print(f"  $ diemcau-centre {shown}", flush=True)
    cmd = [sys.executable, "-m", "diemcau_centre", "--config", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    # What it says about itself (stderr: "sent ..., waiting") comes before the replies.
    for line in (proc.stderr + proc.stdout).splitlines():
        print(f"    {line}")
    return proc.returncode


def light_shows(box: Box, state: str, timeout: float = 10.0) -> str:
    """Wait until the box's log says its light shows ``state``; returns that log line's text."""
    deadline = time.time() + timeout
    while True:
        found = re.findall(rf"light: {state} \((.*)\)", box.log_text())
        if found:
            return found[-1]
        if time.time() > deadline:
            return "(not seen)"
        time.sleep(0.1)


def save_idle_screen(path: Path, view: IdleScreen, now: datetime | None = None) -> Path:
    """The TV's idle screen as the room would see it at ``now`` (default: the present), as a PNG."""
    render(view, now or datetime.now(VIETNAM_TIME)).save(path)
    return path


def main() -> int:  # noqa: PLR0915 - a script told as a story, step by step
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    print("diemcau demo: a commune's meeting box, the centre's broker and media server,")
    print(f"all on this machine. Logs and recordings go to {OUT}/.")

    say("Starting the centre's side: an MQTT broker (Mosquitto) and a media server (ffmpeg, SRT)")
    broker = Broker(OUT / "broker")
    broker.start()
    media = SrtListener(OUT / "media", latency_ms=120)
    media.start()
    print(f"  broker on 127.0.0.1:{broker.port}, media server at {media.url}")
    programme = ProgrammeFeed(OUT / "programme").start()
    print(f"  the meeting's programme (what the communes watch: numbered pictures and a 1 kHz "
          f"tone) at {programme.url.split('?')[0]}")

    say("Making the centre's command-signing key")
    key_dir = OUT / "centre"
    subprocess.run([sys.executable, "-m", "diemcau_centre", "keys", "init", "--dir",
                    str(key_dir)], check=True, capture_output=True)
    centre_key = CentreKey.from_file(key_dir / "centre-signing.key")
    centre_cfg = key_dir / "centre.toml"
    centre_cfg.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[mqtt.tls]\nenabled = false\n'
        f'[signing]\nkey_file = "centre-signing.key"\n')
    print(f"  key id {centre_key.kid}; the box trusts this key (its config lists it)")

    console = WebConsole(key_dir, broker, centre_key)
    observer = Observer(broker, centre_key)
    mic = make_microphone(OUT / "mic", seconds=STREAM_S + 60)
    # The room's speaker: the programme and what the box says land in a file.
    speaker = make_speaker(OUT / "speaker", also=mic)
    # The room's TV: no display here (vo = null); the screen process logs each picture it
    # shows and saves the newest, and the idle screen, under out/demo/tv/.
    tv = OUT / "tv"
    screen = (f'[screen]\nenabled = true\nvo = "null"\nspeaker = "{speaker.pcm}"\n'
              f'record_dir = "{tv}"\n')
    # The panel on gpiozero's MockFactory: the demo presses the button with SIGUSR1.
    box = Box(OUT / "box", broker, centre_key, device_id=DEV, env=speaker.env,
              microphone=mic.pcm, health_interval_s=5,
              extra='[panel]\ngpio = "mock"\n' + screen,
              voice=f'enabled = true\npcm = "{speaker.pcm}"\nvolume_percent = {VOLUME}')
    try:
        console.start()
        say("Plugging in the box (simulated camera: test pattern; microphone: a 1 kHz tone)")
        started = time.time()
        box.start()
        birth = observer.wait_for(lambda m: m.topic == device_topic(DEV, "state"), timeout=15)
        print(f"  the box is online: it reported 'ready' {birth.at - started:.2f} s after starting "
              f"(session {decode(birth.payload, State).session})")
        centre("devices", config=centre_cfg)
        print(f"  the TV shows the idle screen: {keep(tv / 'idle.png', 'tv-idle-before.png')}")

        say("The centre invites the box to a meeting starting in 10 minutes; the invitation "
            "says where to send")
        starts = time.time() + 600
        centre("send", DEV, "meeting.invite", "--arg", f"meeting_id={MEETING}",
               "--arg", "title=Họp giao ban tháng 11", "--arg", f"publish={media.url}",
               "--arg", f"play={programme.url}",
               "--arg", "profile=480p25", "--arg", f"starts_at={starts:.0f}",
               "--arg", f"ends_at={starts + 3600:.0f}", config=centre_cfg)
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and decode(m.payload, Status).meeting_state == "invited", timeout=10)
        print(f"  the box is invited: its light blinks green ({light_shows(box, 'invited')}), "
              f"and it says \"{PROMPTS['invited']}\"")

        say("The clerk presses the box's button (simulated: gpiozero's mock pin, driven low "
            "for 0.3 s); the box joins and streams to the media server")
        pressed = time.time()
        box.press()
        live = observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                                 and decode(m.payload, Status).meeting_state == "live",
                                 timeout=20, after=pressed)
        print(f"  live {live.at - pressed:.2f} s after the press; the light is steady green "
              f"({light_shows(box, 'live')})")
        on_tv = observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                                  and decode(m.payload, Status).programme.state == "live",
                                  timeout=20, after=pressed)
        print(f"  the room sees and hears the centre: the programme is on the TV "
              f"{on_tv.at - pressed:.2f} s after the press, its sound on the speaker")
        time.sleep(STREAM_S / 2)

        say("The clerk presses the button again: the room raises its hand to speak")
        pressed = time.time()
        box.press()
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and decode(m.payload, Status).hand_raised, timeout=10, after=pressed)
        print(f"  the light blinks yellow ({light_shows(box, 'hand_raised')}); the centre's "
              "live view of the fleet shows the hand:")
        centre("watch", "--once", config=centre_cfg)

        say("The centre gives the room the floor")
        centre("send", DEV, "floor.grant", config=centre_cfg)
        print(f"  the hand is lowered, the microphone on, the light steady white "
              f"({light_shows(box, 'floor')})")
        time.sleep(STREAM_S / 2)

        say("The centre mutes the box's microphone")
        centre("send", DEV, "audio.mute", config=centre_cfg)
        print(f"  the room's microphone is off; the light is steady red "
              f"({light_shows(box, 'live_muted')})")
        time.sleep(STREAM_S / 2)

        print(f"  what the TV shows now: {keep(tv / 'programme.png', 'tv-programme.png')}")

        say("The centre tells the box to leave")
        left = time.time()
        centre("send", DEV, "meeting.leave", "--timeout", "15", config=centre_cfg)
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and decode(m.payload, Status).programme.state == "off",
                          timeout=20, after=left)
        wait_newer(tv / "idle.png", left)
        print(f"  the TV is back on the idle screen: {keep(tv / 'idle.png', 'tv-idle-after.png')}")

        say("The centre's web console: the fleet as an operator sees it (the demo box and "
            f"{len(SIMULATED)} simulated boxes)")
        console.screenshot(OUT / "console.png")

        say("Stopping the box (as systemd would, SIGTERM)")
        code = box.stop()
        final = observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                                  and b"disconnected" in m.payload, timeout=10)
        print(f"  exit code {code}; last word on its state topic: "
              f"{decode(final.payload, State).state}")
    finally:
        box.stop()
        console.stop()
        recording_path = media.stop()
        programme.stop()
        observer.close()
        broker.stop()

    summary(observer, recording_path)
    far_end(observer, tv, speaker)
    print("  what the box's light showed (its log, out/demo/box/box.log):")
    for when, state, label in re.findall(r"(\d\d:\d\d:\d\d),\d+ INFO diemcau.supervisor: "
                                         r"light: (\S+) \((.*)\)", box.log_text()):
        print(f"    {when}  {state:<12} {label}")
    print("  what the box said through the room's speaker, mixed into the programme "
          "(its log):")
    for when, key in re.findall(r"(\d\d:\d\d:\d\d),\d+ INFO diemcau.voice: said (\S+):",
                                box.log_text()):
        print(f"    {when}  {PROMPTS.get(key, key)}")
    print(f"\nEverything the demo made is in {OUT}/ (box log: {OUT}/box/box.log).")
    print(f"The web console's fleet page, as the operator saw it: {OUT / 'console.png'}.")
    print("To open the console yourself, run (it needs the centre's broker, which the demo "
          "stopped):\n"
          f"  {console.command_line}\n"
          f"and browse http://{console.listen}/ (user {CONSOLE_USER}, password "
          f"{CONSOLE_PASSWORD}).")
    return 0


class WebConsole:
    """``diemcau-centre console-web`` on the demo's broker, with a simulated fleet to watch."""

    def __init__(self, centre_dir: Path, broker: Broker, centre_key: CentreKey) -> None:
        self.dir = OUT / "console"
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = manifest_of({DEV: "p01", **SIMULATED})
        FleetStore(self.dir).save(manifest)
        self.config = centre_dir / "console.toml"
        self.config.write_text(f'fleet_dir = "{self.dir.resolve()}"\n'
                               + (centre_dir / "centre.toml").read_text())
        self.database = f"sqlite:///{self.dir / 'console.db'}"
        self.listen = f"127.0.0.1:{free_port()}"
        self.command_line = (f".venv/bin/diemcau-centre --config {self.config} console-web "
                             f"--database {self.database} --listen {self.listen}")
        self.fleet = Fleet(FleetSettings(
            broker.host, broker.port,
            [(dev, [d.site.province.code, d.site.district.code, d.site.commune.code, "all"])
             for dev, d in manifest.devices.items() if dev != DEV],
            {centre_key.kid: centre_key.public_text}, offline=0.1, health_interval_s=5),
            processes=1)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = [sys.executable, "-m", "diemcau_centre", "--config", str(self.config)]
        subprocess.run([*base, "operator", "add", CONSOLE_USER, "--role", "admin",
                        "--password-stdin", "--database", self.database],
                       input=CONSOLE_PASSWORD + "\n", text=True, check=True,
                       capture_output=True)
        self.fleet.start(timeout_s=30)
        log = (self.dir / "console.log").open("wb")
        self.proc = subprocess.Popen([*base, "console-web", "--database", self.database,
                                      "--listen", self.listen], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(int(self.listen.rsplit(":", 1)[1]), timeout_s=20)

    def screenshot(self, path: Path) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        started = time.monotonic()
        with headless_chromium(1400, 900) as driver:
            log_in(driver, f"http://{self.listen}", CONSOLE_USER, CONSOLE_PASSWORD)
            wait = WebDriverWait(driver, 15)  # type: ignore[arg-type]
            wait.until(ec.presence_of_element_located((By.ID, "fleet-table")))
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-status"), "trực tiếp"))
            wait.until(lambda d: DEV in d.find_element(By.ID, "fleet-table").text)
            count = driver.find_element(By.ID, "fleet-count").text  # type: ignore[attr-defined]
            driver.save_screenshot(str(path))  # type: ignore[attr-defined]
        print(f"  $ {self.command_line}")
        print(f"  an operator logged in at http://{self.listen}/ with a headless chromium: "
              f"{count}, the demo box among them ({time.monotonic() - started:.1f} s)")
        print(f"  the fleet page saved as {path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        self.fleet.stop()


def keep(source: Path, name: str, timeout_s: float = 10.0) -> Path:
    """Copy what the TV showed (``source``, once it is there) to ``out/demo/name``."""
    deadline = time.monotonic() + timeout_s
    while not source.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    target = OUT / name
    shutil.copyfile(source, target)
    return target


def wait_newer(path: Path, than: float, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime > than:
            return
        time.sleep(0.1)


def far_end(observer: Observer, tv: Path, speaker: Any) -> None:
    """What the room saw and heard of the meeting."""
    pictures = [s.number for s in shown(tv) if s.number >= 0]
    figures = [decode(m.payload, Status).programme for m in observer.on(device_topic(DEV, "status"))
               if m.payload and decode(m.payload, Status).programme.state == "live"]
    seconds = len(speaker.played()) / 4 / 48000
    print(f"  the TV showed {len(pictures)} pictures of the programme, numbered "
          f"{pictures[0] if pictures else '-'}..{pictures[-1] if pictures else '-'} "
          f"({'in order' if pictures == sorted(pictures) else 'OUT OF ORDER'}); "
          f"the speaker played {seconds:.1f} s")
    if figures:
        last = figures[-1]
        lag = "unknown" if last.lag_ms is None else f"{last.lag_ms:.0f} ms"
        print(f"  the box's own figures: {last.frames_shown} frames shown, {last.frames_dropped} "
              f"dropped, lag behind the feed {lag}, decoder {last.decoder or '-'}, "
              f"{last.width}x{last.height}")
    print(f"  the TV: {OUT / 'tv-idle-before.png'} (idle), {OUT / 'tv-programme.png'} "
          f"(the programme), {OUT / 'tv-idle-after.png'} (idle again); the room's own "
          f"camera as the centre received it: {OUT / 'frame.png'}")


def summary(observer: Observer, recording_path: Path) -> None:
    say("Summary")
    rec = read_recording(recording_path)
    stamped = rec.stamped
    print(f"  media server received {recording_path} ({recording_path.stat().st_size // 1024} KiB)")
    print(f"  video: {rec.video_codec} {rec.width}x{rec.height}, {len(rec.frame_numbers)} frames "
          f"decoded, frame counters {stamped[0] if stamped else '-'}..{stamped[-1] if stamped else '-'}"
          f" ({'increasing' if stamped == sorted(stamped) else 'OUT OF ORDER'})")
    if rec.audio_codec:
        print(f"  audio: {rec.audio_codec} {rec.audio_sample_rate} Hz, "
              f"{rec.audio.size / max(rec.audio_sample_rate, 1):.1f} s, strongest tone "
              f"{rec.dominant_frequency_hz():.0f} Hz (the microphone plays 1000 Hz)")
    png = OUT / "frame.png"
    number = save_frame_png(recording_path, png, index=len(rec.frame_numbers) // 2)
    print(f"  one received frame saved as {png} (frame counter {number})")

    print("  meeting states the box reported:")
    last = None
    for m in observer.on(device_topic(DEV, "status")):
        status = decode(m.payload, Status)
        row = (status.meeting_state, status.muted, status.hand_raised, status.floor,
               status.stream.state)
        if row != last:
            print(f"    {time.strftime('%H:%M:%S', time.localtime(m.at))}  "
                  f"{status.meeting_state:<8} muted={str(status.muted).lower():<5} "
                  f"hand={str(status.hand_raised).lower():<5} "
                  f"floor={str(status.floor).lower():<5} stream={status.stream.state}")
            last = row

    print("  events the box sent:")
    for m in observer.on(device_topic(DEV, "event")):
        event = decode(m.payload, Event)
        extra = f" {json.dumps(event.data, ensure_ascii=False)}" if event.data else ""
        print(f"    #{event.seq:<3} {event.kind:<20} {event.detail}{extra}")

    print("  replies (time from the command reaching the broker to the reply):")
    sent = {}
    for m in observer.on(device_topic(DEV, "cmd")):
        sent[jwt.decode(m.payload, options={"verify_signature": False})["jti"]] = m.at
    for m in observer.on(device_topic(DEV, "reply")):
        reply = decode(m.payload, Reply)
        if reply.id in sent:
            ms = (m.at - sent[reply.id]) * 1000
            print(f"    {reply.cmd:<15} {reply.status:<10} {reply.code}  {ms:7.1f} ms  {reply.detail}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
