"""Linux as it ships: the kernel recognized in memory, its symbols and unwind tables
without files.

``guest`` boots a stock Debian kernel under QEMU for tests and demos; ``kallsyms``
decodes the kernel's own symbol tables from its memory; ``orc`` reads its ORC
unwind tables.
"""
