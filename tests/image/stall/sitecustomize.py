"""Test only: stall the box's supervisor loop once, after its first command.

The boot test copies this file into its own copy of the image, with a
systemd drop-in putting this directory on PYTHONPATH; it is never in an
image that is shipped. The loop stops turning (so it stops sending
WATCHDOG=1) while the process and its MQTT thread stay alive: only the
watchdog can notice. A mark in the state directory makes it happen once, so
the restarted box runs normally.
"""

import os
import threading

MARK = "/var/lib/diemcau/test-stalled-once"


def _install() -> None:
    from diemcau.supervisor import Supervisor

    on_command = Supervisor._on_command

    def stalling_on_command(self, event):
        on_command(self, event)
        if not os.path.exists(MARK):
            with open(MARK, "w") as mark:
                mark.write("stalled\n")
            print("test: stalling the supervisor loop", flush=True)
            threading.Event().wait()

    Supervisor._on_command = stalling_on_command


_install()
