"""MultiBlockCollator: the Vol-JEPA multi-block masks (published configuration and output).

Properties are checked on synthetic token grids; the equality with the published
collator itself is checked by ``bench/bench_masks.py`` (which reads the published code);
these tests do not import it. The golden values of ``test_golden_two_steps`` were
generated once with this implementation after the bench (and a one-off run of the
published collator on this very fixture) showed them equal.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from neurovfm.datasets.multiblock import MultiBlockCollator  # noqa: E402


def cfg(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "hw_pred_mask_scale": [{"mri": [0.7, 0.7], "ct": [0.75, 0.75]}, {"mri": [0.25, 0.25], "ct": [0.2, 0.2]}],
        "d_pred_mask_scale": (1.0, 1.0),
        "enc_mask_scale": {"mri": 0.25, "ct": 0.2},
        "drop_rate": 0.0,
        "aspect_ratio": [(0.3, 3.0)],
        "npred": [1],
        "max_depth_scale": 1.0,
        "remove_background": True,
        "min_filt_ratio": 0.0,
        "switch_enc_pred": [True],
    }
    c.update(over)
    return c


def grid_item(i: int, d: int, h: int, w: int, *, mode: str = "ct", seed: int = 0) -> dict[str, Any]:
    """An item of a d x h x w token grid with an ellipsoidal foreground (uint8 flags, 1 = background)."""
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    r = ((zz - (d - 1) / 2) / (d / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
    flags = (r > 0.8).reshape(-1).to(torch.uint8)
    n = d * h * w
    return {
        "img": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4) + 10_000 * i,
        "coords": torch.stack([zz, yy, xx], -1).reshape(-1, 3),
        "filtered": flags,
        "size": torch.tensor([d, h, w]),
        "label": i,
        "study": f"study{i}",
        "path": f"path{i}",
        "mode": mode,
    }


def batch(n: int = 4) -> list[dict[str, Any]]:
    dims = [(6, 10, 12), (8, 12, 9), (5, 11, 11), (7, 9, 13), (6, 12, 12), (9, 10, 10)]
    return [grid_item(i, *dims[i % len(dims)], mode="mri" if i % 2 else "ct") for i in range(n)]


def per_sample(idx: torch.Tensor, cu: torch.Tensor) -> list[torch.Tensor]:
    return [idx[int(cu[b]) : int(cu[b + 1])] for b in range(len(cu) - 1)]


def call(coll: MultiBlockCollator, items: list[dict[str, Any]], seed: int = 0) -> tuple[Any, ...]:
    torch.manual_seed(seed)  # block positions and the drop come from the global generator
    return coll(items)


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
@pytest.mark.parametrize("switch", [True, False])
def test_mask_properties(drop_rate: float, switch: bool) -> None:
    items = batch(6)
    coll = MultiBlockCollator([cfg(drop_rate=drop_rate, switch_enc_pred=[switch])])
    for step in range(3):
        out, pred, init, enc = call(coll, items, seed=step)
        assert len(pred) == len(init) == len(enc) == 1
        (p_idx, p_cu, p_max), (i_idx, i_cu, i_max), (e_idx, e_cu, e_max) = pred[0], init[0], enc[0]
        for idx, cu, mx in ((p_idx, p_cu, p_max), (i_idx, i_cu, i_max), (e_idx, e_cu, e_max)):
            assert idx.dtype == torch.int64 and cu.dtype == torch.int32 and isinstance(mx, int)
            assert cu.shape == (len(items) + 1,) and int(cu[0]) == 0 and int(cu[-1]) == len(idx)
            assert mx == int((cu[1:] - cu[:-1]).max())
        flags = out["filtered"]
        # context indices: positions in batch['img'], sorted
        assert int(i_idx.min()) >= 0 and int(i_idx.max()) < len(out["img"])
        assert bool((i_idx[1:] > i_idx[:-1]).all())
        offset = 0
        fallbacks = 0
        for b, (pb, ib, eb) in enumerate(
            zip(per_sample(p_idx, p_cu), per_sample(i_idx, i_cu), per_sample(e_idx, e_cu))
        ):
            n = int(items[b]["size"].prod())
            lo, hi = int(i_cu[b]), int(i_cu[b + 1])
            if len(ib) == len(pb) == len(eb) == 1:  # the published fallback: token 0 of the sample
                assert ib.tolist() == [offset] and pb.tolist() == eb.tolist() == [lo]
                fallbacks += 1
            else:
                # the context is the sample's foreground tokens, all of them
                fg = torch.nonzero(flags[offset : offset + n] == 0).flatten() + offset
                assert torch.equal(ib, fg)
                # pred/enc index the context tokens of their own sample; disjoint; together the context
                for m in (pb, eb):
                    assert bool(((m >= lo) & (m < hi)).all())
                assert not set(pb.tolist()) & set(eb.tolist())
                assert set(pb.tolist()) | set(eb.tolist()) == set(range(lo, hi))
                assert 0.05 <= len(eb) / len(ib) <= 0.5
            offset += n
        if switch:
            assert fallbacks < len(items)


def test_blocks_span_depth_within_scale() -> None:
    """switch_enc_pred: the encoder is one full-depth h x w block (foreground part), h * w per the scale."""
    items = batch(6)
    scale = 0.3
    coll = MultiBlockCollator([cfg(hw_pred_mask_scale=[{"ct": [scale, scale], "mri": [scale, scale]}])])
    out, _, init, enc = call(coll, items, seed=3)
    ctx = init[0][0]
    enc_global = ctx[enc[0][0]]
    offset = 0
    for b, it in enumerate(items):
        d, h, w = it["size"].tolist()
        n = d * h * w
        local = enc_global[(enc_global >= offset) & (enc_global < offset + n)] - offset
        offset += n
        if len(local) <= 1:
            continue
        hh, ww = (local % (h * w)) // w, local % w
        box = torch.zeros(d, h, w, dtype=torch.bool)
        box[:, int(hh.min()) : int(hh.max()) + 1, int(ww.min()) : int(ww.max()) + 1] = True
        fg = it["filtered"].reshape(d, h, w) == 0
        got = torch.zeros(d * h * w, dtype=torch.bool)
        got[local] = True
        assert torch.equal(got.reshape(d, h, w), box & fg), b
        fg_ratio = float(fg.float().mean())
        keep = int(h * w * scale * fg_ratio)
        bh, bw = int(hh.max() - hh.min()) + 1, int(ww.max() - ww.min()) + 1
        # the foreground part's bounding box is at most the block (aspect 0.3..3 of `keep` tokens)
        assert bh * bw <= max(keep * 1.5 + 4, 4)


def test_same_step_same_masks_and_steps_differ() -> None:
    items = batch(4)
    a, b = MultiBlockCollator([cfg()]), MultiBlockCollator([cfg()])
    ra0, rb0 = call(a, items, seed=5), call(b, items, seed=5)
    for x, y in zip(ra0[1:], rb0[1:]):
        assert torch.equal(x[0][0], y[0][0]) and torch.equal(x[0][1], y[0][1]) and x[0][2] == y[0][2]
    ra1 = call(a, items, seed=5)  # same global seed, next step: new block sizes from the step generator
    assert a.step_value == 1 and b.step_value == 0
    assert not torch.equal(ra0[3][0][0], ra1[3][0][0])


def test_step_counter() -> None:
    coll = MultiBlockCollator([cfg()])
    assert coll.step_value == -1
    assert coll.step() == 0 and coll.step() == 1
    call(coll, batch(2))
    assert coll.step_value == 2


class _Items(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.items = batch(6)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork workers")
def test_step_counter_shared_by_workers() -> None:
    """Forked DataLoader workers share the collator's step counter: every batch gets its own step."""
    coll = MultiBlockCollator([cfg()])
    loader = torch.utils.data.DataLoader(
        _Items(), batch_size=1, num_workers=2, collate_fn=coll, multiprocessing_context="fork"
    )
    outs = list(loader)
    assert len(outs) == 6
    assert coll.step_value == 5  # 6 steps taken in the workers, seen by the parent


@pytest.mark.parametrize("internal", [False, True])
def test_apply_masks_internally(internal: bool) -> None:
    items = batch(3)
    ref = call(MultiBlockCollator([cfg()]), items)
    out, pred, init, enc = call(MultiBlockCollator([cfg()], apply_masks_internally=internal), items)
    assert torch.equal(pred[0][0], ref[1][0][0]) and torch.equal(enc[0][0], ref[3][0][0])
    assert torch.equal(init[0][1], ref[2][0][1])
    if internal:
        assert init[0][0] is None
        ctx = ref[2][0][0]
        for key in ("img", "coords", "filtered"):
            assert torch.equal(out[key], ref[0][key][ctx])
    else:
        assert torch.equal(init[0][0], ref[2][0][0])
        assert torch.equal(out["img"], torch.cat([it["img"] for it in items]))


def test_batch_part() -> None:
    items = batch(3)
    out, *_ = call(MultiBlockCollator([cfg()]), items)
    assert out["label"].dtype == torch.float16 and out["label"].tolist() == [0, 1, 2]
    assert out["size"].tolist() == [it["size"].tolist() for it in items]
    assert out["path"] == ["path0", "path1", "path2"] and out["mode"] == ["ct", "mri", "ct"]
    assert torch.equal(out["filtered"], torch.cat([it["filtered"] for it in items]))
    items2 = [dict(it, label=[float(i), 1.0]) for i, it in enumerate(items)]
    out2, *_ = call(MultiBlockCollator([cfg()]), items2)
    assert out2["label"].shape == (3, 2) and out2["label"].dtype == torch.float16


def test_fallback_masks() -> None:
    """An impossible encoder fraction: after 5 attempts each sample's masks are its token 0."""
    items = batch(3)
    c = cfg(
        hw_pred_mask_scale=[{"ct": [0.0, 0.0], "mri": [0.0, 0.0]}], switch_enc_pred=[False], remove_background=False
    )
    c["enc_mask_scale"] = {"ct": 1.0, "mri": 1.0}  # no depth drop: encoder = all but one column
    _, pred, init, enc = call(MultiBlockCollator([c]), items)
    sizes = [int(it["size"].prod()) for it in items]
    assert init[0][0].tolist() == [0, sizes[0], sizes[0] + sizes[1]]
    assert pred[0][0].tolist() == enc[0][0].tolist() == [0, 1, 2]
    assert pred[0][1].tolist() == [0, 1, 2, 3] and pred[0][2] == 1


def test_bool_switch_accepted() -> None:
    a = call(MultiBlockCollator([cfg(switch_enc_pred=True)]), batch(2))
    b = call(MultiBlockCollator([cfg(switch_enc_pred=[True])]), batch(2))
    assert torch.equal(a[3][0][0], b[3][0][0])


def test_errors() -> None:
    with pytest.raises(ValueError, match="exactly one mask configuration"):
        MultiBlockCollator([cfg(), cfg()])
    with pytest.raises(ValueError, match="empty batch"):
        MultiBlockCollator([cfg()])([])


def _golden_items() -> list[dict[str, Any]]:
    out = []
    for i, (d, h, w) in enumerate([(3, 5, 6), (2, 6, 5)]):
        n = d * h * w
        k = torch.arange(n)
        flags = torch.zeros(n, dtype=torch.uint8)
        flags[(k % w == 0) | ((k // (h * w) == 0) & (k % 3 == 0))] = 1
        out.append(
            {
                "img": k.float()[:, None],
                "coords": torch.zeros(n, 3, dtype=torch.long),
                "filtered": flags,
                "size": torch.tensor([d, h, w]),
                "label": i,
                "study": f"s{i}",
                "path": f"p{i}",
                "mode": ["mri", "ct"][i],
            }
        )
    return out


GOLDEN_ENC = [
    [8, 9, 10, 12, 13, 14, 16, 17, 18, 30, 31, 32, 33, 35, 36, 37, 38, 40, 41, 42, 43, 55, 56, 57, 58, 60, 61, 62]
    + [63, 65, 66, 67, 68, 73, 74, 76, 79, 91, 92, 95, 96, 99, 100],
    [6, 7, 10, 11, 14, 15, 27, 28, 29, 32, 33, 34, 37, 38, 39, 52, 53, 54, 57, 58, 59, 62, 63, 64, 79, 81, 82, 84]
    + [99, 100, 103, 104, 107, 108],
]
GOLDEN_CU = [  # (pred, pred_init, enc) cu_seqlens for steps 0 and 1
    ([0, 37, 67], [0, 70, 110], [0, 33, 43]),
    ([0, 46, 76], [0, 70, 110], [0, 24, 34]),
]


def test_golden_two_steps() -> None:
    """Steps 0 and 1 with the global generator seeded 0 before each (equal to the published collator)."""
    c = cfg(
        hw_pred_mask_scale=[{"mri": [0.3, 0.5], "ct": [0.25, 0.45]}],
        aspect_ratio=[(0.5, 2.0)],
    )
    coll = MultiBlockCollator([c])
    for step in range(2):
        items = _golden_items()
        _, pred, init, enc = call(coll, items, seed=0)
        flags = torch.cat([it["filtered"] for it in items])
        assert init[0][0].tolist() == torch.nonzero(flags == 0).flatten().tolist()
        assert enc[0][0].tolist() == GOLDEN_ENC[step]
        ctx = set(range(int(init[0][1][-1])))
        assert pred[0][0].tolist() == sorted(ctx - set(GOLDEN_ENC[step]))
        for got, want in zip((pred, init, enc), GOLDEN_CU[step]):
            assert got[0][1].tolist() == want and got[0][2] == max(b - a for a, b in zip(want, want[1:]))


def test_unlabelled_items_keep_their_labels_as_a_list() -> None:
    """Items without labels (ImageDataset without study_labels: label None) collate as the
    published dataset's label 0 does: float16 zeros."""
    items = batch(3)
    for it in items:
        it["label"] = None
    out, *_ = call(MultiBlockCollator([cfg()]), items)
    assert out["label"].dtype == torch.float16 and out["label"].tolist() == [0.0, 0.0, 0.0]
    items[0]["label"] = 1
    with pytest.raises(ValueError, match="1 of 3 items have no label|2 of 3 items have no label"):
        call(MultiBlockCollator([cfg()]), items)
