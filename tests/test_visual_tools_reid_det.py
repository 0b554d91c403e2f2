"""tools/attention_maps.py on re-ID and detection checkpoints (issues 22 and 23): the panels are the rows of the
block's affinity, computed here in float64 from the direct formula on the block's input, which is computed here
from the image independently of the tool's loading code."""
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from direct_formulas import affinity as direct_affinity
from PIL import Image
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from models import build_model
from tools import attention_maps

REID_SIZE = (128, 64)  # ResNet-18's layer3 (stride 16) then has 8 x 4 positions


def save(path, model, args):
    """A checkpoint as train_reid.py / train_det.py write it: state_dict, model_args, args, epoch."""
    torch.save({"model_args": model.build_args, "state_dict": model.state_dict(), "epoch": 1, "args": args}, path)
    return path


def write_photo(path, height, width):
    """A gradient with a bright disc: positions differ."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    image[(xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2 < (min(height, width) / 4) ** 2] = (250, 240, 30)
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


def direct_block_affinity(block, x):
    """A (N, N) of an SNL block for its input x (1, C, *spatial) from the direct formula, in float64."""
    with torch.no_grad():
        x = x.double()
        theta = torch.einsum("oc,bc...->bo...", block.t.weight.double().flatten(1), x)
        phi = torch.einsum("oc,bc...->bo...", block.p.weight.double().flatten(1), x)
        return direct_affinity(theta, phi, True, True, False)[0]


def hooked_input(model, block, run):
    """The input block sees while run() calls the model."""
    seen = []
    handle = block.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    with torch.no_grad():
        run()
    handle.remove()
    return seen[0]


def tool(argv, capsys):
    status = attention_maps.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_panels(picture, display_width, att, cells, grid):
    """Every query panel equals panel() of the query's row of att on the shown image."""
    height, width = grid
    shown = picture[:, :display_width]
    for k, (r, c) in enumerate(cells):
        expected = attention_maps.panel(shown, att[r * width + c].numpy(), (r, c), height, width, 0.5)
        start = (k + 1) * (display_width + attention_maps.GAP)
        assert np.abs(picture[:, start:start + display_width].astype(int) - expected).mean() < 1.0
    assert (att[cells[0][0] * width + cells[0][1]] - att[cells[1][0] * width + cells[1][1]]).abs().max() > 1e-4


@pytest.mark.parametrize("backbone", ["reid", "reid_video"])
def test_attention_maps_of_a_reid_checkpoint(backbone, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(backbone, 18, 4, nl_type="snl", nl_nums=1)
    checkpoint = save(tmp_path / "model_best.pth.tar", model,
                      {"task": "reid", "dataset": "market1501", "img_size": list(REID_SIZE)})
    photo = write_photo(tmp_path / "0001_c1s1_000151_01.png", 50, 30)  # a person crop, not at the run's size
    display, queries = 64, ("0.2,0.1", "0.7,0.8")
    status, out, err = tool([checkpoint, photo, "--display-size", display, "--queries", *queries,
                             "--output-dir", tmp_path / "maps"], capsys)
    assert status == 0, err
    assert "block trunk.layer3.1: 8x4 positions" in out
    picture = cv2.imread(str(tmp_path / "maps" / "0001_c1s1_000151_01_trunk.layer3.1.png"))
    assert picture.shape == (display, 3 * display // 2 + 2 * attention_maps.GAP, 3)  # the 2:1 crop kept
    # the test images of train_reid.py: resized to (H, W), ImageNet-normalized; a video model: a one-frame clip
    pixels = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).copy()).permute(2, 0, 1)
    x = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.Resize(REID_SIZE, antialias=True)(pixels).float() / 255)
    x = x[None, None] if backbone == "reid_video" else x[None]
    block = model.eval().get_submodule("trunk.layer3.1")
    block_x = hooked_input(model, block, lambda: model(x))
    assert block_x.shape[-2:] == (8, 4) and (backbone == "reid") == (block_x.dim() == 4)
    cells = [attention_maps.query_cell(attention_maps.parse_query(q), 8, 4) for q in queries]
    check_panels(picture, display // 2, direct_block_affinity(block, block_x), cells, (8, 4))


def test_attention_maps_of_a_detection_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("maskrcnn", 18, 3, nl_type="snl", nl_nums=1, min_size=64, max_size=96)
    checkpoint = save(tmp_path / "model_best.pth.tar", model,
                      {"task": "detection", "dataset": "coco", "min_size": 64, "max_size": 96})
    # 40 x 80: resized by min(64 / 40, 96 / 80) = 1.2 to 48 x 96, padded to 64 x 96 (a multiple of 32); layer3
    # (stride 16) sees 4 x 6 positions over the padded canvas, so y = 0.9 of the image (43.2 px) is row 2, not 3
    photo = write_photo(tmp_path / "street.png", 40, 80)
    display, queries = 48, ("0.1,0.1", "0.5,0.9")
    status, out, err = tool([checkpoint, photo, "--display-size", display, "--queries", *queries,
                             "--output-dir", tmp_path / "maps"], capsys)
    assert status == 0, err
    assert "4x6 positions over the 64x96 padded input, image resized to 48x96; query cells (row, column) " \
           "(0,0) (2,3)" in out
    picture = cv2.imread(str(tmp_path / "maps" / "street_backbone.body.layer3.1.png"))
    assert picture.shape == (display, 3 * 96 + 2 * attention_maps.GAP, 3)
    image = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    block = model.eval().get_submodule("backbone.body.layer3.1")
    block_x = hooked_input(model, block, lambda: model([image]))
    assert block_x.shape[-2:] == (4, 6)
    att = direct_block_affinity(block, block_x)
    # the map covers the padded canvas: the panel is drawn there (padding black) and cropped to the image
    canvas = np.zeros((64, 96, 3), dtype=np.uint8)
    canvas[:48] = picture[:, :96]
    for k, (r, c) in enumerate([(0, 0), (2, 3)]):
        expected = attention_maps.panel(canvas, att[r * 6 + c].numpy(), (r, c), 4, 6, 0.5)[:48]
        start = (k + 1) * (96 + attention_maps.GAP)
        assert np.abs(picture[:, start:start + 96].astype(int) - expected).mean() < 1.0


def test_reid_and_detection_checkpoints_take_image_files(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("reid", 18, 4, nl_type="snl", nl_nums=1)
    checkpoint = save(tmp_path / "m.pth.tar", model, {"task": "reid", "dataset": "market1501", "img_size": [64, 32]})
    status, _, err = tool([checkpoint, "--indices", 0, "--output-dir", tmp_path], capsys)
    assert status != 0 and "takes image files" in err and "Traceback" not in err
