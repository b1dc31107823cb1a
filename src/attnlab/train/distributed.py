"""Process-group setup for ``torchrun`` (DistributedDataParallel, Li et al. 2020): gloo on CPU, NCCL on GPU.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything degrades to one process and
the helpers are no-ops, so the same trainer runs both ways.

The environment is checked before anything else (:func:`read_dist_env`): ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` or ``MASTER_PORT`` without ``WORLD_SIZE``, a ``WORLD_SIZE`` above 1 without the others, or a value
that is not a number in range is a :class:`DistEnvError` naming the variables. Joining the group waits at most
``ATTNLAB_DIST_TIMEOUT`` seconds (default 300) for the other processes and says what it waits for; then it is a
:class:`PeersTimeout` naming them.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional  # noqa: F401  (before any group: see cleanup's docstring)
from torch import Tensor, nn
from torch.distributed.constants import default_pg_timeout

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VAR = "ATTNLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds to wait for the other processes of a job


class DistEnvError(ValueError):
    """The distributed environment variables are partial, inconsistent or not numbers (the message names them)."""


class PeersTimeout(TimeoutError):
    """The other processes of a distributed job did not join within ``ATTNLAB_DIST_TIMEOUT`` seconds."""


@dataclass(frozen=True)
class DistEnv:
    """What the environment says about this process's place in a job (one process when nothing is set)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def address(self) -> str:
        return f"{self.master_addr}:{self.master_port}"


def read_dist_env(environ: dict | None = None) -> DistEnv:
    """Check and read ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (an empty value
    counts as unset).

    Raises:
        DistEnvError: a variable without ``WORLD_SIZE``; ``WORLD_SIZE`` above 1 without ``RANK``, ``MASTER_ADDR`` or
            ``MASTER_PORT``; a value that is not an integer or out of range (``WORLD_SIZE`` >= 1, ``0 <= RANK <
            WORLD_SIZE``, ``LOCAL_RANK`` >= 0, ``MASTER_PORT`` in 1..65535). The message names the variables and the fix.
    """
    env = os.environ if environ is None else environ
    given = {k: env[k] for k in ENV_VARS if env.get(k, "") != ""}
    if "WORLD_SIZE" not in given:
        if given:
            names = ", ".join(f"{k}={v}" for k, v in given.items())
            raise DistEnvError(
                f"{names} {'is' if len(given) == 1 else 'are'} set but WORLD_SIZE is not (a partial torchrun "
                f"environment: this process would not know its job); unset {_listed(list(given))} to train in one "
                "process, or launch with torchrun, which sets all of them")
        return DistEnv()
    world = _int_var(given, "WORLD_SIZE", 1, None, "the number of processes; unset it to train in one process")
    rank = _int_var(given, "RANK", 0, world - 1, f"this process's rank, 0 to {world - 1} for WORLD_SIZE={world}")
    local = _int_var(given, "LOCAL_RANK", 0, None, "this process's rank on its machine")
    port = _int_var(given, "MASTER_PORT", 1, 65535, "the TCP port of rank 0")
    if world > 1:
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in given]
        if missing:
            raise DistEnvError(
                f"WORLD_SIZE={world} asks for {world} processes but {_listed(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; launch with torchrun (torchrun "
                f"--nproc_per_node={world} -m attnlab.cli train ...), which sets them, or unset WORLD_SIZE to train in "
                "one process")
    return DistEnv(world, rank or 0, local or 0, given.get("MASTER_ADDR"), port)


def _listed(names: list[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _int_var(given: dict, name: str, low: int, high: int | None, meaning: str) -> int | None:
    """The integer value of ``given[name]`` (``None`` when unset), checked against ``low..high``."""
    if name not in given:
        return None
    raw = given[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise DistEnvError(f"{name}={raw!r} is not an integer ({name} is {meaning})") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low} or more" if high is None else f"from {low} to {high}"
        raise DistEnvError(f"{name}={value} is out of range: it must be {bounds} ({name} is {meaning})")
    return value


def dist_timeout(environ: dict | None = None) -> float:
    """Seconds to wait for the other processes: ``ATTNLAB_DIST_TIMEOUT`` or 300.

    Raises:
        DistEnvError: the variable is not a positive, finite number of seconds.
    """
    raw = (os.environ if environ is None else environ).get(TIMEOUT_VAR, "")
    if raw == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DistEnvError(f"{TIMEOUT_VAR}={raw!r} is not a positive number of seconds (default {DEFAULT_TIMEOUT:g}); "
                           f"set it to e.g. 600 or unset it")
    return value


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. ``is_main`` (rank 0) writes logs and checkpoints."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the group, so it also tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; anything else is parsed by torch.

    Raises:
        ValueError: an unparsable device string, or CUDA requested but unavailable.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Check the environment, join the ``torchrun`` process group if there is one (gloo for CPU, NCCL for CUDA)
    and pick the device.

    Raises:
        DistEnvError: partial or inconsistent distributed variables (see :func:`read_dist_env`) or a bad
            ``ATTNLAB_DIST_TIMEOUT``.
        PeersTimeout: the other processes did not join in time.
        ConnectionError: the rendezvous at ``MASTER_ADDR:MASTER_PORT`` failed for another reason (the port is taken).
        ValueError: a bad ``device``.
    """
    env = read_dist_env()
    dev = resolve_device(device, env.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = env.world_size > 1 and not dist.is_initialized()
    if owns:
        join_group(env, "nccl" if dev.type == "cuda" else "gloo", dist_timeout())
    return DistInfo(rank=env.rank, world_size=env.world_size, local_rank=env.local_rank, device=dev, owns_group=owns)


def join_group(env: DistEnv, backend: str, timeout: float) -> None:
    """Meet the other processes of ``env`` at ``MASTER_ADDR:MASTER_PORT`` within ``timeout`` seconds, then create
    the default process group (its collectives keep torch's default timeout).

    Outside ``torchrun`` (processes started by hand) one line on stderr says what this process waits for.

    Raises:
        PeersTimeout: not every process arrived within ``timeout`` seconds.
        ConnectionError: the rendezvous failed for another reason (message names the address).
    """
    who = f"the other {env.world_size - 1} process(es)" if env.rank == 0 else "rank 0"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # torchrun's agent already gathered the job
        print(f"attnlab: rank {env.rank} of WORLD_SIZE={env.world_size} is waiting up to {timeout:g} s for {who} at "
              f"{env.address} ({TIMEOUT_VAR} sets the limit)", file=sys.stderr, flush=True)
        if env.rank != 0:
            _wait_for_port(env, timeout, who)
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
    except dist.DistError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "timed out" in reason.lower():
            raise _timeout(env, timeout, who, reason) from None
        raise ConnectionError(f"cannot meet the other processes at {env.address} ({reason}); check MASTER_ADDR and "
                              "MASTER_PORT (a free port on rank 0's machine)") from None
    store.set_timeout(default_pg_timeout)
    dist.init_process_group(backend=backend, store=store, rank=env.rank, world_size=env.world_size)


def _wait_for_port(env: DistEnv, timeout: float, who: str) -> None:
    """Poll until rank 0 listens at ``MASTER_ADDR:MASTER_PORT`` (quietly, unlike torch's own retries)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((env.master_addr, env.master_port), timeout=1.0).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise _timeout(env, timeout, who, f"nothing listens there: {e.strerror or e}") from None
        time.sleep(0.2)


def _timeout(env: DistEnv, timeout: float, who: str, reason: str) -> PeersTimeout:
    return PeersTimeout(
        f"rank {env.rank} timed out after {timeout:g} s waiting for {who} of WORLD_SIZE={env.world_size} at "
        f"{env.address} ({reason}); start every process with the same MASTER_ADDR and MASTER_PORT (or use torchrun), "
        f"unset WORLD_SIZE to train in one process, or wait longer with {TIMEOUT_VAR}=SECONDS")


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP wrapper when distributed (gradients are averaged over ranks), else the model itself."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(t: Tensor, info: DistInfo) -> Tensor:
    """Mean of ``t`` over ranks (identity in one process)."""
    if not info.distributed:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def all_gather_tensor(t: Tensor, info: DistInfo) -> list[Tensor]:
    """``t`` from every rank, in rank order (``[t]`` in one process). Same shape on every rank."""
    if not info.distributed:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return out


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a stop request)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group this process created, and with it gloo's worker threads.

    Call it after the DDP wrapper is dropped (``Trainer.close`` does): its reducer holds the group. Why the threads
    must go now: a gloo worker drops its finished work (and the tensors in it) just after the caller's ``wait``
    returns; when the process is already finalising Python by then (a loaded machine), releasing a tensor that had a
    Python object needs the GIL, the thread is made to exit, and C++ aborts the process ("terminate called without
    an active exception"). Destroying the group joins the workers while Python is alive: the garbage pass first
    frees the wrapper's reference cycles, then the group's last reference goes from Python (whose binding releases
    the GIL while the threads join). ``torch.distributed.nn.functional`` is imported before any group exists
    because its functions take ``group.WORLD`` as a default argument when the module is first imported, which
    would keep the group alive until exit.
    """
    if info.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
