"""Stats for brainage (see DESIGN.md)."""
