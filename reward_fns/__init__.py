"""rl2f's verifiers (placeholder; compute_score is added below)."""
