"""The GPU suite's plumbing that runs without a GPU: its report helper (stage records, pytest
parsing, summary) and the two scripts' argument handling. The suite itself runs end to end on a
CPU with GPU_SUITE_SMOKE=1 (a few minutes; docs/speed.md, "GPU suite")."""

import importlib.util
import json
import subprocess
import sys

from conftest import REPO

_spec = importlib.util.spec_from_file_location("gpu_suite_report",
                                               REPO / "benchmarks" / "gpu_suite_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_parse_pytest_reads_the_closing_line_and_the_failures(tmp_path):
  out = tmp_path / "tests.out"
  out.write_text("..F.s\nFAILED tests/test_a.py::test_b - AssertionError\n"
                 "1 failed, 3 passed, 1 skipped, 1 deselected in 12.3s\n")
  result = report.parse_pytest(out)
  assert (result["passed"], result["failed"], result["skipped"]) == (3, 1, 1)
  assert result["deselected"] == 1 and result["complete"]
  assert result["failing"] == ["tests/test_a.py::test_b"]


def test_parse_pytest_counts_the_progress_of_a_stopped_run(tmp_path):
  out = tmp_path / "tests.out"
  out.write_text("........s.F [ 40%]\n....\n")
  result = report.parse_pytest(out)
  assert (result["passed"], result["failed"], result["skipped"]) == (13, 1, 1)
  assert not result["complete"]


def test_record_and_summary_keep_each_stage_and_print_json_last(tmp_path, capsys):
  json_path = tmp_path / "gpu_suite.json"
  ok_out, ok_err = tmp_path / "a.out", tmp_path / "a.err"
  ok_out.write_text('progress\n{"images_per_sec": 123.0}\n')
  ok_err.write_text("")
  report.main(["record", str(json_path), "throughput", "--seconds", "5",
               "--part", "128", "0", str(ok_out), str(ok_err)])
  report.main(["record", str(json_path), "tests", "--seconds", "1", "--status", "skipped",
               "--reason", "no time left"])
  data = json.loads(json_path.read_text())
  assert data["stages"]["throughput"] == {"status": "ok", "seconds": 5.0,
                                          "result": {"128": {"images_per_sec": 123.0}}}
  assert data["stages"]["tests"]["status"] == "skipped"
  capsys.readouterr()
  report.main(["summary", str(json_path)])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last)["stages"]["tests"]["result"]["reason"] == "no time left"


def test_a_timed_out_part_marks_its_stage_timeout(tmp_path):
  json_path = tmp_path / "gpu_suite.json"
  (tmp_path / "x.out").write_text("")
  (tmp_path / "x.err").write_text("killed\n")
  report.main(["record", str(json_path), "epoch_time", "--seconds", "9",
               "--part", "device", "124", str(tmp_path / "x.out"), str(tmp_path / "x.err")])
  stage = json.loads(json_path.read_text())["stages"]["epoch_time"]
  assert stage["status"] == "timeout"
  assert stage["result"]["device"]["error"] == "no JSON line on stdout"


def test_prepare_rejects_bad_arguments_before_doing_anything(tmp_path):
  for args, message in ((["--bogus"], "unknown argument '--bogus'"),
                        (["--data-dir", str(tmp_path)], "has no mnist/VERSION/dataset_info.json")):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_prepare.sh"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_suite_script_parses():
  for script in ("gpu_suite.sh", "gpu_prepare.sh"):
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
