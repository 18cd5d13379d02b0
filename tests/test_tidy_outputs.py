"""Executed notebooks read as a terminal shows them: each progress bar at its last state, a few stream
outputs per cell (scripts/tidy_outputs.py, applied by scripts/run_notebook.py and to figures/cpu/)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tidy_outputs as T  # noqa: E402


def stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def bar_frames(n=1000, desc="FD_clf classifier"):
    return [stream("stderr", f"\r{desc}: {100 * i // n:3d}%| {i}/{n}") for i in range(n + 1)] + [stream("stderr", "\n")]


def test_a_bar_of_a_thousand_frames_is_one_line_at_its_last_state():
    table = {"output_type": "display_data", "data": {"text/markdown": "| a |\n|---|\n| 0.123 |"}, "metadata": {}}
    outs = T.tidy_cell(bar_frames() + [stream("stdout", "accuracy 0.958\n"), stream("stdout", "seed 0: 399 s\n"), table])
    assert outs == [stream("stderr", "FD_clf classifier: 100%| 1000/1000\n"),
                    stream("stdout", "accuracy 0.958\nseed 0: 399 s\n"), table]


def test_frames_cleared_lines_and_plain_text():
    assert T.final_frames("\ra 0%\ra 50%\ra 100%\nnext line\n") == "a 100%\nnext line\n"
    assert T.final_frames("kept\n\rbar 10%\r          \r") == "kept\n"  # a bar that cleared itself (leave=False)
    assert T.final_frames("plain\n\nblank line kept\n") == "plain\n\nblank line kept\n"
    assert T.tidy_cell([stream("stderr", "\r   \r")]) == []


def test_streams_taking_turns_end_as_one_output_per_stream():
    outs = []
    for i in range(30):  # a bar redrawn between prints: stdout and stderr alternate
        outs += [stream("stderr", f"\rcells {i}/30"), stream("stdout", f"cell {i}: {i * 1.5:.1f} s\n")]
    got = T.tidy_cell(outs)
    assert [o["name"] for o in got] == ["stderr", "stdout"]
    assert got[0]["text"] == "cells 29/30" and got[1]["text"] == "".join(f"cell {i}: {i * 1.5:.1f} s\n" for i in range(30))
    few = [stream("stdout", "a\n"), stream("stderr", "w\n"), stream("stdout", "b\n")]
    assert T.tidy_cell(few) == few  # few enough: the order they arrived in is kept


def test_is_tidy_flags_frames_and_too_many_streams():
    assert not T.is_tidy({"cells": [{"cell_type": "code", "outputs": bar_frames(3)}]})
    many = [stream("stdout" if i % 2 else "stderr", f"{i}\n") for i in range(11)]
    assert not T.is_tidy({"cells": [{"cell_type": "code", "outputs": many}]})
    assert T.is_tidy(T.tidy({"cells": [{"cell_type": "code", "outputs": many + bar_frames(3)}]}))


def test_the_cli_rewrites_only_stream_outputs_and_reports_with_check(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=f"\rbar {i}/5") for i in range(6)] + [
        nbformat.v4.new_output("execute_result", data={"text/plain": "0.1234567"}, execution_count=1)])])
    p = tmp_path / "n.ipynb"
    nbformat.write(nb, p)
    cli = [sys.executable, str(ROOT / "scripts" / "tidy_outputs.py")]
    assert subprocess.run([*cli, "--check", str(p)], capture_output=True).returncode == 1
    assert subprocess.run([*cli, str(p)], capture_output=True).returncode == 0
    outs = json.loads(p.read_text())["cells"][0]["outputs"]
    assert [o["output_type"] for o in outs] == ["stream", "execute_result"] and "".join(outs[0]["text"]) == "bar 5/5"
    assert "".join(outs[1]["data"]["text/plain"]) == "0.1234567"
    assert subprocess.run([*cli, "--check", str(p)], capture_output=True).returncode == 0
    r = subprocess.run([*cli, str(tmp_path / "none.ipynb")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such notebook" in r.stderr and "Traceback" not in r.stderr


def test_the_committed_executed_notebooks_are_tidy():
    committed = sorted((ROOT / "figures" / "cpu").glob("*.ipynb"))
    assert committed
    import nbformat
    untidy = [p.name for p in committed if not T.is_tidy(nbformat.read(p, as_version=4))]
    assert not untidy, f"run python scripts/tidy_outputs.py on {untidy}"
