"""The kinspect TUI's widgets: each presents one kind of record, none talks to the target."""
