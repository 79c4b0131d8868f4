"""Storage registry (placeholder)."""
