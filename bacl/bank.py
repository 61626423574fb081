"""The text-embedding bank that scores pool candidates without encoding them every step.

Scoring k pool candidates per anchor needs their current text embeddings; encoding
B·k captions each step would cost more than the step itself. The bank keeps one
embedding per training caption: every step writes back the embeddings it computed
anyway, and rows nobody rewrote for `refresh_every` steps are re-encoded.

At LAION-400M the bank is 400M x 512 floats (819 GB in float32, half that in float16): it
fits neither on the training device nor whole on one host. So it lives in host memory,
optionally in float16/bfloat16, sharded over the ranks: rank r of w owns the captions
`id % w == r`, its row j holding caption `j * w + r`. Round-robin rather than contiguous
blocks because the ids a step touches are not spread evenly: an item's captions have
adjacent ids and a streamed step reads a few shards of the store, i.e. a few id ranges, so
blocks would send most of a step's writes and lookups to one rank; `id % w` spreads any set
of ids that is not periodic in w, and shards differ by at most one row whatever the count.

Each step a rank asks the owners for just the rows its candidates need (`lookup`, one
all_to_all there and one back) and sends each row it encoded to its owner (`write`), so per
rank the bank costs rows / w rows of memory and traffic proportional to its own rows.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bacl.distributed import World
from bacl.errors import ConfigError

REFRESH_CHUNK = 1024


def _last_occurrences(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct ids and the position of each one's last occurrence.

    A caption can be written twice in one step (a positive that is also another anchor's
    negative, encoded in two passes, so not always bit-equal); index assignment leaves which
    duplicate wins unspecified, so `write` picks the last one itself, whatever the rank count.
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    return unique, torch.zeros_like(unique).scatter_reduce_(0, inverse, positions, "amax", include_self=False)


class EmbeddingBank(nn.Module):
    """One embedding per training caption, this rank's shard of them in host memory.

    The shard is a plain attribute, not a buffer: `Module._apply` (`.to`, `.cuda`, `.half`)
    moves and casts only parameters and buffers, so moving the method to the GPU or to
    another dtype leaves the bank on the host in its own dtype. It still travels with the
    method's `state_dict()` as extra state (this rank's shard, the world size, the rank and
    the row count), which is why it stays a Module.
    """

    def __init__(self, rows: int, dim: int, refresh_every: int, world: World = World(),
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not dtype.is_floating_point:
            raise ConfigError(f"bank dtype={dtype} is not a floating-point dtype")
        self.rows, self.dim, self.refresh_every, self.world = rows, dim, refresh_every, world
        owned = len(range(world.rank, rows, world.size))  # ceil((rows - rank) / size)
        self.shard = torch.zeros(owned, dim, dtype=dtype)  # [owned, D]: row j is caption j * size + rank
        # step at which each owned row was last written; -refresh_every: never, so the first refresh takes all.
        # int32: steps fit, and at 10^8 rows per rank the long would cost 400 MB more
        self.written = torch.full((owned,), -refresh_every, dtype=torch.int32)
        self.refreshed = -refresh_every  # step of the last refresh, the same on every rank

    def due(self, step: int) -> bool:
        return step - self.refreshed >= self.refresh_every

    @torch.no_grad()
    def refresh(self, step: int, text_tokens: Callable[[torch.Tensor], torch.Tensor],
                encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Re-encode the rows this rank owns that were not written lately; no collective.

        `text_tokens`: [n] caption ids (long, on the host) -> [n, Lt, dt] float token features on
        the compute device; `encode`: those tokens -> [n, D] embeddings. Chunked so the compute
        device holds REFRESH_CHUNK captions at a time, not a whole shard's.
        """
        stale = torch.nonzero(step - self.written >= self.refresh_every).squeeze(1)
        for local in stale.split(REFRESH_CHUNK):
            embeddings = encode(text_tokens(local * self.world.size + self.world.rank))
            self.shard[local] = embeddings.to(self.shard.dtype).cpu()  # cast on the device: fewer bytes to copy
        self.written[stale] = step
        self.refreshed = step

    @torch.no_grad()
    def write(self, captions: torch.Tensor, embeddings: torch.Tensor, step: int) -> None:
        """Store the [n, D] embeddings this rank just computed for its [n] captions.

        With several ranks a collective: each row goes to its owner (all_to_all), so a step moves
        the rows once instead of every rank receiving every rank's rows. Where a caption arrives
        twice the later one wins in (rank, position) order, as in one process writing the ranks'
        rows one after another (index assignment alone leaves the winner unspecified).
        """
        size = self.world.size
        if size > 1:
            owner = captions % size
            order = torch.argsort(owner, stable=True)  # grouped by owner, each rank's rows in their order
            sent = torch.bincount(owner, minlength=size)
            received = torch.empty_like(sent)
            dist.all_to_all_single(received, sent)
            sent_split, received_split = sent.tolist(), received.tolist()
            incoming = captions.new_empty(sum(received_split))
            dist.all_to_all_single(incoming, captions[order].contiguous(), received_split, sent_split)
            rows = embeddings[order].detach().to(self.shard.dtype).contiguous()
            arrived = rows.new_empty(len(incoming), self.dim)
            dist.all_to_all_single(arrived.view(torch.uint8), rows.view(torch.uint8), received_split, sent_split)
            captions, embeddings = incoming, arrived
        ids, last = _last_occurrences(captions)
        local = (ids // size).cpu()
        self.shard[local] = embeddings[last].detach().to(self.shard.dtype).cpu()
        self.written[local] = step

    @torch.no_grad()
    def lookup(self, captions: torch.Tensor) -> torch.Tensor:
        """[..., D] float32 embeddings of caption ids of any shape, on the ids' device.

        With several ranks this is a collective: every rank calls it once per step, each with
        its own request. The distinct ids go to their owners (all_to_all), the owners answer
        with their rows, and the answers come back the same way, so a rank receives only the
        rows it asked for, each once. Rows travel in the storage dtype as raw bytes (float16
        halves the traffic, and any backend carries bytes); the ids must be on a device the
        process group's backend carries (CUDA for NCCL, the CPU for gloo).
        """
        device, size = captions.device, self.world.size
        if size == 1:
            return self.shard[captions.cpu()].to(device).float()
        ids, inverse = torch.unique(captions.reshape(-1), return_inverse=True)
        owner = ids % size
        order = torch.argsort(owner, stable=True)  # grouped by owner, as all_to_all's splits need
        asked = ids[order]
        sent = torch.bincount(owner, minlength=size)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent)
        sent_split, received_split = sent.tolist(), received.tolist()
        wanted = asked.new_empty(sum(received_split))  # ids the other ranks ask this rank for
        dist.all_to_all_single(wanted, asked, received_split, sent_split)
        answers = self.shard[(wanted // size).cpu()].to(device)
        got = answers.new_empty(len(asked), self.dim)
        dist.all_to_all_single(got.view(torch.uint8), answers.view(torch.uint8), sent_split, received_split)
        # got[i] is the row of ids[order[i]]: order.argsort() maps each distinct id to its answer
        return got[order.argsort()[inverse]].view(*captions.shape, self.dim).float()

    def get_extra_state(self) -> dict[str, Any]:
        return {"rows": self.rows, "world_size": self.world.size, "rank": self.world.rank,
                "shard": self.shard, "written": self.written, "refreshed": self.refreshed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Load this rank's shard; a shard of another layout would silently hold other captions' rows."""
        saved = (state["rows"], state["world_size"], state["rank"])
        if saved != (self.rows, self.world.size, self.world.rank):
            raise ConfigError(
                f"the checkpoint's embedding bank is rank {saved[2]}'s shard of {saved[0]} captions over "
                f"{saved[1]} ranks; this process is rank {self.world.rank} of {self.world.size} over {self.rows} "
                f"captions: resume with {saved[1]} ranks on the same training split (the bank is not resharded)")
        if state["shard"].shape != self.shard.shape:
            raise ConfigError(f"the checkpoint's embedding bank holds {state['shard'].shape[1]}-d rows; "
                              f"this model's text embeddings are {self.dim}-d")
        self.shard.copy_(state["shard"])  # into the host storage, in its dtype, wherever torch.load mapped it
        self.written.copy_(state["written"])
        self.refreshed = int(state["refreshed"])
