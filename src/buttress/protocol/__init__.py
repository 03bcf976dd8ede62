"""Fallback protocols: what a call does when its resource fails."""
