"""Interpret for brainage (see DESIGN.md)."""
