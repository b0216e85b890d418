"""Commands from the centre: verified, run once, and answered.

A command is verified (signature, audience, lifetime), checked against the
replay cache (a second delivery gets the first result back, marked
``duplicate``), remembered, and handed to the supervisor to run; every
command gets a reply, even when running it fails. Each reply is recorded in
the replay cache with the command's expiry and goes out through the outbox.
``keys.update`` is run here: it changes what verification trusts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..adapters.enroll import store_centre_keys
from ..config import Config
from ..core import meeting as core
from ..core.events import CommandArrived
from ..core.scrub import scrub
from ..ports import Replay
from ..protocol import (
    Command,
    CommandRejected,
    Reply,
    device_topic,
    encode,
    now_ts,
    public_key_from_text,
    public_keys_from_text,
    verify_command,
)
from ..protocol.arguments import UPDATE_COMMAND, BadKeyUpdate, key_update

log = logging.getLogger("diemcau.supervisor")  # the supervisor's part, in its journal

UPDATE_CMD = UPDATE_COMMAND


class Commands:
    """Verification, the replay cache and replies.

    ``send_reliable(topic, payload)`` puts a reply in the outbox within the
    current durable step; ``clock_synced()`` says whether the wall clock can
    be trusted for ``iat`` and ``exp``.
    """

    def __init__(self, cfg: Config, *, replay: Replay,
                 send_reliable: Callable[[str, bytes], None],
                 clock: Callable[[], float], clock_synced: Callable[[], bool]) -> None:
        self._cfg = cfg
        self._dev = cfg.device.id
        self._replay = replay
        self._send_reliable = send_reliable
        self._clock = clock
        self._clock_synced = clock_synced
        self.policy = core.Policy(frozenset(cfg.commands.allowed_schemes),
                                  frozenset(cfg.commands.media_hosts))
        self._keys = {kid: public_key_from_text(text)
                      for kid, text in cfg.commands.centre_keys.items()}
        self._audiences = cfg.audiences
        self._command_exp: dict[str, float] = {}  # pending command id -> its exp
        self._handling: tuple[str, str] | None = None  # (id, name) of the command being handled

    @property
    def key_ids(self) -> list[str]:
        """The centre keys trusted now."""
        return sorted(self._keys)

    def handle(self, event: CommandArrived, run: Callable[[Command, float], None]) -> None:
        """Verify, answer a replay or remember the command, then ``run(command, now)``.

        ``keys.update`` is run here. Any exception becomes a ``failed`` 500 reply.
        """
        self._handling = None
        try:
            self._verify_and_handle(event, run)
        except Exception as exc:  # noqa: BLE001 - every command gets a reply, even on a bug
            log.exception("error handling a command on %s", event.topic)
            if self._handling is not None:
                cid, cmd = self._handling
                self.reply(core.ReplyDraft(cid, cmd, "failed", 500,
                                           f"the box could not carry it out "
                                           f"({type(exc).__name__}); see its log"))

    def _verify_and_handle(self, event: CommandArrived,
                           run: Callable[[Command, float], None]) -> None:
        now = self._clock()
        try:
            command = verify_command(event.payload, self._keys, self._audiences, now=now,
                                     clock_synced=self._clock_synced(),
                                     leeway_s=self._cfg.commands.leeway_s,
                                     max_lifetime_s=self._cfg.commands.max_token_lifetime_s)
        except CommandRejected as rej:
            log.warning("command refused on %s: %s %d %s (id=%s)", event.topic, rej.status,
                        rej.code, rej.detail, rej.id)
            self.reply(core.ReplyDraft(rej.id, rej.cmd, rej.status, rej.code, rej.detail))
            return

        first = self._replay.first_result(command.id)
        if first is not None:
            log.info("duplicate command %s (%s): first result %s", command.id, command.cmd,
                     first.status)
            self.reply(core.ReplyDraft(command.id, command.cmd, "duplicate", first.code,
                                       first.detail), first_status=first.status, remember=False)
            return
        self._replay.remember(command.id, command.exp)
        self._command_exp[command.id] = command.exp
        self._handling = (command.id, command.cmd)
        log.info("command %s %s args=%s", command.id, command.cmd, _short(command.args))
        if command.cmd == "keys.update":
            self._update_keys(command.id, command.args)
            return
        run(command, now)

    def _update_keys(self, cid: str, args: dict[str, Any]) -> None:
        """``keys.update``: the whole new set of centre keys, persisted before it is used."""
        try:
            texts = key_update(args)
            keys, problems = public_keys_from_text(texts, "keys")
            if problems:
                raise BadKeyUpdate(problems[0])
        except BadKeyUpdate as exc:
            self.reply(core.ReplyDraft(cid, "keys.update", "rejected", 400, str(exc)))
            return
        try:
            store_centre_keys(Path(self._cfg.device.state_dir), texts)
        except OSError as exc:
            log.error("cannot store the new centre keys: %s", exc)
            self.reply(core.ReplyDraft(cid, "keys.update", "failed", 500,
                                       f"cannot store the keys: {exc.strerror}"))
            return
        self._keys = keys
        log.warning("centre keys replaced: now %s", ", ".join(sorted(keys)))
        self.reply(core.ReplyDraft(cid, "keys.update", "succeeded", 200,
                                   f"centre keys: {', '.join(sorted(keys))}"))

    # ------------------------------------------------------------ replies

    def reply(self, draft: core.ReplyDraft, *, first_status: str | None = None,
              remember: bool = True) -> None:
        """Record the reply in the replay cache (a pending command's) and send it reliably."""
        reply = Reply(id=draft.id, cmd=draft.cmd, status=draft.status,  # type: ignore[arg-type]
                      code=draft.code, detail=draft.detail, ts=now_ts(),
                      first_status=first_status)  # type: ignore[arg-type]
        if remember and draft.id is not None and draft.id in self._command_exp:
            self._replay.remember(draft.id, self._command_exp[draft.id], reply)
            if draft.status not in ("accepted", "in_progress"):
                self._command_exp.pop(draft.id, None)
        self._send_reliable(device_topic(self._dev, "reply"), encode(reply))

    def expiry(self, cid: str) -> float | None:
        """The expiry of a command still owed a final reply."""
        return self._command_exp.get(cid)

    def owe(self, cid: str, exp: float) -> None:
        """A command from before (a restart) is owed a reply: keep its record until ``exp``."""
        self._command_exp[cid] = exp

    def purge(self) -> None:
        """Forget commands past their expiry (only with a synchronised clock)."""
        if self._clock_synced():
            self._replay.purge(self._clock(), self._cfg.commands.leeway_s)

    def finish_interrupted(self) -> None:
        """The final reply that a 202 promised, for commands the last run did not finish.

        A restart ends whatever meeting the box was in: a join never finished
        has failed, a leave has happened. ``firmware.update`` has its own
        record (the release store), reported once the box is online.
        """
        for cid, exp, reply in self._replay.unfinished():
            cmd = reply.cmd if reply is not None else None
            if cmd == UPDATE_CMD:
                continue
            if cmd in ("meeting.leave", "meeting.cancel"):
                final = core.ReplyDraft(cid, cmd, "succeeded", 200,
                                        "the box restarted, which ended the meeting")
            else:
                doing = f" ({reply.detail})" if reply is not None and reply.detail else ""
                final = core.ReplyDraft(cid, cmd, "failed", 500,
                                        f"the box restarted before it finished{doing}; "
                                        "it is not in the meeting: send the command again")
            log.warning("command %s (%s) was interrupted by a restart: %s %d", cid, cmd,
                        final.status, final.code)
            self._command_exp[cid] = exp
            self.reply(final)


def _short(args: dict[str, Any]) -> str:
    """Arguments for the log: short, and without credentials (``core.scrub``)."""
    text = scrub(repr(args))
    return text if len(text) <= 200 else text[:200] + "…"
