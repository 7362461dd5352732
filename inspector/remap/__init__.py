"""Remaps through the in-kernel agent: plans (pure), a journal on disk, applying and verifying.

``plan`` decides what to write and what a change would take away, from the
map and registers it is given; ``journal`` keeps every step on disk before it
is acknowledged; ``apply`` talks to the agent and walks again to verify.
"""
