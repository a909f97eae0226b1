"""The huge-page restart of the entry points (research/hugepages.py): when it happens, and what it runs."""

import os
import subprocess
import sys

import pytest

from research import hugepages


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert hugepages.thp_mode(str(f)) == "madvise"
  f.write_text("[always] madvise never\n")
  assert hugepages.thp_mode(str(f)) == "always"
  assert hugepages.thp_mode(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("env,mode,libc,expected", [
    ({}, "madvise", "glibc", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", "glibc", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", "glibc", False),  # the user's own choice stands
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", "glibc", False),  # already there
    ({"RESEARCH_HUGE_PAGES": "0"}, "madvise", "glibc", False),
    ({}, "always", "glibc", False),
    ({}, "never", "glibc", False),
    ({}, "", "", False),
    ({}, "madvise", "musl", False),
])
def test_wanted_only_where_it_helps_and_was_not_chosen(env, mode, libc, expected):
  assert hugepages.wanted(env, mode, libc) is expected


def test_environment_appends_to_existing_tunables(monkeypatch):
  monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
  monkeypatch.setattr(hugepages.platform, "libc_ver", lambda: ("glibc", "2.36"))
  env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "PATH": "/bin"}
  assert hugepages.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_maybe_reexec_restarts_the_same_command_line_once(monkeypatch):
  monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
  monkeypatch.setattr(hugepages.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  calls = []
  monkeypatch.setattr(hugepages.os, "execve", lambda *a: calls.append(a))
  hugepages.maybe_reexec(["python", "-m", "experiments.train", "--workdir=x"])
  (path, argv, env), = calls
  assert path == sys.executable and argv == [sys.executable, "-m", "experiments.train", "--workdir=x"]
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # the restarted process: nothing more to do
  hugepages.maybe_reexec(["python", "-m", "experiments.train"])
  assert len(calls) == 1


@pytest.mark.skipif(hugepages.thp_mode() != "madvise" or not sys.platform.startswith("linux"),
                    reason="needs Linux with transparent huge pages in madvise mode")
def test_the_entry_point_restarts_with_the_tunable_and_keeps_its_arguments(tmp_path):
  """For real: a process started without the tunable restarts with it and the same arguments, and an entry point
  that restarts (`python -m experiments.evaluate`) still parses its flags and reports a user error in one line."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  probe = ("import os, sys; from research import hugepages; hugepages.maybe_reexec(); "
           "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  out = subprocess.run([sys.executable, "-c", probe, "a", "--b=c"], env=env, capture_output=True, text=True,
                       check=True)
  assert out.stdout.split() == ["glibc.malloc.hugetlb=1", "['a',", "'--b=c']"]
  missing = tmp_path / "missing"
  result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={missing}"], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 2 and str(missing) in result.stderr


@pytest.mark.skipif(hugepages.thp_mode() != "madvise" or not sys.platform.startswith("linux"),
                    reason="needs Linux with transparent huge pages in madvise mode")
@pytest.mark.parametrize("name", ["train", "evaluate", "analyze"])
def test_an_entry_point_restarts_before_it_imports_jax(name, tmp_path):
  """Each restarting command imported JAX and the library (~2 s) before its restart replaced the process, then again:
  twice the start-up of every command. Now the process that restarts has imported neither: through `python -m` and
  through the console scripts' functions (experiments/launch.py)."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  module = [sys.executable, "-X", "importtime", "-m", f"experiments.{name}", f"--workdir={tmp_path / 'missing'}"]
  launcher = [sys.executable, "-X", "importtime", "-c", f"from experiments import launch; launch.{name}()",
              f"--workdir={tmp_path / 'missing'}"]
  for command in (module, launcher):
    imports = subprocess.run(command, env=env, capture_output=True, text=True).stderr.splitlines()
    names = [line.split("|")[-1].strip() for line in imports if line.startswith("import time:")]
    assert names.count("research.hugepages") == 2, command  # it did restart
    assert names.count("jax") == 1, command


def test_disabled_environment_removes_only_the_huge_page_tunable():
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "PATH": "/bin"}
  assert hugepages.environment(env, enabled=False) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"}
  assert hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, enabled=False) == {}
