"""Re-ID readers on small trees written in the official layouts, the clip sampling and the P x K sampler."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

from lib.data.reid_sampler import IdentityBatchSampler
from lib.data.reid_sets import build_reid_datasets
from lib.data.samplers import SeededAugmentation
from lib.errors import ConfigError

SIZE = (16, 8)


def write_image(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((12, 6, 3), value, np.uint8)).save(path)


def market_tree(root):
    base = os.path.join(root, "Market-1501-v15.09.15")
    for name in ("0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000001_01.jpg",
                 "0007_c1s1_000002_01.jpg", "-1_c1s1_000003_01.jpg"):
        write_image(os.path.join(base, "bounding_box_train", name))
    for name in ("0003_c1s1_000001_00.jpg", "0005_c4s1_000001_00.jpg"):
        write_image(os.path.join(base, "query", name))
    for name in ("0003_c2s1_000011_00.jpg", "0005_c4s1_000021_00.jpg", "0000_c1s1_000031_00.jpg",
                 "-1_c2s1_000041_00.jpg", "0005_c6s1_000051_00.jpg"):
        write_image(os.path.join(base, "bounding_box_test", name))
    open(os.path.join(base, "query", "Thumbs.db"), "w").close()  # the release has these: ignored
    return base


def test_market(tmp_path):
    base = market_tree(tmp_path)
    train, query, gallery, info = build_reid_datasets("market1501", tmp_path, img_size=SIZE)
    assert [s[1:] for s in train.samples] == [(0, 0), (0, 1), (1, 0), (1, 2)]  # relabelled, sorted, junk dropped
    assert info.num_classes == 2 and info.num_query == 2
    assert [os.path.basename(p) for p, _, _ in gallery.samples] == [
        "0000_c1s1_000031_00.jpg", "0003_c2s1_000011_00.jpg", "0005_c4s1_000021_00.jpg", "0005_c6s1_000051_00.jpg"]
    assert gallery.pids == [0, 3, 5, 5] and gallery.camids == [0, 1, 3, 5]  # distractor 0000 kept
    image, pid, cam = train[0]
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32 and (pid, cam) == (0, 0)
    write_image(os.path.join(base, "query", "oops.jpg"))
    with pytest.raises(ConfigError, match="oops.jpg"):
        build_reid_datasets("market1501", tmp_path)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="market1501: no Market-1501-v15.09.15/bounding_box_train"):
        build_reid_datasets("market1501", tmp_path)
    with pytest.raises(ConfigError, match="unknown re-ID dataset"):
        build_reid_datasets("market", tmp_path)
    base = market_tree(tmp_path)
    with open(os.path.join(base, "query", "0003_c1s1_000001_00.jpg"), "w") as handle:
        handle.write("not an image")
    _, query, _, _ = build_reid_datasets("market1501", tmp_path)
    with pytest.raises(ConfigError, match="cannot read image .*0003_c1s1_000001_00.jpg"):
        query[0]


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17(tmp_path, version):
    train_dir, test_dir = ("train", "test") if version == "MSMT17_V1" else ("mask_train_v2", "mask_test_v2")
    base = tmp_path / version
    lists = {"train": [("0001/0001_011_03_0303morning_0001_0.jpg", 1), ("0000/0000_000_01_0303morning_0015_0.jpg", 0)],
             "val": [("0001/0001_012_05_0303noon_0002_1.jpg", 1)],
             "query": [("0004/0004_001_15_0113morning_0003_0.jpg", 4)],
             "gallery": [("0004/0004_002_02_0113noon_0004_0.jpg", 4), ("0006/0006_003_15_0113noon_0004_0.jpg", 6)]}
    for part, entries in lists.items():
        folder = train_dir if part in ("train", "val") else test_dir
        for rel, _ in entries:
            write_image(str(base / folder / rel))
        (base / f"list_{part}.txt").write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))
    train, query, gallery, info = build_reid_datasets("msmt17", tmp_path, img_size=SIZE)
    assert [s[1:] for s in train.samples] == [(0, 0), (1, 2), (1, 4)]  # train + val; camera from the 3rd field
    assert query.camids == [14] and gallery.pids == [4, 6] and gallery.camids == [1, 14]
    assert all(os.path.isfile(p) for p, _, _ in train.samples + gallery.samples)
    (base / "list_query.txt").write_text("0004/0004_x.jpg 4\n")
    with pytest.raises(ConfigError, match="cannot parse line 1"):
        build_reid_datasets("msmt17", tmp_path)


def mars_tree(root):
    base = os.path.join(root, "MARS")
    os.makedirs(os.path.join(base, "info"))
    train_names = [f"0001C1T0001F{f:03d}.jpg" for f in (1, 2, 3)] + [f"0003C2T0002F{f:03d}.jpg" for f in (1, 2)]
    test_names = ([f"0002C1T0001F{f:03d}.jpg" for f in (1, 2)] + [f"0002C3T0001F{f:03d}.jpg" for f in (1, 2, 3)]
                  + [f"00-1C1T0001F{f:03d}.jpg" for f in (1,)] + [f"0000C2T0009F{f:03d}.jpg" for f in (1, 2)])
    for part, names in (("bbox_train", train_names), ("bbox_test", test_names)):
        for name in names:
            write_image(os.path.join(base, part, name[:4], name))
    for part, names in (("train", train_names), ("test", test_names)):
        with open(os.path.join(base, "info", f"{part}_name.txt"), "w") as handle:
            handle.write("\n".join(names) + "\n")
    savemat(os.path.join(base, "info", "tracks_train_info.mat"),
            {"track_train_info": np.array([[1, 3, 1, 1], [4, 5, 3, 2]], float)})
    savemat(os.path.join(base, "info", "tracks_test_info.mat"),
            {"track_test_info": np.array([[1, 2, 2, 1], [3, 5, 2, 3], [6, 6, -1, 1], [7, 8, 0, 2]], float)})
    savemat(os.path.join(base, "info", "query_IDX.mat"), {"query_IDX": np.array([[1]], float)})
    return base


def test_mars(tmp_path):
    mars_tree(tmp_path)
    train, query, gallery, info = build_reid_datasets("mars", tmp_path, img_size=SIZE, seq_len=2)
    assert info.video and info.num_classes == 2
    assert [(len(f), p, c) for f, p, c in train.samples] == [(3, 0, 0), (2, 1, 1)]
    assert [(len(f), p, c) for f, p, c in query.samples] == [(2, 2, 0)]
    assert [(len(f), p, c) for f, p, c in gallery.samples] == [(3, 2, 2), (2, 0, 1)]  # pid -1 skipped, 0 kept
    assert os.path.basename(train.samples[0][0][2]) == "0001C1T0001F003.jpg"
    clip, pid, cam = train[0]
    assert clip.shape == (2, 3, *SIZE)
    clips, _, _ = gallery[0]
    assert clips.shape == (2, 2, 3, *SIZE)  # 3 frames -> 2 dense clips of 2, the last loop-padded


def write_sequence(folder, frames):
    for f in frames:
        write_image(os.path.join(folder, f))


def ilids_tree(root, persons=6, with_mat=True):
    base = os.path.join(root, "i-LIDS-VID", "sequences")
    for cam in ("cam1", "cam2"):
        for p in range(1, persons + 1):
            # frame 10 must follow frame 9 (numeric sort)
            write_sequence(os.path.join(base, cam, f"person{p:03d}"),
                           [f"{cam}_person{p:03d}_{n:d}.png" for n in (9, 10, 8)])
    if with_mat:
        os.makedirs(os.path.join(root, "train-test people splits"))
        rows = np.array([np.roll(np.arange(1, persons + 1), s) for s in range(10)], float)
        savemat(os.path.join(root, "train-test people splits", "train_test_splits_ilidsvid.mat"), {"ls_set": rows})


def test_ilidsvid_mat_split(tmp_path):
    ilids_tree(tmp_path)
    train, query, gallery, info = build_reid_datasets("ilidsvid", tmp_path, img_size=SIZE, split=1)
    # split 1: row [6, 1, 2, 3, 4, 5]: first half (6, 1, 2) tests, the rest (3, 4, 5) trains
    def names(samples):
        return sorted({os.path.basename(os.path.dirname(f[0])) for f, _, _ in samples})
    assert names(query.samples) == ["person001", "person002", "person006"] == names(gallery.samples)
    assert names(train.samples) == ["person003", "person004", "person005"]
    assert set(query.camids) == {0} and set(gallery.camids) == {1} and info.num_splits == 10
    assert [os.path.basename(f) for f in query.samples[0][0]] == [
        "cam1_person001_8.png", "cam1_person001_9.png", "cam1_person001_10.png"]
    assert query.pids == gallery.pids and len(train) == 6 and info.num_classes == 3
    with pytest.raises(ConfigError, match="split must be an integer 0..9"):
        build_reid_datasets("ilidsvid", tmp_path, split=10)


def test_ilidsvid_fallback_split_is_deterministic(tmp_path):
    ilids_tree(tmp_path, with_mat=False)
    a = build_reid_datasets("ilidsvid", tmp_path, img_size=SIZE, split=3)
    b = build_reid_datasets("ilidsvid", tmp_path, img_size=SIZE, split=3)
    c = build_reid_datasets("ilidsvid", tmp_path, img_size=SIZE, split=4)
    assert a[1].samples == b[1].samples and len(a[1]) == 3
    other = [build_reid_datasets("ilidsvid", tmp_path, split=s)[1].samples for s in range(10)]
    assert any(o != a[1].samples for o in other) and c[3].split == 4


def prid_tree(root, json_split=True):
    base = os.path.join(root, "prid_2011", "multi_shot")
    lengths = {1: 3, 2: 3, 3: 3, 4: 1, 5: 3}
    for p, n in lengths.items():
        for cam in ("cam_a", "cam_b"):
            write_sequence(os.path.join(base, cam, f"person_{p:04d}"), [f"{i:04d}.png" for i in range(1, n + 1)])
    write_sequence(os.path.join(base, "cam_a", "person_0300"), ["0001.png"])  # seen by one camera only
    if json_split:
        splits = [{"train": ["person_0001", "person_0002"], "test": ["person_0003", "person_0005"]}] * 10
        with open(os.path.join(root, "splits_prid2011.json"), "w") as handle:
            json.dump(splits, handle)


def test_prid2011(tmp_path):
    prid_tree(tmp_path)
    train, query, gallery, info = build_reid_datasets("prid2011", tmp_path, img_size=SIZE, split=2)
    assert len(train) == 4 and len(query) == 2 and len(gallery) == 2 and info.num_classes == 2
    assert query.pids == gallery.pids and query.camids == [0, 0]
    os.remove(tmp_path / "splits_prid2011.json")
    train, query, gallery, info = build_reid_datasets("prid2011", tmp_path, img_size=SIZE, min_frames=2)
    persons = {os.path.basename(os.path.dirname(f[0])) for f, _, _ in train.samples + query.samples}
    assert persons == {"person_0001", "person_0002", "person_0003", "person_0005"}  # 0004 too short, 0300 single


def test_reidfolder(tmp_path):
    for part, names in (("train", ["1_c1_a.png", "2_c2_b.png", "-1_c1_x.png"]), ("query", ["3_c0_q.png"]),
                        ("gallery", ["3_c1_g.png", "3_c0_h.png"])):
        for name in names:
            write_image(str(tmp_path / part / name))
    train, query, gallery, info = build_reid_datasets("reidfolder", tmp_path, img_size=SIZE)
    assert train.pids == [0, 1] and query.camids == [0] and gallery.camids == [0, 1]


def test_clip_sampling():
    train = build_reid_datasets("fakevideo", None, img_size=SIZE, seq_len=4)[0]
    train.mode = "train"
    torch.manual_seed(0)
    assert train.frame_indices(3).tolist() == [[0, 1, 2, 0]]
    starts = {int(train.frame_indices(6)[0, 0]) for _ in range(50)}
    assert starts == {0, 1, 2} and all(np.diff(train.frame_indices(9)[0]).tolist() == [1, 1, 1] for _ in range(5))
    train.mode = "dense"
    assert train.frame_indices(6).tolist() == [[0, 1, 2, 3], [4, 5, 0, 1]]
    train.mode = "evenly"
    assert train.frame_indices(7).tolist() == [[0, 2, 4, 6]]


def test_augmentation_is_seeded():
    train = build_reid_datasets("fake", None, img_size=SIZE)[0]
    seeded = SeededAugmentation(train)
    assert torch.equal(seeded[(3, 11)][0], seeded[(3, 11)][0])
    assert not all(torch.equal(seeded[(3, 11)][0], seeded[(3, s)][0]) for s in range(12, 20))


def test_identity_sampler():
    pids = [i // 5 for i in range(40)] + [8, 9, 9]  # 8 ids with 5 images, id 8 with 1, id 9 with 2
    sampler = IdentityBatchSampler(pids, batch_size=8, num_instances=4, seed=3)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        ids = [pids[i] for i, _ in batch]
        assert len(batch) == 8 and sorted(ids.count(p) for p in set(ids)) == [4, 4]
    again = IdentityBatchSampler(pids, batch_size=8, num_instances=4, seed=3)
    again.set_epoch(2)
    assert list(again) == batches
    again.set_epoch(3)
    assert list(again) != batches
    again.set_epoch(2, skip=1)
    assert list(again) == batches[1:]
    ranks = [IdentityBatchSampler(pids, 8, 4, num_replicas=2, rank=r, seed=3) for r in range(2)]
    ids = [{pids[i] for batch in r for i, _ in batch} for r in ranks]
    assert ids[0] and ids[1] and not ids[0] & ids[1] and len(ranks[0]) == len(ranks[1])
    with pytest.raises(ConfigError, match="multiple"):
        IdentityBatchSampler(pids, batch_size=6, num_instances=4)


def test_identity_sampler_with_loader_workers():
    train = build_reid_datasets("fake", None, img_size=SIZE)[0]
    results = []
    for workers in (0, 2):
        sampler = IdentityBatchSampler(train.pids, batch_size=8, num_instances=4, seed=1)
        sampler.set_epoch(1)
        loader = DataLoader(SeededAugmentation(train), batch_sampler=sampler, num_workers=workers)
        results.append([(images, pids) for images, pids, _ in loader])
    assert len(results[0]) == len(results[1]) > 0
    for (a, pa), (b, pb) in zip(*results):
        assert torch.equal(a, b) and torch.equal(pa, pb) and a.shape == (8, 3, *SIZE)


def test_mars_broken_info(tmp_path):
    base = mars_tree(tmp_path)
    savemat(os.path.join(base, "info", "tracks_test_info.mat"), {"track_test_info": np.ones((3, 2))})
    with pytest.raises(ConfigError, match="tracks_test_info.mat holds shape"):
        build_reid_datasets("mars", tmp_path)
    os.remove(os.path.join(base, "info", "query_IDX.mat"))
    with pytest.raises(ConfigError, match="mars: missing .*query_IDX.mat"):
        build_reid_datasets("mars", tmp_path)
