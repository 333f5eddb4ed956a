"""kdcache.data.sampler and kdcache.dist.rank_share: one order rule, one partition between ranks."""
import pytest
import torch

from kdcache.data.sampler import EpochSampler, rank_batch_size, rank_steps
from kdcache.dist import rank_share
from kdcache.errors import ConfigError


@pytest.mark.parametrize("n,world", [(10, 3), (7, 7), (3, 5), (0, 2), (64, 2)])
def test_rank_share_is_tensor_split_contiguous_and_covers_everything(n, world):
    items = torch.arange(n)
    parts = [rank_share(items, r, world) for r in range(world)]
    assert [p.tolist() for p in parts] == [p.tolist() for p in items.tensor_split(world)]
    assert torch.cat(parts).tolist() == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert rank_share(list(range(n)), world - 1, world) == parts[-1].tolist()  # any sequence, same cut
    with pytest.raises(ConfigError, match="rank must be in"):
        rank_share(items, world, world)


def test_a_shuffled_epoch_is_a_seeded_permutation_served_again_until_set_epoch():
    s = EpochSampler(10, 3, shuffle=True, seed=0)
    batches = list(s)
    assert [len(b) for b in batches] == [3, 3, 3, 1] and len(s) == 4
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [b.tolist() for b in s] == [b.tolist() for b in batches]  # iterating again: the same epoch
    s.set_epoch(1)
    epoch1 = torch.cat(list(s))
    assert epoch1.tolist() != torch.cat(batches).tolist()
    g = torch.Generator().manual_seed(0)  # epoch e is the e-th permutation of one seeded generator
    torch.randperm(10, generator=g)
    assert epoch1.tolist() == torch.randperm(10, generator=g).tolist()
    assert torch.cat(list(EpochSampler(10, 4, shuffle=False))).tolist() == list(range(10))


@pytest.mark.parametrize("n,batch,world", [(100, 16, 2), (50, 7, 3), (17, 4, 4), (9, 8, 2)])
def test_ranks_take_their_part_of_every_global_batch(n, batch, world):
    one = list(EpochSampler(n, batch, seed=5))
    ranks = [list(EpochSampler(n, batch, seed=5, rank=r, world_size=world)) for r in range(world)]
    assert all(len(r) == rank_steps(n, batch, world) == len(EpochSampler(n, batch, rank=1, world_size=world))
               for r in ranks)
    for step, steps in enumerate(zip(*ranks)):  # one step of W ranks is the one-process batch, cut by rank_share
        assert torch.cat(steps).tolist() == one[step].tolist()
        assert [len(s) for s in steps] == [len(p) for p in one[step].tensor_split(world)]


def test_a_global_batch_smaller_than_the_ranks_is_refused_and_shares_add_up():
    with pytest.raises(ConfigError, match="--batch-size 2 is the global batch, split over 3 ranks"):
        EpochSampler(10, 2, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="positive"):
        EpochSampler(10, 0)
    assert [rank_batch_size(10, r, 3) for r in range(3)] == [4, 3, 3]
    assert rank_steps(10, 4, 3) == 2 and rank_steps(10, 4, 1) == 3  # a last global batch of 2 < 3 ranks is dropped


def test_block_order_visits_whole_blocks_a_buffer_at_a_time_as_a_pure_function_of_seed_and_epoch():
    from kdcache.data.sampler import block_order

    n, block, buffer = 103, 10, 3  # 11 blocks, the last of 3 rows; buffers of 3 blocks
    order = block_order(n, block, seed=4, epoch=2, buffer_blocks=buffer)
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() == block_order(n, block, seed=4, epoch=2, buffer_blocks=buffer).tolist()
    assert order.tolist() != block_order(n, block, seed=4, epoch=3, buffer_blocks=buffer).tolist()
    assert order.tolist() != block_order(n, block, seed=5, epoch=2, buffer_blocks=buffer).tolist()
    starts = 0
    for _ in range(4):  # each buffer holds the rows of whole blocks, and only of its blocks
        blocks = order // block
        first = set(blocks[starts:starts + 1].tolist())
        size = 0
        seen = set()
        while starts + size < n and len(seen | set(blocks[starts + size:starts + size + 1].tolist())) <= buffer:
            seen |= set(blocks[starts + size:starts + size + 1].tolist())
            size += 1
        assert first <= seen and size == sum(min(block, n - b * block) for b in seen)
        starts += size
    assert starts == n
    s = EpochSampler(n, 16, seed=4, block_rows=block)
    s.set_epoch(2)
    assert torch.cat(list(s)).tolist() == block_order(n, block, 4, 2).tolist()  # the sampler serves that order
