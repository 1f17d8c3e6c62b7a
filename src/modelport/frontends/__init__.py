"""Frontends translate wire formats into DataPlane calls and back; they decide nothing."""
