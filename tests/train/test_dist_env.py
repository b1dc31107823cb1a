"""The distributed environment is checked before anything runs: partial or inconsistent torchrun variables are one
line naming them (exit code 2, nothing written), and waiting for peers that never come says what it waits for and
ends after ATTNLAB_DIST_TIMEOUT seconds (exit code 1)."""

from __future__ import annotations

import socket

import pytest

from attnlab.train.distributed import DistEnv, DistEnvError, dist_timeout, read_dist_env

from trainkit import cli_env, run_cli, text_file, tiny_config  # noqa: F401  (text_file is a fixture)

FULL = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env, expected", [
    ({}, DistEnv()),
    ({"WORLD_SIZE": "1"}, DistEnv()),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "RANK_UNRELATED": "x"}, DistEnv()),
    ({"RANK": ""}, DistEnv()),  # empty = unset
    (FULL, DistEnv(2, 1, 1, "127.0.0.1", 29500)),
])
def test_consistent_environments(env, expected):
    assert read_dist_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RANK": "1"}, "RANK=1 is set but WORLD_SIZE is not (a partial torchrun environment: this process would not know "
                    "its job); unset RANK to train in one process, or launch with torchrun, which sets all of them"),
    ({"LOCAL_RANK": "0", "MASTER_PORT": "29500"}, "LOCAL_RANK=0, MASTER_PORT=29500 are set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is out of range: it must be 1 or more (WORLD_SIZE is the number of processes; "
                          "unset it to train in one process)"),
    ({"WORLD_SIZE": "-1"}, "WORLD_SIZE=-1 is out of range: it must be 1 or more"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer (WORLD_SIZE is the number of processes; unset it to "
                            "train in one process)"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 asks for 2 processes but RANK, MASTER_ADDR and MASTER_PORT are not set; "
                          "launch with torchrun (torchrun --nproc_per_node=2 -m attnlab.cli train ...), which sets "
                          "them, or unset WORLD_SIZE to train in one process"),
    ({**FULL, "MASTER_ADDR": ""}, "WORLD_SIZE=2 asks for 2 processes but MASTER_ADDR is not set"),
    ({**FULL, "RANK": "2"}, "RANK=2 is out of range: it must be from 0 to 1 (RANK is this process's rank, 0 to 1 for "
                            "WORLD_SIZE=2)"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1 is out of range: it must be from 0 to 0"),
    ({**FULL, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is out of range: it must be from 1 to 65535"),
    ({**FULL, "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
])
def test_partial_or_inconsistent_environments(env, message):
    with pytest.raises(DistEnvError) as err:
        read_dist_env(env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("raw", ["0", "-5", "nan", "inf", "soon"])
def test_bad_timeout(raw):
    with pytest.raises(DistEnvError, match=rf"ATTNLAB_DIST_TIMEOUT='{raw}' is not a positive number of seconds"):
        dist_timeout({"ATTNLAB_DIST_TIMEOUT": raw})
    assert dist_timeout({}) == 300 and dist_timeout({"ATTNLAB_DIST_TIMEOUT": "2.5"}) == 2.5


@pytest.mark.parametrize("env, named", [
    ({"RANK": "1"}, "RANK=1 is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is out of range"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
])
def test_the_cli_refuses_a_bad_environment_in_one_line(text_file, tmp_path, env, named):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(text_file, tmp_path / "run", steps=2).to_yaml())
    done = run_cli("train", cfg_path, "--no-progress", env=cli_env(**env))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"attnlab train: error: {named}") and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing ran


@pytest.mark.parametrize("rank", [0, 1])
def test_missing_peers_time_out_with_a_message(text_file, tmp_path, rank):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(text_file, tmp_path / "run", steps=2).to_yaml())
    port = free_port()
    env = cli_env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                  ATTNLAB_DIST_TIMEOUT="1")
    done = run_cli("train", cfg_path, "--no-progress", env=env)
    who = "the other 1 process(es)" if rank == 0 else "rank 0"
    assert done.returncode == 1, done.stderr
    waiting, error = done.stderr.splitlines()
    assert waiting == (f"attnlab: rank {rank} of WORLD_SIZE=2 is waiting up to 1 s for {who} at 127.0.0.1:{port} "
                       "(ATTNLAB_DIST_TIMEOUT sets the limit)")
    assert error.startswith(f"attnlab train: error: rank {rank} timed out after 1 s waiting for {who} of WORLD_SIZE=2 "
                            f"at 127.0.0.1:{port} (")
    assert error.endswith("); start every process with the same MASTER_ADDR and MASTER_PORT (or use torchrun), unset "
                          "WORLD_SIZE to train in one process, or wait longer with ATTNLAB_DIST_TIMEOUT=SECONDS")
    assert not (tmp_path / "run").exists()
