"""Mini-batch statistics across data-parallel ranks (docs/DESIGN.md#batch-statistics): a 2-process gloo group on CPU.

Each rank holds part of a batch; the masks, bounds and draws must equal those of one process
holding the whole batch, except with ``stats_scope="micro"`` (rank-local statistics).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

pytestmark = pytest.mark.distributed

WORLD = 2
D = torch.float64


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _m2po_batch():
    g = torch.Generator().manual_seed(0)
    B, T = 8, 30
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    lr = torch.randn(B, T, generator=g, dtype=D) * 0.3
    adv = torch.randn(B, generator=g, dtype=D)
    adv[1] = 0.0
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(D)
    return old + lr, old, adv, mask


def _ties_batch():
    # trust-region M2: row 0 {.09, .01, .09, .09}, row 1 {.09 x4}; tau = .06 keeps .01 and ONE .09
    lp = torch.tensor([[0.3, 0.1, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]], dtype=D)
    return lp, torch.zeros(2, 4, dtype=D), torch.ones(2, dtype=D), torch.ones(2, 4, dtype=D)


def _skewed_batch():
    # rank 0's half has tiny log-ratios, rank 1's half large ones: micro and mini statistics differ
    old = torch.zeros(4, 4, dtype=D)
    lp = torch.tensor([[0.05] * 4, [0.05] * 4, [0.3] * 4, [0.3, 0.3, 0.3, 0.25]], dtype=D)
    return lp, old, torch.ones(4, dtype=D), torch.ones(4, 4, dtype=D)


def _traj_batches(n_steps=3, B=10):
    out = []
    for k in range(n_steps):
        g = torch.Generator().manual_seed(100 + k)
        old = -torch.rand(B, 5, generator=g, dtype=D)
        z = torch.where(torch.rand(B, generator=g) < 0.5, 1e-4, 3e-2).to(D) * torch.randn(B, generator=g, dtype=D).sign()
        z = z * (1 + torch.rand(B, generator=g, dtype=D))
        lp = old + z.unsqueeze(-1)
        mask = torch.ones(B, 5, dtype=D)
        mask[3, 2:] = 0
        out.append((lp, old, torch.randn(B, generator=g, dtype=D), mask))
    return out


def _rows(batch, rows):
    return tuple(x[rows] for x in batch)


def _split(rank):
    return slice(0, 4) if rank == 0 else slice(4, 8)


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from stalerl import objectives

    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        res = {}
        part = _rows(_m2po_batch(), _split(rank))
        obj = objectives.build("m2po", tau=0.02)
        res["m2po_kept"] = obj(*part).extras["token_kept"]
        res["m2po_loss_bs"] = obj(*part, batch_stats=obj.batch_stats(*part)).loss.detach()
        capped = objectives.build("m2po_capped", tau=0.02)
        res["m2po_cap"] = capped(*part).metrics["actor/m2_cap"]

        obj = objectives.build("m2po", tau=0.06)
        res["ties_kept"] = obj(*_rows(_ties_batch(), slice(rank, rank + 1))).extras["token_kept"]

        sk = _rows(_skewed_batch(), slice(2 * rank, 2 * rank + 2))
        res["mini_kept"] = objectives.build("m2po", tau=0.04)(*sk).extras["token_kept"]
        res["micro_kept"] = objectives.build("m2po", tau=0.04, stats_scope="micro")(*sk).extras["token_kept"]
        ac_micro = objectives.build("ac_mispo", stats_scope="micro")

        ac = objectives.build("ac_mispo", warmup_train_steps=2)
        rt = objectives.build("mispo_random_traj", seed=7)
        rt_uneven = objectives.build("mispo_random_traj", seed=7)
        # metrics pooled over the ranks with the shared reducer (uneven halves: 3 and 7 trajectories)
        from stalerl.objectives import distributed as dist_utils

        for name, hp, rows in (("m2po", {"tau": 0.02}, _split(rank)), ("mispo_random_traj", {"seed": 7}, None)):
            batch = _m2po_batch() if name == "m2po" else _traj_batches()[0]
            out = objectives.build(name, **hp).per_token_loss(*_rows(batch, rows or (slice(0, 3) if rank == 0 else slice(3, 10))))
            res[f"pooled_{name}"] = objectives.reduce_metrics([out.stats], batch=out.batch_metrics,
                                                               gather=dist_utils.all_gather_varlen)
        res["ac_bound"], res["ac_accept"], res["rt_accept"], res["rt_uneven"], res["rt_n"] = [], [], [], [], []
        res["ac_micro_bound"] = []
        for batch in _traj_batches():
            half = _rows(batch, slice(5 * rank, 5 * rank + 5))
            out = ac(*half)
            res["ac_bound"].append(out.metrics["actor/traj_bound"])
            res["ac_accept"].append(out.extras["traj_accepted"])
            res["ac_micro_bound"].append(ac_micro(*half).metrics["actor/traj_bound"])
            out = rt(*half)
            res["rt_accept"].append(out.extras["traj_accepted"])
            res["rt_n"].append(out.metrics["actor/n_accept"])
            uneven = _rows(batch, slice(0, 3) if rank == 0 else slice(3, 10))
            res["rt_uneven"].append(rt_uneven(*uneven).extras["traj_accepted"])
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    import torch.multiprocessing as mp

    outdir = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_m2po_mask_equals_single_process(rank_results):
    from stalerl import objectives

    full = _m2po_batch()
    out = objectives.build("m2po", tau=0.02)(*full)
    assert out.metrics["actor/m2_masked_tokens"] > 0
    kept = torch.cat([rank_results[r]["m2po_kept"] for r in range(WORLD)])
    assert torch.equal(kept, out.extras["token_kept"])
    # with mini-batch normalisers, the mean of the rank losses (what DDP's gradient averaging sees)
    # is the single-process loss
    mean_loss = sum(rank_results[r]["m2po_loss_bs"] for r in range(WORLD)) / WORLD
    torch.testing.assert_close(mean_loss, out.loss.detach(), atol=1e-12, rtol=0)
    cap = objectives.build("m2po_capped", tau=0.02)(*full).metrics["actor/m2_cap"]
    assert rank_results[0]["m2po_cap"] == pytest.approx(cap, abs=1e-12)
    assert rank_results[1]["m2po_cap"] == pytest.approx(cap, abs=1e-12)


def test_m2po_ties_across_ranks(rank_results):
    from stalerl import objectives

    full = objectives.build("m2po", tau=0.06)(*_ties_batch()).extras["token_kept"]
    assert int(full.sum()) == 2  # the .01 and the first .09
    kept = torch.cat([rank_results[r]["ties_kept"] for r in range(WORLD)])
    assert torch.equal(kept, full)


def test_micro_scope_does_not_gather(rank_results):
    from stalerl import objectives

    batch = _skewed_batch()
    full = objectives.build("m2po", tau=0.04)(*batch).extras["token_kept"]
    mini = torch.cat([rank_results[r]["mini_kept"] for r in range(WORLD)])
    assert torch.equal(mini, full)
    for r in range(WORLD):
        local = objectives.build("m2po", tau=0.04)(*_rows(batch, slice(2 * r, 2 * r + 2))).extras["token_kept"]
        assert torch.equal(rank_results[r]["micro_kept"], local)
    assert not torch.equal(rank_results[1]["micro_kept"], rank_results[1]["mini_kept"])
    # AC-MIS-PO with micro scope: each rank's controller sees only its own half
    ac_local = objectives.build("ac_mispo")
    bounds = [ac_local(*_rows(b, slice(5, 10))).metrics["actor/traj_bound"] for b in _traj_batches()]
    assert rank_results[1]["ac_micro_bound"] == pytest.approx(bounds, abs=1e-15)


def test_ac_mispo_bound_equals_single_process(rank_results):
    from stalerl import objectives

    ac = objectives.build("ac_mispo", warmup_train_steps=2)
    for k, batch in enumerate(_traj_batches()):
        out = ac(*batch)
        for r in range(WORLD):
            assert rank_results[r]["ac_bound"][k] == pytest.approx(out.metrics["actor/traj_bound"], abs=1e-15)
        accepted = torch.cat([rank_results[r]["ac_accept"][k] for r in range(WORLD)])
        assert torch.equal(accepted, out.extras["traj_accepted"])


def test_random_traj_global_draw(rank_results):
    from stalerl import objectives

    rt = objectives.build("mispo_random_traj", seed=7)
    mispo = objectives.build("mispo")
    for k, batch in enumerate(_traj_batches()):
        single = rt(*batch).extras["traj_accepted"]
        n_acc = int(mispo(*batch).extras["traj_accepted"].sum())
        assert 0 < n_acc < 10
        for key in ("rt_accept", "rt_uneven"):
            accepted = torch.cat([rank_results[r][key][k] for r in range(WORLD)])
            assert int(accepted.sum()) == n_acc
            assert torch.equal(accepted, single)
        assert rank_results[0]["rt_n"][k] == n_acc == rank_results[1]["rt_n"][k]


def test_metrics_pooled_over_ranks_equal_single_process(rank_results):
    from stalerl import objectives

    for name, hp, batch in (("m2po", {"tau": 0.02}, _m2po_batch()), ("mispo_random_traj", {"seed": 7}, _traj_batches()[0])):
        single = objectives.build(name, **hp)(*batch).metrics
        for r in range(WORLD):
            pooled = rank_results[r][f"pooled_{name}"]
            assert set(pooled) == set(single)
            for key, value in single.items():
                assert pooled[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    assert 0 < rank_results[0]["pooled_mispo_random_traj"]["actor/traj_accept_frac"] < 1
