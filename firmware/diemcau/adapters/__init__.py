"""Adapters: each wraps one outside thing (MQTT, media, /sys, disk)."""
