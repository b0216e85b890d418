"""The firmware update workflow: replies, the ``updating`` state, the restart.

The policy is core/update.py's, the file work the releases port's
(adapters/releases.py; see docs/updates.md). A ``firmware.update`` is
verified and accepted here, downloaded and installed off the loop
(``download``), and the box restarts into the new release once no meeting
would be cut short; online again, the new release commits itself and
reports how the update ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..config import Config
from ..core import meeting as core
from ..core import update as update_policy
from ..core.events import UpdateFailed, UpdateInstalled, UpdateProgress
from ..ports import Download, Link, Post, Releases
from ..protocol import State, device_topic, encode, now_ts, public_key_from_text
from ..protocol.arguments import UPDATE_COMMAND

log = logging.getLogger("diemcau.supervisor")  # the supervisor's part, in its journal

UPDATE_CMD = UPDATE_COMMAND


def _run_update(releases: Any, manifest: Any, cid: str, post: Post, ca_file: str) -> object:
    from ..adapters.releases import run_update  # the download code loads only when needed

    return run_update(releases, manifest, cid, post, ca_file=ca_file)


class Updates:
    """One update at a time, from ``firmware.update`` to the restart into the new release.

    ``releases`` is None on a box that takes no updates. ``reply`` and
    ``emit`` answer and report (the commands and reporting parts);
    ``expiry(cid)`` and ``owe(cid, exp)`` are the command's record;
    ``restart(reason)`` ends the run so that the service starts the new release.
    """

    def __init__(self, cfg: Config, *, releases: Releases | None, link: Link,
                 reply: Callable[[core.ReplyDraft], None], emit: Callable[..., None],
                 expiry: Callable[[str], float | None], owe: Callable[[str, float], None],
                 post: Post, restart: Callable[[str], None], clock: Callable[[], float],
                 download: Download = _run_update) -> None:
        self._cfg = cfg
        self._dev = cfg.device.id
        self._releases = releases
        self._link = link
        self._reply = reply
        self._emit = emit
        self._expiry = expiry
        self._owe = owe
        self._post = post
        self._restart = restart
        self._clock = clock
        self._download = download
        self._update: tuple[str, str] | None = None  # (command id, version) under way
        self._installed = False  # installed; waits for the meeting to end

    @property
    def under_way(self) -> tuple[str, str] | None:
        """(command id, version) of the update under way, if any."""
        return self._update

    def _exp(self, cid: str) -> float:
        exp = self._expiry(cid)
        return exp if exp is not None else self._clock() + 3600

    def start(self, cid: str, token: str) -> None:
        """``firmware.update``: verify the manifest, accept, and download off the loop."""
        from ..protocol.release import ManifestRejected, verify_manifest

        def refuse(code: int, detail: str) -> None:
            log.warning("firmware.update refused: %s", detail)
            self._reply(core.ReplyDraft(cid, UPDATE_CMD, "rejected", code, detail))

        releases, keys = self._releases, self._cfg.updates.release_keys
        if releases is None or not keys:
            return refuse(403, "this box takes no updates: no release keys in its configuration")
        if self._update is not None:
            return refuse(409, f"an update to {self._update[1]} is already under way")
        try:
            manifest = verify_manifest(token, {k: public_key_from_text(v) for k, v in keys.items()})
            update_policy.check_manifest(
                manifest.version, url=manifest.url, sha256=manifest.sha256,
                size_bytes=manifest.size_bytes, running=__version__, minimum=releases.minimum())
        except (ManifestRejected, update_policy.UpdateRefused) as exc:
            return refuse(exc.code, exc.detail)
        try:
            releases.accept(manifest.version, cid, self._exp(cid))
        except OSError as exc:
            log.error("cannot write the update record: %s", exc)
            return self._reply(core.ReplyDraft(cid, UPDATE_CMD, "failed", 500,
                                               f"cannot write the update record: {exc}"))
        self._update = (cid, manifest.version)
        self._reply(core.ReplyDraft(cid, UPDATE_CMD, "accepted", 202,
                                    f"updating {__version__} -> {manifest.version}"))
        self._publish_updating()
        self._download(releases, manifest, cid, self._post, self._cfg.updates.ca_file)

    def on_event(self, event: UpdateProgress | UpdateInstalled | UpdateFailed,
                 meeting_state: core.MeetingState) -> None:
        """What the download reported; ``meeting_state`` decides whether to restart now."""
        if self._update is None or event.command_id != self._update[0]:
            return
        cid, version = self._update
        match event:
            case UpdateProgress(detail=detail):
                self._reply(core.ReplyDraft(cid, UPDATE_CMD, "in_progress", 202, detail))
            case UpdateFailed(code=code, detail=detail):
                log.error("update to %s failed: %s", version, detail)
                self._update = None
                assert self._releases is not None
                self._releases.drop_pending()
                self._reply(core.ReplyDraft(cid, UPDATE_CMD, "failed", code, detail))
                self._emit("update_failed", detail=f"{version}: {detail}")
                if self._link.connected:
                    self._link.publish_birth()  # back to `ready`
            case UpdateInstalled():
                self._installed = True
                if update_policy.may_restart(meeting_state):
                    self._restart_into_update()
                else:  # a meeting began meanwhile: never cut it short
                    self._reply(core.ReplyDraft(
                        cid, UPDATE_CMD, "in_progress", 202,
                        f"installed {version}; restarting into it when the meeting ends"))

    def room_changed(self, meeting_state: core.MeetingState) -> None:
        """An installed update waits for the meeting to end: restart once it may."""
        if self._installed and update_policy.may_restart(meeting_state):
            self._restart_into_update()

    def _restart_into_update(self) -> None:
        from ..adapters.releases import InstallError

        assert self._update is not None and self._releases is not None
        cid, version = self._update
        self._installed = False
        try:
            self._releases.begin_trial(version, cid, self._exp(cid))
        except (InstallError, OSError) as exc:  # nothing switched: stay on this release
            return self.on_event(UpdateFailed(cid, 500, f"cannot switch: {exc}"), "idle")
        self._reply(core.ReplyDraft(
            cid, UPDATE_CMD, "in_progress", 202,
            f"installed {version}; restarting into it (it must connect within "
            f"{self._cfg.updates.health_deadline_s:g} s or the box goes back)"))
        self._restart(f"restarting into release {version}")

    def _publish_updating(self) -> None:
        if self._link.connected:
            state = State(state="updating", session=self._link.session, ts=now_ts())
            self._link.publish(device_topic(self._dev, "state"), encode(state), qos=1, retain=True)

    def link_up(self) -> None:
        """Online: commit this release if it is on trial, then say how the last update ended."""
        releases = self._releases
        if releases is None:
            return
        if self._update is not None:
            self._publish_updating()  # the birth said `ready`; still downloading
            return
        releases.commit(__version__)
        outcome = releases.take_unreported()
        if outcome is None:
            return
        ok = outcome.result == "committed"
        reply = core.ReplyDraft(outcome.command_id, UPDATE_CMD, "succeeded" if ok else "failed",
                                200 if ok else 500, outcome.detail)
        self._owe(outcome.command_id, outcome.command_exp)  # so the replay cache keeps it
        self._reply(reply)
        self._emit(f"update_{outcome.result}", detail=outcome.detail,
                   data={"version": outcome.version, "running": __version__})
        releases.mark_reported()
