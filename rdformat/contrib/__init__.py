"""Optional extras built on the public API and a framework (imported only when used)."""
