"""rl2f's verifiers, and verl's reward entry point `reward_fns.verl_reward.compute_score`.

In a verl 0.9.1 recipe::

    reward.custom_reward_function.path=pkg://reward_fns.verl_reward
    reward.custom_reward_function.name=compute_score

Modules (one concept each): `extraction` (final-answer extraction), `math_verifier`, `code_sandbox`,
`arc_grid`, `exact_match` (exact + multiple choice), `reasoning_gym_verifier`, `worker_pool` (the
time-bounded verifier processes), `common` (`VerifyResult`, limits, `set_limits`), `verl_reward`
(`compute_score`, the one module that uses `rl2f_plugin`: its task registry).

This package's ``__init__`` imports nothing, so the verifiers can be used without `rl2f_plugin`.
"""
