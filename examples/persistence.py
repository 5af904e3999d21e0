"""Save a fitted detector, load it elsewhere, and see what a damaged file does.

The model file holds the backbone's weights, so it loads offline and without the weights
file the detector was fitted with; a detector fitted on a GPU loads on a CPU-only machine.
Runs offline in under a minute.
"""

import os
import tempfile

import joblib
import numpy as np

from skfastflow import FastFlowDetector
from skfastflow.datasets import make_defect_images
from skfastflow.persistence import ModelFileError, load, save

good = make_defect_images(30, image_size=64, defect_fraction=0.0, random_state=0)
test = make_defect_images(10, image_size=64, defect_fraction=0.5, random_state=1)
detector = FastFlowDetector("resnet18", pre_trained=False, input_size=64, max_iter=3, random_state=0).fit(good.images)

folder = tempfile.mkdtemp()
path = os.path.join(folder, "detector.joblib")

# save writes a temporary file and renames it into place: an interrupted save never
# leaves a half-written model where the old one was.
save(detector, path)
print(f"model file: {os.path.getsize(path) / 2**20:.1f} MiB")
weights = sum(t.numel() * t.element_size() for t in detector.model_.state_dict().values())
print(f"model weights (backbone + flows): {weights / 2**20:.1f} MiB")

loaded = load(path)
assert np.array_equal(loaded.score_samples(test.images), detector.score_samples(test.images))
assert np.array_equal(loaded.predict_maps(test.images), detector.predict_maps(test.images))
print(f"loaded on {loaded.device_}: identical scores and maps")

# Plain joblib (or pickle) works too; load() adds the file's name to every error.
joblib.dump(detector, path)
assert np.array_equal(joblib.load(path).score_samples(test.images), detector.score_samples(test.images))

# A truncated copy (an interrupted download, a full disk) is refused with a clear message.
truncated = os.path.join(folder, "truncated.joblib")
with open(path, "rb") as source, open(truncated, "wb") as target:
    target.write(source.read()[: os.path.getsize(path) // 2])
try:
    load(truncated)
except ModelFileError as error:
    print(f"ModelFileError: {error}")
