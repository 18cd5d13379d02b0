"""loss.csv, the run directory's training log (lib.infra.runlog): rows, resume truncation, old logs."""
import json

from lib.infra import runlog


def _row(step, **kw):
    return {"step": step, "loss": 1.0, "l0": 0.5, "lskip": 0.0, "consistency": 0.0, "lr": 1e-4, "grad_norm": 2.0,
            "images_per_s": 10.0, **kw}


def test_rows_round_trip_and_truncate(tmp_path):
    for s in (2, 4, 6):
        runlog.append_row(tmp_path, _row(s, consistency=0.25 * s))
    runlog.truncate(tmp_path, 4)
    lg = runlog.read_log(tmp_path)
    assert lg["step"] == [2.0, 4.0] and lg["consistency"] == [0.5, 1.0] and lg["lskip"] == [0.0, 0.0]
    assert (tmp_path / "loss.csv").read_text().splitlines()[0] == ",".join(runlog.LOG_FIELDS)


def test_old_logs_read_with_the_cdm_term_under_its_own_name(tmp_path):
    """Logs from before the consistency column carried CDM's term in lskip: the reader moves it."""
    old = "step,loss,l0,lskip,lr,grad_norm,images_per_s\n2,1.5,1.0,0.05,0.0001,3,100\n"
    for arm, lskip, consistency in (("cdm", 0.0, 0.05), ("s2dm", 0.05, 0.0)):
        run = tmp_path / arm
        run.mkdir()
        (run / "loss.csv").write_text(old)
        (run / "run.json").write_text(json.dumps({"arm": arm}))
        lg = runlog.read_log(run)
        assert lg["lskip"] == [lskip] and lg["consistency"] == [consistency], arm
        runlog.truncate(run, 2)  # a resumed old run rewrites its log in today's columns
        assert runlog.read_log(run)["consistency"] == [consistency]
