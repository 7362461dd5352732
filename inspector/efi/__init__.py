"""UEFI structures the firmware leaves behind (pure decoders, no I/O)."""
