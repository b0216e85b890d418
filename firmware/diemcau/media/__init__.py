"""The media path: camera and microphone to the media server (see docs/media.md)."""
