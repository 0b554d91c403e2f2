"""The re-ID and detection picture tools (tools/retrieval.py, tools/detections.py) on tiny models and generated
data: the ranking shown is the protocol's, frames and boxes are drawn where they belong, errors are one line."""
import os

import cv2
import numpy as np
import pytest
import torch
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from lib.data.reid_sets import build_reid_datasets
from lib.engine.reid.evaluation import evaluate_distances, pairwise_distances
from models import build_model
from tools import retrieval

REID_SIZE = (64, 32)


def save_checkpoint(path, model, args):
    torch.save({"state_dict": model.state_dict(), "model_args": model.build_args, "args": args, "epoch": 3}, path)
    return str(path)


@pytest.fixture(scope="module")
def reid_checkpoint(tmp_path_factory):
    """A ResNet-18 re-ID model with one SNL block, its BNNeck statistics moved by a few training-mode passes (so
    the features are not those of the initialization alone), saved as train_reid.py saves it."""
    root = tmp_path_factory.mktemp("reid")
    torch.manual_seed(0)
    model = build_model("reid", 18, num_classes=8, nl_type="snl", nl_nums=1)
    train_set, _, _, _ = build_reid_datasets("fake", None, img_size=REID_SIZE)
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.stack([train_set[i][0] for i in range(8)]))
    args = dict(task="reid", dataset="fake", data_dir=str(root), img_size=list(REID_SIZE), distance="euclidean")
    return save_checkpoint(root / "model_best.pth.tar", model.eval(), args)


def tool(module, argv, capsys):
    status = module.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- retrieval ---------------------------------------------------------------------------------------------------

def test_rank_gallery_is_the_protocol_on_a_hand_made_case():
    # gallery: pid, camera, distance. Entry 1 (pid 5, camera 0 = the query's) and entry 4 (junk) are removed;
    # entries 2 and 3 tie at 0.3 and keep gallery order.
    g_pids, g_cams = [7, 5, 5, 9, -1, 0], [1, 0, 1, 1, 1, 1]
    distances = [0.5, 0.1, 0.3, 0.3, 0.05, 0.2]
    ranked = retrieval.rank_gallery(distances, 5, 0, g_pids, g_cams)
    assert ranked == [(5, 0.2, False), (2, 0.3, True), (3, 0.3, False), (0, 0.5, False)]
    assert retrieval.rank_gallery(distances, 5, 0, g_pids, g_cams, top_k=2) == ranked[:2]
    unknown = retrieval.rank_gallery(distances, None, None, g_pids, g_cams)
    assert [i for i, _, _ in unknown] == [1, 5, 2, 3, 0] and all(same is None for _, _, same in unknown)


def test_rank_gallery_gives_the_protocol_metrics_on_random_features():
    """Per query, rank-1 and AP computed from rank_gallery's list equal evaluate_distances' for that query."""
    generator = torch.Generator().manual_seed(1)
    qf, gf = torch.randn(12, 6, generator=generator), torch.randn(40, 6, generator=generator)
    q_pids, q_cams = torch.randint(0, 5, (12,), generator=generator), torch.randint(0, 3, (12,), generator=generator)
    g_pids, g_cams = torch.randint(-1, 5, (40,), generator=generator), torch.randint(0, 3, (40,), generator=generator)
    dist = pairwise_distances(qf, gf).numpy()
    checked = 0
    for q in range(12):
        hits = [same for _, _, same in retrieval.rank_gallery(dist[q], int(q_pids[q]), int(q_cams[q]), g_pids, g_cams)]
        if not any(hits):
            continue
        positions = np.flatnonzero(hits) + 1
        ap = np.mean(np.arange(1, len(positions) + 1) / positions)
        metrics = evaluate_distances(dist[q:q + 1], q_pids[q:q + 1], g_pids, q_cams[q:q + 1], g_cams)
        assert metrics["rank1"] == float(hits[0]) and metrics["mAP"] == pytest.approx(ap)
        checked += 1
    assert checked >= 6


def frame_colour(picture, panel, panel_width):
    """The BGR colour at the middle of the left frame edge of the panel-th panel (0 = the query)."""
    left = panel * (panel_width + retrieval.GAP) + (retrieval.GAP if panel else 0)
    return tuple(int(v) for v in picture[picture.shape[0] // 2, left + 1])


def test_retrieval_picture_shows_the_protocol_ranking(reid_checkpoint, capsys):
    status, out, err = tool(retrieval, [reid_checkpoint, "--query", 1, "--display-height", 64], capsys)
    assert status == 0, err
    path = os.path.join(os.path.dirname(reid_checkpoint), "model_best_retrieval_fake_q1.png")
    assert f"wrote {path}" in out
    picture = cv2.imread(path)
    # The ranking the protocol makes from the model's features, computed here independently of the tool.
    from models.checkpoints import rebuild_model
    model = rebuild_model(torch.load(reid_checkpoint, weights_only=True)).eval()
    _, query_set, gallery_set, _ = build_reid_datasets("fake", None, img_size=REID_SIZE)
    with torch.no_grad():
        qf = model(query_set[1][0][None])
        gf = model(torch.stack([gallery_set[i][0] for i in range(len(gallery_set))]))
    order = np.argsort(pairwise_distances(qf, gf)[0].numpy(), kind="stable")[:10]
    expected = ["+" if gallery_set.pids[i] == query_set.pids[1] else "-" for i in order]
    assert f": {''.join(expected)} (+ right" in out
    panel_width = 32 + 2 * retrieval.BORDER
    assert picture.shape == (64 + 2 * retrieval.BORDER + retrieval.CAPTION,
                             11 * panel_width + 11 * retrieval.GAP, 3)
    assert frame_colour(picture, 0, panel_width) == retrieval.BLUE
    for k, sign in enumerate(expected, 1):
        assert frame_colour(picture, k, panel_width) == (retrieval.GREEN if sign == "+" else retrieval.RED), k


def test_a_query_file_of_a_known_identity_drops_its_same_camera_entries(reid_checkpoint, capsys, tmp_path):
    """A file named as a gallery identity's camera-1 image: its 4 gallery entries (all camera 1) are removed."""
    _, query_set, gallery_set, _ = build_reid_datasets("fake", None, img_size=REID_SIZE)
    pid = query_set.pids[0]
    image = query_set.read(query_set.samples[0][0]).permute(1, 2, 0).numpy()[:, :, ::-1]
    path = tmp_path / f"{pid:04d}_c2s1_000001_00.png"
    cv2.imwrite(str(path), np.ascontiguousarray(image))
    output = tmp_path / "out" / "q.png"
    status, out, err = tool(retrieval, [reid_checkpoint, "--query-file", path, "--top-k", 20, "--output", output],
                            capsys)
    assert status == 0, err
    assert output.exists()
    shown = f"top {len(gallery_set) - 4} of {len(gallery_set)} gallery entries by euclidean distance: {'-' * 14} ("
    assert shown in out
    # Named as seen by camera 1 (camid 0), which saw none of the gallery: all of them stay, its 4 among them.
    os.rename(path, tmp_path / f"{pid:04d}_c1s1_000001_00.png")
    status, out, err = tool(retrieval, [reid_checkpoint, "--query-file", tmp_path / f"{pid:04d}_c1s1_000001_00.png",
                                        "--top-k", 20, "--output", output], capsys)
    assert status == 0, err
    assert f"top {len(gallery_set)} of" in out and out.split("distance: ")[1].count("+") == 4 + 1  # + legend's


@pytest.mark.parametrize("argv, expected", [
    (["--query", 99], "--query 99 out of range: the fake query set has 4 images (0..3)"),
    (["--query", 0, "--output", "x.txt"], "the file name must end in one of"),
    (["--query-file", "missing.png"], "query file not found: missing.png"),
])
def test_retrieval_errors_are_one_line(reid_checkpoint, capsys, argv, expected):
    status, out, err = tool(retrieval, [reid_checkpoint, *argv], capsys)
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_retrieval_refuses_another_task_checkpoint(capsys, tmp_path):
    model = build_model("preresnet", 20, num_classes=3)
    path = save_checkpoint(tmp_path / "cls.pth.tar", model, dict(task="classification", dataset="fake"))
    status, out, err = tool(retrieval, [path, "--query", 0], capsys)
    assert status == 2 and "is a classification checkpoint, not a reid one: use it with train_val.py" in err


# --- detections --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def det_checkpoint(tmp_path_factory):
    """A Mask R-CNN R-18-FPN with one SNL block (untrained heads) for the fake COCO set (3 categories, ids 1, 3, 7),
    at a small input size, saved as train_det.py saves it."""
    root = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    model = build_model("maskrcnn", 18, num_classes=4, nl_type="snl", nl_nums=1, min_size=64, max_size=128)
    args = dict(task="detection", dataset="fake", data_dir=str(root / "data"), min_size=64, max_size=128)
    return save_checkpoint(root / "checkpoint.pth.tar", model, args)


def controlled_forward(self, images, targets=None):
    """Two detections in image coordinates: a triangle (label 2 = category 3) at 0.9 with a mask over the
    box's left half, and a box (label 1) at 0.2, below the default threshold."""
    height, width = images[0].shape[-2:]
    masks = torch.zeros(2, 1, height, width)
    masks[0, 0, 12:28, 12:25] = 0.9
    return [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0], [5.0, 35.0, 30.0, 55.0]]),
             "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.2]), "masks": masks}]


def test_detections_draw_boxes_masks_and_names_where_predicted(det_checkpoint, capsys, tmp_path, monkeypatch):
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from lib.data.coco import build_detection_datasets
    from tools import detections
    monkeypatch.setattr(GeneralizedRCNN, "forward", controlled_forward)
    output = tmp_path / "drawn.png"
    status, out, err = tool(detections, [det_checkpoint, "--index", 0, "--scale", 1, "--output", output], capsys)
    assert status == 0, err
    assert "1 of 2 detections at score >= 0.5: triangle 0.90" in out
    data_dir = os.path.join(os.path.dirname(det_checkpoint), "data")
    image = build_detection_datasets("fake", data_dir)[1][0][0]
    original = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[:, :, ::-1]
    picture = cv2.imread(str(output))
    assert picture.shape == original.shape
    triangle = np.array(detections.colour(2))
    for y, x in ((20, 10), (20, 40), (30, 30)):  # left, right and bottom edges of the box
        assert np.array_equal(picture[y, x], triangle), (y, x)
    # Inside the mask: the blend of the image and the colour; inside the box but off the mask: the image.
    blended = (original[20, 18] * 0.55 + triangle * 0.45).round()
    assert np.abs(picture[20, 18].astype(int) - blended).max() <= 1
    assert np.array_equal(picture[20, 32], original[20, 32])
    # The 0.2 detection is not drawn; with --score-threshold 0.1 its box edge is.
    assert np.array_equal(picture[45, 5], original[45, 5])
    status, out, err = tool(detections, [det_checkpoint, "--index", 0, "--scale", 1, "--output", output,
                                         "--score-threshold", 0.1], capsys)
    assert status == 0 and "2 of 2 detections" in out and "box 0.20" in out
    assert np.array_equal(cv2.imread(str(output))[45, 5], np.array(detections.colour(1)))


def test_detections_of_a_real_forward_go_next_to_the_checkpoint(det_checkpoint, capsys, tmp_path):
    from tools import detections
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (60, 90, 3)).astype(np.uint8))
    status, out, err = tool(detections, [det_checkpoint, path, "--score-threshold", 0], capsys)
    assert status == 0, err
    expected = os.path.join(os.path.dirname(det_checkpoint), "checkpoint_detections_photo.png")
    assert f"wrote {expected}" in out
    assert cv2.imread(expected).shape == (480, 720, 3)  # enlarged: the shorter side to 480


def test_category_names_follow_the_label_mapping():
    from types import SimpleNamespace

    from tools.detections import category_names
    cats = {1: {"name": "box"}, 3: {"name": "triangle"}, 7: {"name": "bar"}}
    val_set = SimpleNamespace(coco=SimpleNamespace(cats=cats))
    assert category_names(val_set, 4) == {1: "box", 2: "triangle", 3: "bar"}
    assert category_names(val_set, 8) == {1: "box", 3: "triangle", 7: "bar"}  # labels_as_ids heads


@pytest.mark.parametrize("argv, expected", [
    (["--index", 99], "--index 99 out of range: the fake validation set has 8 images (0..7)"),
    ([], "give an image file or --index"),
    (["missing.png"], "image file not found: missing.png"),
    (["--index", 0, "--score-threshold", 2], "--score-threshold and --alpha must lie in [0, 1]"),
])
def test_detections_errors_are_one_line(det_checkpoint, capsys, argv, expected):
    from tools import detections
    status, out, err = tool(detections, [det_checkpoint, *argv], capsys)
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_each_tool_refuses_the_other_task(det_checkpoint, reid_checkpoint, capsys):
    from tools import detections
    status, _, err = tool(detections, [reid_checkpoint, "--index", 0], capsys)
    assert status == 2 and "is a reid checkpoint, not a detection one: use it with train_reid.py" in err
    status, _, err = tool(retrieval, [det_checkpoint, "--query", 0], capsys)
    assert status == 2 and "is a detection checkpoint, not a reid one: use it with train_det.py" in err


def test_retrieval_of_a_video_checkpoint_ranks_tracklets(capsys, tmp_path):
    from models.reid import tracklet_feature
    torch.manual_seed(0)
    model = build_model("reid_video", 18, num_classes=8, nl_type="snl", nl_nums=1).eval()
    args = dict(task="reid", dataset="fakevideo", img_size=list(REID_SIZE), seq_len=2, test_sampling="evenly")
    path = save_checkpoint(tmp_path / "video.pth.tar", model, args)
    status, out, err = tool(retrieval, [path, "--query", 2, "--top-k", 5, "--display-height", 32], capsys)
    assert status == 0, err
    _, query_set, gallery_set, _ = build_reid_datasets("fakevideo", None, img_size=REID_SIZE, seq_len=2,
                                                       test_sampling="evenly")
    with torch.no_grad():
        qf = tracklet_feature(model, query_set[2][0])[None]
        gf = torch.stack([tracklet_feature(model, gallery_set[i][0]) for i in range(len(gallery_set))])
    order = np.argsort(pairwise_distances(qf, gf)[0].numpy(), kind="stable")[:5]
    expected = "".join("+" if gallery_set.pids[i] == query_set.pids[2] else "-" for i in order)
    assert f"top 5 of {len(gallery_set)} gallery entries by euclidean distance: {expected} (" in out
    assert (tmp_path / "video_retrieval_fakevideo_q2.png").exists()
    status, out, err = tool(retrieval, [path, "--query-file", "x.png"], capsys)
    assert status == 2 and "a video checkpoint ranks tracklets" in err
