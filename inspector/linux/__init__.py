"""What kinspect knows about Linux kernels: their unwind tables and symbols, read from outside."""
