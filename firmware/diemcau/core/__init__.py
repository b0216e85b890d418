"""The pure core: state machine, command policy, alert rules. No I/O, no threads."""
