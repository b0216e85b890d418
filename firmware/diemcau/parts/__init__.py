"""The supervisor's parts: small pieces of its work, each run on its thread only.

The supervisor (:mod:`diemcau.supervisor`) owns them and calls them from its
loop; none has a thread, a lock or a reference back to the supervisor. Each
is given the ports it drives (:mod:`diemcau.ports`) and a few callbacks.

- :mod:`.commands`: verification, the replay cache, replies, ``keys.update``
- :mod:`.reporting`: what the centre is told (status, meta, health, alerts,
  events) and the outbox with its messages in flight
- :mod:`.updates`: the firmware update workflow
- :mod:`.panel`: the room's light, buttons and voice; identify; factory reset
"""
