"""A third-party package adds a task through the ``rl2f.tasks`` entry-point group, without touching rl2f.

The "package" is a real installed distribution as importlib.metadata sees it: a module plus a ``.dist-info``
folder with ``entry_points.txt`` on ``sys.path`` of a fresh interpreter (so this process's registry is not
touched). It is the README's "Adding a task" example.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

README_TASK = '''
from rl2f_plugin.tasks import Task, VerifyResult, register_task

@register_task("my_units")
class UnitsTask(Task):
    answer_format_instruction = "End with 'Answer: <value> <unit>'."
    teacher_guidance = "Check the unit conversions first."

    def extract_answer(self, response):
        for line in reversed(response.splitlines()):
            if line.strip().lower().startswith("answer:"):
                return line.split(":", 1)[1].strip()
        return None

    def verify(self, response, ground_truth, extra_info=None):
        answer = self.extract_answer(response)
        ok = answer is not None and answer.strip().lower() == str(ground_truth).lower()
        return VerifyResult(score=float(ok), extracted=answer, reason="" if ok else "wrong value or unit")

class BrokenTask:  # not a Task: the entry point below must be reported, not crash the registry
    pass
'''


def _make_distribution(root: Path, entry_points: str) -> None:
    (root / "my_pkg").mkdir()
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "tasks.py").write_text(README_TASK)
    dist = root / "my_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)


def _run(root: Path, code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=180, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_entry_point_task_is_found_and_verifies(tmp_path):
    _make_distribution(tmp_path, "[rl2f.tasks]\nmy_units = my_pkg.tasks:UnitsTask\nmissing = my_pkg.nope:Nothing\n")
    out = _run(tmp_path, """
        import json, logging
        records = []
        class H(logging.Handler):
            def emit(self, r): records.append((r.levelname, r.getMessage()))
        logging.getLogger("rl2f_plugin").addHandler(H())
        from rl2f_plugin.tasks import get_task, list_tasks
        from reward_fns.verl_reward import compute_score
        task = get_task("my_units")
        good = task.verify("1 km is 1000 m, so 3000 m is 3 km.\\nAnswer: 3 km", "3 km")
        bad = task.verify("Answer: 3 m", "3 km")
        score = compute_score("units", "Answer: 3 km", "3 km", {"task": "my_units"})
        print(json.dumps({"tasks": list_tasks(), "good": good.score, "bad": [bad.score, bad.reason],
                          "prompt": task.render_prompt("How far?")[0]["content"], "score": score["score"],
                          "warnings": [m for lvl, m in records if lvl == "WARNING"]}))
    """)
    assert "my_units" in out["tasks"] and "math" in out["tasks"]
    assert out["good"] == 1.0 and out["bad"] == [0.0, "wrong value or unit"]
    assert out["prompt"] == "How far?\n\nEnd with 'Answer: <value> <unit>'."
    assert out["score"] == 1.0
    # the broken entry point is reported by name, and did not stop the good one from loading
    assert any("missing" in w and "my_pkg.nope" in w for w in out["warnings"]), out["warnings"]


def test_unknown_task_error_names_known_tasks_including_plugins(tmp_path):
    _make_distribution(tmp_path, "[rl2f.tasks]\nmy_units = my_pkg.tasks:UnitsTask\n")
    out = _run(tmp_path, """
        import json
        from rl2f_plugin.tasks import get_task, UnknownTaskError
        try:
            get_task("my_unit")
        except UnknownTaskError as e:
            print(json.dumps({"msg": str(e)}))
    """)
    assert out["msg"].startswith("unknown task 'my_unit'; known tasks: ")
    assert "my_units" in out["msg"] and "math" in out["msg"]
