"""Names of the per-trajectory fields rl2f writes into verl's data structures (agent-loop outputs, TransferQueue),
in one place, so the episode that writes them and the loss / metrics / evaluation that read them cannot drift
apart. (The ``rl2f:`` config section: `rl2f_plugin.config`.)
"""

from __future__ import annotations

# --- per-sample fields written by the rl2f agent loops -------------------------------------------------
#: Top-level per-token field (same length as ``response_ids``): 1 on teacher-feedback tokens, else 0.
FEEDBACK_MASK_KEY = "feedback_mask"

#: Keys inside ``AgentLoopOutput.extra_fields``.
EF_TURN_CORRECT = "rl2f_turn_correct"          # list[int] (0/1), one per student turn
EF_TURN_SCORES = "rl2f_turn_scores"            # list[float], verifier score per student turn
EF_SOLVED_AT_TURN = "rl2f_solved_at_turn"      # int, 1-based turn of the first correct answer, 0 = never
EF_NUM_STUDENT_TURNS = "rl2f_num_student_turns"  # int
EF_LEAK_COUNT = "rl2f_leak_count"              # int, leaks caught by the leak guard in this trajectory
EF_LEAKED_TURNS = "rl2f_leaked_turns"          # int, feedback turns that fell back to safe feedback after leaks
EF_FEEDBACK_TOKENS = "rl2f_feedback_tokens"    # int, number of feedback tokens in the response
EF_FEEDBACK_TURNS = "rl2f_feedback_turns"      # int, feedback turns given (metrics fall back to student turns - 1)
EF_TEACHER_LATENCY = "rl2f_teacher_latency_s"  # float, total seconds spent waiting for the teacher
EF_TRUNCATED = "rl2f_truncated"                # int 0/1, the response-length budget was hit
EF_TASK = "rl2f_task"                          # str, task name
EF_MAX_TURNS = "rl2f_max_turns"                # int, K used for this trajectory
EF_TEACHER_ERRORS = "rl2f_teacher_errors"      # int, feedback turns where the teacher failed
EF_FINAL_RESPONSE = "rl2f_final_response"      # str, the student's last reply (= reward_fns.verl_reward.FINAL_RESPONSE_KEY)
# Time-outs, each counted on its own (a timeout is never passed off as a wrong answer or a leak):
EF_VERIFY_TIMEOUTS = "rl2f_verify_timeouts"    # int, replies scored 0 because verification hit a time limit
EF_VERIFY_QUEUE_TIMEOUTS = "rl2f_verify_queue_timeouts"  # int, replies scored 0: no verifier capacity in time
EF_VERIFY_QUEUE_S = "rl2f_verify_queue_s"      # float, seconds verifications and leak checks waited for capacity
EF_LEAK_GUARD_TIMEOUTS = "rl2f_leak_guard_timeouts"  # int, leak checks that timed out (feedback withheld, no leak)
EF_GUARD_TIMEOUT_TURNS = "rl2f_guard_timeout_turns"  # int, feedback turns that fell back after timeouts only
EF_TEACHER_TIMEOUTS = "rl2f_teacher_timeouts"  # int, teacher requests that timed out (rl2f.teacher_timeout_s)
EF_FALLBACKS = "rl2f_fallbacks"                # int, feedback turns that got the safe generic feedback
REWARD_EXTRA_INFO = "reward_extra_info"        # verl's key: dict of numbers logged in validation
