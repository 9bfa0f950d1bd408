"""Stores: sandboxes, containers and names; immutable metadata apart from mutable status."""
