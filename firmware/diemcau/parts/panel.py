"""The room's panel: the status light, the buttons' presses, the voice, identify, factory reset.

The light is recomputed after every event from the room and this part's own
state (the link's phase, identify, a reset under way): it is never set
anywhere else. A press becomes a change of the room (``core.handle_press``)
or, held at start, a factory reset: confirmed by the light and the voice,
then the state directory is erased once the box has stopped.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..core import meeting as core
from ..core.events import ButtonPressed, StopRequested
from ..core.light import LABELS, LightView, Phase, light_for
from ..core.prompts import PROMPTS
from ..ports import Light, Post, Voice

log = logging.getLogger("diemcau.supervisor")  # the supervisor's part, in its journal

RESET_CONFIRM_MAX_S = 15.0  # a factory reset waits for the voice at most this long


class Panel:
    """The light, the voice and what presses mean; both ``light`` and ``voice`` are optional.

    ``emit`` reports an event to the centre; ``post`` puts an event on the
    supervisor's queue (a reset stops the box that way). ``clock`` is the wall
    clock (the schedule), ``monotonic`` times identify and the reset.
    """

    def __init__(self, cfg: Config, *, light: Light | None, voice: Voice | None,
                 emit: Callable[..., None], post: Post, clock: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._light = light
        self._voice = voice
        self._emit = emit
        self._post = post
        self._clock = clock
        self._monotonic = monotonic
        self.join_early_s = cfg.panel.join_early_s if cfg.panel else 900.0
        self.phase: Phase = "starting"  # the link, as the light shows it
        self._identify_until: float | None = None  # monotonic seconds
        self._reset_deadline: float | None = None  # monotonic; set while a reset is confirmed
        self.erased = False  # the state directory was erased: the box starts afresh

    @property
    def resetting(self) -> bool:
        return self._reset_deadline is not None

    @property
    def identifying(self) -> bool:
        return self._identify_until is not None

    # ------------------------------------------------------------ the light

    def light_view(self, room: core.Room, *, updating: bool) -> LightView:
        """What the light shows, from the room and this part's state alone."""
        return LightView.from_room(room, self.phase, hand_raised=room.hand_raised,
                                   identify=self._identify_until is not None,
                                   resetting=self._reset_deadline is not None,
                                   updating=updating)

    def show(self, room: core.Room, *, updating: bool) -> None:
        if self._light is not None:
            pattern = light_for(self.light_view(room, updating=updating))
            if pattern != self._light.shown:
                # The journal tells a technician what the room saw, and when.
                log.info("light: %s (%s)", pattern.state, LABELS[pattern.state][0])
            self._light.show(pattern)

    def close_light(self) -> None:
        if self._light is not None:
            self._light.close()

    # ------------------------------------------------------------ the voice

    def start_voice(self, volume_percent: int) -> None:
        if self._voice is not None:
            if volume_percent != self._cfg.voice.volume_percent:
                self._voice.set_volume(volume_percent)  # as the centre last set it
            self._voice.start()

    def stop_voice(self) -> None:
        if self._voice is not None:
            self._voice.stop()

    def set_volume(self, percent: int) -> None:
        if self._voice is not None:
            self._voice.set_volume(percent)

    def say(self, key: str, text: str | None = None) -> None:
        if self._reset_deadline is not None and key != "factory_reset":
            return  # nothing may push the reset's confirmation out of the voice's queue
        if self._voice is not None:
            self._voice.say(key, text if text is not None else PROMPTS[key])

    def prompt_spoken(self, key: str) -> None:
        if key == "factory_reset" and self._reset_deadline is not None:
            self._post(StopRequested("factory reset"))

    # ------------------------------------------------------------ the link, as the room sees it

    def link_up(self) -> None:
        if self.phase != "ready":
            self.say("connected")
        self.phase = "ready"

    def link_down(self) -> None:
        if self.phase == "ready":
            self.say("link_lost")
        self.phase = "connecting"

    # ------------------------------------------------------------ presses, identify, the schedule

    def press(self, press: ButtonPressed, room: core.Room, *, online: bool) -> core.Outcome | None:
        """Report the press; what it does to the room, or None (a reset, or nothing now)."""
        self._emit("button", meeting_id=room.meeting_id or (
            room.invitation.meeting_id if room.invitation else None),
            detail=press.kind, data={"button": press.button, "press": press.kind,
                                     "held_s": press.held_s})
        if self._reset_deadline is not None:
            return None  # the box is being erased: no press changes anything now
        if press.kind == "reset_hold":
            self._start_factory_reset()
            return None
        return core.handle_press(room, press.button, press.kind, self._clock(),
                                 self.join_early_s, online=online)

    def identify(self, duration_s: float, site: str) -> None:
        """Show ``identify`` on the light for ``duration_s`` and say the site's name."""
        self._identify_until = self._monotonic() + duration_s
        self.say("identify", site)

    def tick(self) -> bool:
        """End identify when due; True if the room's schedule may run (no reset under way)."""
        now_m = self._monotonic()
        if self._identify_until is not None and now_m >= self._identify_until:
            self._identify_until = None
        if self._reset_deadline is not None:
            if now_m >= self._reset_deadline:
                log.warning("factory reset: the voice did not confirm in time; erasing anyway")
                self._post(StopRequested("factory reset"))
            return False
        return True

    # ------------------------------------------------------------ factory reset

    def _start_factory_reset(self) -> None:
        """Confirm with the light and the voice; the state goes once the voice has spoken."""
        log.warning("factory reset requested by the button: erasing %s",
                    self._cfg.device.state_dir)
        self._reset_deadline = self._monotonic() + RESET_CONFIRM_MAX_S
        self._emit("factory_reset", detail="button held at start")
        if self._voice is not None:
            self.say("factory_reset")  # PromptSpoken("factory_reset") then stops the box
        else:
            self._post(StopRequested("factory reset"))

    def erase_if_reset(self) -> None:
        """After a confirmed reset, once the box has stopped: forget identity and state.

        Everything under the state directory goes (not the directory itself).
        """
        if self._reset_deadline is None:
            return
        state = Path(self._cfg.device.state_dir)
        for child in state.iterdir() if state.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        self.erased = True
        log.warning("factory reset: %s erased; the box starts afresh", state)
