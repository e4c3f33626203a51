"""The processing flow: steps, readiness rules, provenance, scheduling and invalidation (*what* runs next)."""
