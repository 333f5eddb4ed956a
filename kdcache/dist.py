"""Several processes on torch.distributed (torchrun): who this process is, and how ranks agree or fail together.

Under ``torchrun --nproc_per_node N [--nnodes M ...] -m kdcache CMD``, the CLI runs CMD
inside ``launch()``: it reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
GROUP_RANK, MASTER_ADDR/PORT), joins the process group (gloo on CPU; on a CUDA machine
``cpu:gloo,cuda:nccl``, each rank on GPU ``LOCAL_RANK``) and makes ``current()`` return
this rank's ``DistContext``. That small object is all the rest of kdcache sees: dump.py
asks it for its rank to pick a range of rows, train.py wraps the model in
DistributedDataParallel through it and reduces metrics with it, and the batch sources take
``rank``/``world_size`` to serve their part of each epoch. What a rank takes is one rule,
``rank_share`` (contiguous parts, sizes differing by at most one), applied to a dump's batches,
an evaluation's rows and each training step's global batch (kdcache.data.sampler). Without torchrun (or with
WORLD_SIZE 1) ``current()`` is ``SINGLE`` and every method is a no-op, so one-process runs
are unchanged. The pattern is torchvision's references (``init_distributed_mode``,
``save_on_master``): read the environment once, let the rest not care.

Failing together. A rank that fails must not leave the others waiting forever in a
collective, and the user should see one line, not N tracebacks:

- **Collective points** (``check``): every rank reports ``ok`` or its error (one small
  all-gather on a gloo group, so it never touches the GPU). If any rank failed, every
  rank raises ``RankFailed`` there; rank 0 reports ``rank R: reason`` for the lowest
  failed rank, then all ranks exit non-zero. A rank whose own work fails between two
  collective points joins the next one with its error, so the others learn of it where
  they were going to wait anyway. kdcache's own collectives are all ``check``-shaped
  (dump: shards written, cache assembled; training: ready, every step's batch, every
  epoch's metrics, the saved checkpoint).
- **Inside training steps** (``steps()``), peers may be inside DDP's gradient all-reduce,
  where a status exchange would not match. A rank failing there *aborts*: it claims the
  job's failure slot in the rendezvous store (first claim wins), reports its own line and
  exits; the peers' collective then breaks (gloo: at once; torchrun also stops the other
  local workers), they find the slot taken and exit quietly.

Either way one ``Error: rank R: ...`` line is printed (by the CLI's ``report``) and every
rank exits 1; torchrun then prints its own ``ChildFailedError`` summary (which rank
exited with which code) after it. SIGTERM (torchrun stopping a worker) unwinds Python
normally, so temp files are removed instead of left behind.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from kdcache.config import DIST_TIMEOUT_S
from kdcache.errors import ConfigError, KDCacheError

Report = Callable[[str], None]
_OK, _END, _FAILED = 0, 1, 2  # a rank's status at a collective point


def rank_share(items: Any, rank: int, world_size: int) -> Any:
    """Part ``rank`` of ``items`` (a sequence, tensor or array) cut into ``world_size`` contiguous parts.

    Sizes differ by at most one, the first ``len(items) % world_size`` parts taking the extra
    (``torch.tensor_split``'s cut). Every partition between ranks in kdcache is this one rule.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
    per, extra = divmod(len(items), world_size)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


class RankFailed(KDCacheError):
    """A rank of a distributed job failed; raised on every rank. ``str()`` is ``rank R: reason``."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


class Terminated(BaseException):
    """This process got SIGTERM (torchrun stops the other workers when one fails): unwind, report nothing."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job, and the few collectives kdcache uses (no-ops for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs and reports."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "DistContext":
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK (absent: one process)."""
        env = dict(os.environ if env is None else env)
        try:
            ctx = cls(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                      local_rank=int(env.get("LOCAL_RANK", 0)), node_rank=int(env.get("GROUP_RANK", 0)))
        except ValueError:
            raise ConfigError("RANK/WORLD_SIZE/LOCAL_RANK are not integers; launch kdcache with torchrun") from None
        if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
            raise ConfigError(f"RANK {ctx.rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {ctx.world_size}); "
                              "launch kdcache with torchrun")
        return ctx

    # -- devices and models -------------------------------------------------------------------------

    def local_device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on ``device``); the model itself for one process.

        Save ``model``, never the wrapper, so checkpoints have no ``module.`` prefixes.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        with self.steps():  # DDP's constructor broadcasts the weights: peers may be inside it
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- collective points --------------------------------------------------------------------------

    def check(self, error: BaseException | None = None) -> None:
        """A collective point: raise RankFailed on every rank if any rank arrives with an error."""
        if self.distributed:
            _session().check(_OK if error is None else _FAILED, error)
        elif error is not None:
            raise error

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64, on CPU)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        _session().collective(lambda: dist.all_reduce(t, group=_session().control))
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (plain data: dicts, lists, numbers, strings)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        _session().collective(lambda: dist.broadcast_object_list(box, src=0, group=_session().control,
                                                                 device=torch.device("cpu")))
        return box[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, in place.

        DDP broadcasts them before each forward, but the last training step updates every
        rank's own copy; an evaluation sharded over ranks must score rank 0's model, the one saved.
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        for buf in model.buffers():
            cpu = buf.detach().to("cpu", copy=True)
            _session().collective(lambda cpu=cpu: dist.broadcast(cpu, src=0, group=_session().control))
            buf.data.copy_(cpu)

    def checked(self, batches: Any) -> Any:
        """``batches`` with a collective point before the first item and after the last: all ranks start the
        epoch with data and end it together, or all stop with one line.

        Between them there is no per-step exchange (it cost ~2 ms of a ~20 ms step on 2 CPUs): every rank
        takes the same number of steps by construction (kdcache.data.sampler), and a rank whose batch
        source fails mid-epoch (a damaged block, an unreadable file) fails inside ``steps()``, which aborts
        the job with its one line while its peers' gradient all-reduce breaks.
        """
        return batches if not self.distributed else _Checked(batches, self)

    def steps(self) -> contextlib.AbstractContextManager:
        """Mark code where peers may be inside DDP collectives: a failure here aborts the job (see module doc)."""
        return _session().steps() if self.distributed else contextlib.nullcontext()


SINGLE = DistContext()
_current = SINGLE


def current() -> DistContext:
    """The context of the running job: this rank's under ``launch()``, else SINGLE (one process)."""
    return _current


def launched(env: dict[str, str] | None = None) -> bool:
    """True when torchrun (or another launcher) started this process as one of several ranks."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1") or 1) > 1


def describe(error: BaseException) -> str:
    """One line for an error: kdcache's own message, else the exception type and its first line."""
    if isinstance(error, KDCacheError):
        return " ".join(str(error).split())
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _backend_error(error: BaseException) -> str:
    """gloo/NCCL's message without its source-file prefix and advice: '[.../pair.cc:561] Connection closed ...'."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", describe(error).split(": ", 1)[-1])
    return text.split(". ")[0]


@contextlib.contextmanager
def launch(report: Report | None = None, timeout_s: float = DIST_TIMEOUT_S) -> Iterator[DistContext]:
    """Run the body as this rank of a torchrun job (or as the only process when not launched).

    ``report(line)`` is called once per job, on one rank, with ``rank R: reason`` when a
    rank fails; every rank then raises RankFailed (or Terminated on SIGTERM). The body's
    own exceptions are turned into that protocol, so the caller sees RankFailed only.
    """
    global _current
    ctx = DistContext.from_env()
    if not ctx.distributed or _sessions:  # one process, or already inside a job (re-entrant)
        yield _current
        return
    session = _Session(ctx, report or (lambda line: None), timeout_s)
    _sessions.append(session)
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    old_term = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        session.start()
        _current = ctx
        try:
            yield ctx
        except (Terminated, KeyboardInterrupt, RankFailed):
            raise
        except Exception as e:  # noqa: BLE001 - every failure of the body goes through the protocol
            session.check(_FAILED, e)  # (failures inside steps() have aborted already)
        else:
            session.check(_OK, None)  # a peer may have failed after our last collective point
    finally:
        _current = SINGLE
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
        _sessions.remove(session)
        session.close()


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


_sessions: list["_Session"] = []


def _session() -> "_Session":
    if not _sessions:
        raise RuntimeError("no distributed session: use kdcache.dist.launch()")
    return _sessions[-1]


class _Session:
    """The process group, a gloo group for status exchange, and the rendezvous store (failure slot)."""

    FAILURE_KEY = "failure"

    def __init__(self, ctx: DistContext, report: Report, timeout_s: float):
        self.ctx, self.report = ctx, report
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.store: Any = None
        self.control: Any = None
        self.broken = False  # a collective failed: the group cannot be used (or torn down) any more

    def start(self) -> None:
        import torch.distributed as dist

        ctx = self.ctx
        try:
            store, rank, world = next(dist.rendezvous("env://", timeout=self.timeout))
        except (ValueError, RuntimeError) as e:  # no store to coordinate through: every rank says it
            self.abort(f"cannot join the torchrun job ({describe(e)}); launch kdcache with torchrun")
        self.store = dist.PrefixStore("kdcache", store)
        try:
            cuda = torch.cuda.is_available()
            if cuda:
                if ctx.local_rank >= torch.cuda.device_count():
                    raise ConfigError(f"LOCAL_RANK {ctx.local_rank} but this node has {torch.cuda.device_count()} "
                                      "GPU(s): run at most one process per GPU (--nproc_per_node), or hide the GPUs "
                                      "(CUDA_VISIBLE_DEVICES=) to run more ranks on the CPU")
                torch.cuda.set_device(ctx.local_rank)
            backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=self.timeout,
                                    device_id=torch.device("cuda", ctx.local_rank) if cuda else None)
            self.control = dist.new_group(backend="gloo", timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - a rank that cannot join cannot take part in a check
            self.broken = True
            self.abort(describe(e))

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized() and not self.broken:
            dist.destroy_process_group()

    # -- the protocol -------------------------------------------------------------------------------

    def collective(self, fn: Callable[[], Any]) -> Any:
        """Run one collective; if it breaks (a peer died), abort instead of waiting on it again."""
        try:
            return fn()
        except (Terminated, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - gloo/NCCL raise RuntimeError and friends
            self.broken = True
            self.abort(f"lost contact with the other ranks (one was killed or crashed; torchrun's summary below "
                       f"names it): {_backend_error(e)}")

    def check(self, status: int, error: BaseException | None) -> None:
        import torch.distributed as dist

        mine = torch.tensor([status], dtype=torch.int64)
        statuses = [torch.zeros(1, dtype=torch.int64) for _ in range(self.ctx.world_size)]
        self.collective(lambda: dist.all_gather(statuses, mine, group=self.control))
        codes = [int(s) for s in statuses]
        if _FAILED not in codes:
            if len(set(codes)) > 1:  # some ranks have batches left, some not: a bug, not the user's fault
                error = RuntimeError(f"internal: ranks disagree on the number of steps ({codes}); please report")
            else:
                return
        messages: list[str | None] = [None] * self.ctx.world_size
        mine_msg = None if error is None else describe(error)
        self.collective(lambda: dist.all_gather_object(messages, mine_msg, group=self.control))
        failed = [r for r, m in enumerate(messages) if m is not None]
        first = failed[0]
        line = f"rank {first}: {messages[first]}"
        if len(failed) > 1:
            line += f" (ranks {', '.join(map(str, failed))} failed)"
        if self.ctx.is_main:
            self.report(line)
        self.collective(lambda: dist.barrier(group=self.control))  # nobody exits before the line is out
        raise RankFailed(line, first) from None

    def abort(self, reason: str) -> None:
        """Claim the job's failure slot; report our own line only if we got it first. Always raises."""
        line = f"rank {self.ctx.rank}: {reason}"
        self.broken = True  # peers may be inside a collective we will never join: do not tear the group down
        claimed = False
        if self.store is not None:
            try:
                claimed = self.store.compare_set(self.FAILURE_KEY, "", line) == line.encode()
            except Exception:  # noqa: BLE001 - the store is gone too: say it ourselves
                claimed = True
        else:
            claimed = True
        if claimed:
            self.report(line)
        raise RankFailed(line, self.ctx.rank) from None

    @contextlib.contextmanager
    def steps(self) -> Iterator[None]:
        """Abort on any failure inside: the peers may be in a collective that no check can match."""
        try:
            yield
        except (Terminated, KeyboardInterrupt, RankFailed):
            raise
        except Exception as e:  # noqa: BLE001 - decided here, where we still know where it happened
            self.abort(describe(e))


class _Checked:
    """Iterate a batch source with a collective point before each batch (DistContext.checked)."""

    def __init__(self, batches: Any, ctx: DistContext):
        self.batches, self.ctx = batches, ctx

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        session = _session()
        it = iter(self.batches)
        first = True
        while True:
            try:
                item, status, error = next(it), _OK, None
            except StopIteration:
                item, status, error = None, _END, None
            except (Terminated, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - reported to every rank at a check point, else aborts
                if not first:
                    raise  # mid-epoch: inside steps(), the abort path (peers may be in a collective)
                item, status, error = None, _FAILED, e
            if first or status == _END:
                session.check(status, error)  # RankFailed passes through steps() as it is
            first = False
            if status == _END:
                return
            yield item
