"""W+ Restore Face through a real ComfyUI server: workflow 1 with the restoration enabled (what
`cli run --restore` queues) runs end to end on the official photo with the random-weight PSFRGAN
of the e2e model files; the faces e4e reads are the restored ones, at the crop size."""
from __future__ import annotations

import numpy as np

from cli import prompts, workflows
from tests.e2e.test_workflows import CROP_PX, LATENT_PX, check_images, fast, fetch


def test_photo_to_image_with_restoration(server, photos):
    prompt = prompts.add_restoration(fast(workflows.load_api("wplus_1_photo_to_image")), 1.0)
    (restore,) = prompts.of_class(prompt, prompts.RESTORE_CLASS)
    (align,) = prompts.of_class(prompt, "WPlusFaceAlign")
    prompt["900"] = {"class_type": "PreviewImage", "inputs": {"images": [restore, 0]}}
    prompt["901"] = {"class_type": "PreviewImage", "inputs": {"images": [align, 0]}}
    entry = server.run(prompt, timeout=1500)
    images = fetch(server, entry)
    (save,) = prompts.of_class(prompt, "SaveImage")
    check_images(images[save], 1, (LATENT_PX, LATENT_PX), "generated image")
    check_images(images["900"], 1, (CROP_PX, CROP_PX), "restored face")
    restored, aligned = images["900"][0], images["901"][0]
    assert np.abs(restored - aligned).mean() > 2.0, "the restored face equals the aligned one"
