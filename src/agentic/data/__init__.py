"""Data files shipped with agentic (the price table)."""
