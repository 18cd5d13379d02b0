"""Live progress over training runs that run as subprocesses (notebook 03): read from each run's loss.csv."""
import io
import sys

from lib.infra import processes
from lib.infra.progress import RunsProgress, logged_step


def test_logged_step_reads_the_last_row(tmp_path):
    f = tmp_path / "loss.csv"
    assert logged_step(f) == 0  # not written yet
    f.write_text("step,loss,lr\n")
    assert logged_step(f) == 0
    f.write_text("step,loss,lr\n50,0.9,0.001\n100,0.8,0.001\n" + "".join(f"{s},0.5,0.001\n" for s in range(150, 9000, 50)))
    assert logged_step(f) == 8950


def test_plain_progress_prints_steps_per_run_with_speed(tmp_path):
    clock = [100.0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    out = io.StringIO()
    p = RunsProgress({"a": ("images baseline s0", a, 1000), "b": ("toy s2dm s1", b, 200)}, every=10, live=False, out=out,
                     clock=lambda: clock[0])
    p.update(running=["a", "b"])
    a.write_text("step,loss\n50,0.5\n")
    p.update(running=["a", "b"])  # the first logged step: the speed counts from here
    a.write_text("step,loss\n300,0.5\n")
    clock[0] += 5
    p.update(running=["a", "b"])  # within `every`: no line
    clock[0] += 6
    p.update(running=["a", "b"])
    b.write_text("step,loss\n200,0.5\n")
    p.update(running=["a"], finished=["b"])  # a run finished: a line at once
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "0/1,200 steps" in lines[0]
    assert "300/1,200 steps (25 %)" in lines[1] and "images baseline s0 300/1,000 at 22.7 steps/s" in lines[1]
    assert "500/1,200 steps" in lines[2] and "1/2 runs done" in lines[2]


def test_run_parallel_reports_progress_while_the_runs_train(tmp_path):
    script = ("import sys, time\nf = sys.argv[1]\nopen(f, 'w').write('step,loss\\n')\n"
              "for s in range(10, 60, 10):\n    time.sleep(0.3)\n    open(f, 'a').write(f'{s},0.1\\n')\n")
    runs = {k: (k, tmp_path / f"{k}.csv", 50) for k in ("r1", "r2")}
    out = io.StringIO()
    p = RunsProgress(runs, every=0.25, live=False, out=out)
    fails = processes.run_parallel({k: [sys.executable, "-c", script, str(v[1])] for k, v in runs.items()}, 2,
                                   watch=p.update)
    assert not fails
    steps = [int(ln.split("]")[1].split("/")[0].replace(",", "")) for ln in out.getvalue().splitlines()]
    assert any(0 < s < 100 for s in steps), out.getvalue()  # seen while training, not only at the end
    assert steps[-1] == 100 and "2/2 runs done" in out.getvalue().splitlines()[-1]
    p.update(final=True)  # the caller's final call repeats nothing
    assert out.getvalue().count("2/2 runs done") == 1


def test_live_progress_redraws_one_output_in_place(tmp_path, monkeypatch):
    import types
    shown = []

    class Handle:
        def update(self, data, raw=False):
            shown.append(("update", data["text/plain"]))

    def display(data, raw=False, display_id=False):
        shown.append(("display", data["text/plain"]))
        return Handle()
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=display))
    clock = [0.0]
    f = tmp_path / "loss.csv"
    p = RunsProgress({"r": ("images baseline s0", f, 100)}, refresh=1, live=True, clock=lambda: clock[0])
    for step in (10, 20, 30):
        f.write_text(f"step,loss\n{step},0.1\n")
        clock[0] += 2
        p.update(running=["r"])
    p.update(finished=["r"], final=True)
    assert [kind for kind, _ in shown] == ["display", "update", "update", "update"]  # one output, redrawn
    assert "30/100" in shown[2][1] and "at 5.0 steps/s" in shown[2][1] and "1/1 runs done" in shown[-1][1]
