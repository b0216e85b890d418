"""The media path: camera and microphone to the media server (see docs/media.md).

One entry: ``from diemcau.media.session import MediaSession``. The package
imports nothing here, so ``diemcau.media.defs`` (faults, profiles, numbers)
can be imported alone; docs/architecture.md has the map of its modules.
"""
