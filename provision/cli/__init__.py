"""The `provision` command: the only package that prints or exits; nothing imports it."""
