"""Frontends translate wire formats into InferenceServer calls and back; they decide nothing."""
