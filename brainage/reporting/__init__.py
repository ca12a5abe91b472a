"""Reporting for brainage (see DESIGN.md)."""
