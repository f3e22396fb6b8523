"""Short synthetic trainings of the pose and 3D models: do they find what was planted?

Issue 13's proof beyond the unit tests. Two cases, run at once (one GPU, or
the CPU with `--quick`), each in its own process, each evaluated at four
points of its run:

- `pose`: `CenterNetPose` (ResNet-18 at planes 32 with 128-64-64
  up-convolutions, the demo's `resnet18_small` body) on the synthetic
  stick-figure set (`kc.data.render_synthetic_pose`, 128 px, 1-3 people),
  with the official flip (left/right joints swapped) as its only
  augmentation. Scored on 128 held-out images by pycocotools' keypoint
  evaluation (OKS AP, AP50), the box AP50 of the same people, and the share
  of labelled joints found: a ground-truth person matched to a detection
  (box IoU >= 0.5, by score) whose joint lies within 0.1 x the person's box
  height of the truth (PCK@0.1).
- `ddd`: `CenterNet3D` (the same body) on a synthetic street made here:
  boxes of KITTI's mean car, pedestrian and cyclist dimensions (+-10 %) on a
  ground plane 1.65 m below a pinhole camera (f = 128 px on a 128 px image),
  4-25 m away, any heading, drawn face by face with a bright front face so
  that the heading is visible all round. Scored on 128 held-out scenes: 2D
  box AP50, and at detections matched to a ground-truth object (IoU >= 0.5,
  same class): the depth error (median absolute and relative), the
  dimension error, the heading error `|rotation_y|` (median degrees, and
  KITTI's orientation similarity `(1 + cos) / 2`) and the 3D centre error.
  A constant guess of the median depth is given for reference.

    KERAS_BACKEND=jax python benchmarks/pose_3d.py --output $OUT/pose_3d.md  # GPU
    KERAS_BACKEND=jax python benchmarks/pose_3d.py --quick --output /tmp/p.md  # CPU smoke

Both train with Adam (1e-3, cosine with 3 warm-up epochs) at batch 32 from
random weights. The table is written when both cases end or the time budget
is spent; a case cut off reports the points it reached.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

IMAGE_SIZE = 128
MAX_OBJECTS = 8
FOCAL = 128.0
CAMERA_HEIGHT = 1.65
CALIBRATION = np.array([[FOCAL, 0, IMAGE_SIZE / 2, 0], [0, FOCAL, IMAGE_SIZE / 2, 0], [0, 0, 1, 0]],
                       "float32")
# KITTI's mean (h, w, l) in metres of Car, Pedestrian, Cyclist; the class colours.
DIMENSIONS = np.array([[1.53, 1.63, 3.88], [1.76, 0.66, 0.84], [1.74, 0.60, 1.76]], "float32")
COLOURS = np.array([[200, 40, 40], [40, 80, 210], [40, 170, 60]], "float32")
# Corner indices of the faces of a KITTI box (corners as `box_corners`), with
# their shade; the bottom is never seen from above the ground.
FACES = (((0, 1, 5, 4), "front"), ((2, 3, 7, 6), 0.5), ((0, 3, 7, 4), 0.75),
         ((1, 2, 6, 5), 0.75), ((4, 5, 6, 7), 1.0))


# === The synthetic street (NumPy) ===

def box_corners(dimensions, location, rotation_y):
    """(8, 3) corners of a KITTI box: location is the bottom centre, y down."""
    h, w, l = dimensions
    x = np.array([l, l, -l, -l, l, l, -l, -l]) / 2
    y = np.array([0, 0, 0, 0, -h, -h, -h, -h])
    z = np.array([w, -w, -w, w, w, -w, -w, w]) / 2
    c, s = math.cos(rotation_y), math.sin(rotation_y)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return (rotation @ np.stack([x, y, z])).T + np.asarray(location)


def project(points):
    return points[:, :2] * FOCAL / points[:, 2:3] + IMAGE_SIZE / 2


def fill_convex(image, polygon, colour):
    """Fills a convex polygon (pixel coordinates, any winding) in place."""
    x0, y0 = np.floor(polygon.min(0)).astype(int)
    x1, y1 = np.ceil(polygon.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, IMAGE_SIZE), min(y1, IMAGE_SIZE)
    if x1 <= x0 or y1 <= y0:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    edges = np.roll(polygon, -1, axis=0) - polygon
    cross = (edges[:, 0, None, None] * (ys[None] - polygon[:, 1, None, None])
             - edges[:, 1, None, None] * (xs[None] - polygon[:, 0, None, None]))
    inside = (cross >= 0).all(0) | (cross <= 0).all(0)
    image[y0:y1, x0:x1][inside] = colour


def render_street(index, seed):
    """One scene: image uint8 (S, S, 3) and its objects (the CenterNet3D targets)."""
    rng = np.random.default_rng([seed, index])
    size = IMAGE_SIZE
    rows = np.arange(size, dtype="float32")[:, None, None]
    sky = np.array([150, 190, 230], "float32") - rows * 0.4
    ground = np.array([95, 95, 90], "float32") + (rows - size / 2) * 0.3
    image = np.where(rows < size / 2, sky, ground) * np.ones((1, size, 1), "float32")
    image += rng.normal(0, 6, image.shape)
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(0, 3))
        dims = DIMENSIONS[label] * rng.uniform(0.9, 1.1, 3)
        z = rng.uniform(4.0, 25.0)
        location = np.array([rng.uniform(-0.4, 0.4) * z, CAMERA_HEIGHT, z])
        # No two boxes in the same place on the ground.
        if any(np.hypot(*(location - o["location"])[[0, 2]]) < (dims[2] + o["dims"][2]) / 2 + 0.5
               for o in objects):
            continue
        objects.append({"label": label, "dims": dims, "location": location,
                        "rotation_y": rng.uniform(-math.pi, math.pi)})
    kept = []
    for obj in sorted(objects, key=lambda o: -o["location"][2]):  # far to near
        corners = box_corners(obj["dims"], obj["location"], obj["rotation_y"])
        pixels = project(corners)
        centre = corners.mean(0)
        for face, shade in FACES:
            face_centre = corners[list(face)].mean(0)
            normal = face_centre - centre
            if normal @ face_centre >= 0:  # facing away from the camera
                continue
            colour = (COLOURS[obj["label"]] * 0.4 + 150 if shade == "front"
                      else COLOURS[obj["label"]] * shade)
            fill_convex(image, pixels[list(face)], colour + rng.normal(0, 4, 3))
        x1, y1 = pixels.min(0)
        x2, y2 = pixels.max(0)
        clipped = np.clip([x1, y1, x2, y2], 0, size)
        area = (x2 - x1) * (y2 - y1)
        clipped_area = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
        if clipped_area < 0.5 * area or clipped[3] - clipped[1] < 4:
            continue
        u = (clipped[0] + clipped[2]) / 2
        alpha = obj["rotation_y"] - math.atan2(u - size / 2, FOCAL)
        kept.append({**obj, "box": clipped, "alpha": math.atan2(math.sin(alpha), math.cos(alpha))})
    image = np.clip(np.round(image), 0, 255).astype("uint8")
    kept.sort(key=lambda o: o["location"][2])  # nearest first
    return image, kept[:MAX_OBJECTS]


def street_set(count, seed):
    images = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE, 3), "float32")
    y = {"boxes": np.zeros((count, MAX_OBJECTS, 4), "float32"),
         "labels": np.full((count, MAX_OBJECTS), -1, "int32"),
         "depth": np.zeros((count, MAX_OBJECTS), "float32"),
         "dimensions": np.zeros((count, MAX_OBJECTS, 3), "float32"),
         "alpha": np.zeros((count, MAX_OBJECTS), "float32"),
         "rotation_y": np.zeros((count, MAX_OBJECTS), "float32"),
         "locations": np.zeros((count, MAX_OBJECTS, 3), "float32")}
    for i in range(count):
        images[i], objects = render_street(i, seed)
        for k, obj in enumerate(objects):
            y["boxes"][i, k] = obj["box"]
            y["labels"][i, k] = obj["label"]
            y["depth"][i, k] = obj["location"][2]
            y["dimensions"][i, k] = obj["dims"]
            y["alpha"][i, k] = obj["alpha"]
            y["rotation_y"][i, k] = obj["rotation_y"]
            y["locations"][i, k] = obj["location"]
    return images, y


def synthetic_pose_module():
    """`keras_centernet/data/synthetic_pose.py` (NumPy) without `keras_centernet.data`'s TensorFlow.

    The GPU machine has no TensorFlow, which the package of the readers imports.
    """
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "keras_centernet", "data",
                        "synthetic_pose.py")
    spec = importlib.util.spec_from_file_location("synthetic_pose_numpy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def coco_ground_truth(objects_per_image, categories):
    """The pycocotools dict of `IMAGE_SIZE` images (ids `index + 1`), as `kc.data`'s helper."""
    images, annotations = [], []
    for index, objects in enumerate(objects_per_image):
        images.append({"id": index + 1, "file_name": f"{index}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for item in objects:
            x1, y1, x2, y2 = (float(v) for v in item["box"])
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": int(item["category_id"]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, **item.get("fields", {})})
    return {"images": images, "annotations": annotations, "categories": categories}


def pose_set(count, seed):
    render_synthetic_pose = synthetic_pose_module().render_synthetic_pose

    images = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE, 3), "float32")
    y = {"boxes": np.zeros((count, MAX_OBJECTS, 4), "float32"),
         "labels": np.full((count, MAX_OBJECTS), -1, "int32"),
         "keypoints": np.zeros((count, MAX_OBJECTS, 17, 3), "float32")}
    for i in range(count):
        images[i], boxes, keypoints = render_synthetic_pose(i, IMAGE_SIZE, seed=seed)
        n = min(len(boxes), MAX_OBJECTS)
        y["boxes"][i, :n], y["keypoints"][i, :n] = boxes[:n], keypoints[:n]
        y["labels"][i, :n] = 0
    return images, y


# === Scoring ===

def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def matches(out, y, score_threshold=0.1):
    """(image, truth slot, detection slot) pairs: greedy by score, IoU >= 0.5, same class."""
    pairs = []
    for i in range(len(y["labels"])):
        truths = np.flatnonzero(y["labels"][i] >= 0)
        used = set()
        for k in np.argsort(-out["scores"][i]):
            if out["scores"][i, k] <= score_threshold or out["labels"][i, k] < 0:
                continue
            candidates = [t for t in truths if t not in used and y["labels"][i, t] == out["labels"][i, k]]
            if not candidates:
                continue
            overlaps = iou(out["boxes"][i, k], y["boxes"][i, candidates])
            best = int(np.argmax(overlaps))
            if overlaps[best] >= 0.5:
                used.add(candidates[best])
                pairs.append((i, candidates[best], k))
    return pairs


def box_ap(out, y, num_classes):
    from keras_centernet.evaluation.coco_evaluator import COCOEvaluator

    ground_truth = coco_ground_truth(
        ([{"box": y["boxes"][i, t], "category_id": int(y["labels"][i, t]) + 1}
          for t in np.flatnonzero(y["labels"][i] >= 0)] for i in range(len(y["labels"]))),
        [{"id": c + 1, "name": str(c)} for c in range(num_classes)])
    evaluator = COCOEvaluator(ground_truth, label_to_category_id=list(range(1, num_classes + 1)))
    evaluator.update(np.arange(1, len(y["labels"]) + 1), out["boxes"], out["scores"], out["labels"],
                     out.get("num_detections"))
    return evaluator.result()


def predict(model, images, extra=None):
    outs = []
    for start in range(0, len(images), 64):
        batch = images[start:start + 64]
        inputs = batch if extra is None else {"images": batch, **{
            k: v[start:start + 64] for k, v in extra.items()}}
        outs.append({k: np.asarray(v) for k, v in model.predict_on_batch(inputs).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def score_pose(model, images, y):
    from keras_centernet.evaluation.keypoints import COCOKeypointEvaluator
    from keras_centernet.targets.keypoints import COCO_KEYPOINT_NAMES
    from keras_centernet.targets.keypoints import COCO_SKELETON

    out = predict(model, images)
    ground_truth = coco_ground_truth(
        ([{"box": y["boxes"][i, t], "category_id": 1,
           "fields": {"keypoints": [float(v) for v in y["keypoints"][i, t].reshape(-1)],
                      "num_keypoints": int(np.sum(y["keypoints"][i, t, :, 2] > 0))}}
          for t in np.flatnonzero(y["labels"][i] >= 0)] for i in range(len(y["labels"]))),
        [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
          "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}])
    evaluator = COCOKeypointEvaluator(ground_truth, label_to_category_id=[1])
    evaluator.update(np.arange(1, len(images) + 1), out["boxes"], out["scores"], out["labels"],
                     out["keypoints"], out.get("num_detections"))
    oks = evaluator.result()
    found = 0
    pairs = matches(out, y)
    for i, t, k in pairs:
        truth = y["keypoints"][i, t]
        height = y["boxes"][i, t, 3] - y["boxes"][i, t, 1]
        seen = truth[:, 2] > 0
        error = np.hypot(*(out["keypoints"][i, k, :, :2] - truth[:, :2]).T)
        found += int(np.sum(error[seen] <= 0.1 * height))
    labelled = int(np.sum(y["keypoints"][..., 2][y["labels"] >= 0] > 0))
    return {"OKS_AP": oks["AP"], "OKS_AP50": oks["AP50"], "box_AP50": box_ap(out, y, 1)["AP50"],
            "PCK": found / max(labelled, 1), "people_matched": len(pairs) / max(int(np.sum(y["labels"] >= 0)), 1)}


def score_ddd(model, images, y):
    calibration = np.repeat(CALIBRATION[None], len(images), 0)
    out = predict(model, images, {"calibration": calibration})
    pairs = matches(out, y)
    result = {"box_AP50": box_ap(out, y, 3)["AP50"],
              "matched": len(pairs) / max(int(np.sum(y["labels"] >= 0)), 1)}
    if not pairs:
        return result
    i, t, k = (np.array(v) for v in zip(*pairs))
    depth_true, depth = y["depth"][i, t], out["depth"][i, k]
    heading = out["rotation_y"][i, k] - y["rotation_y"][i, t]
    heading = np.abs(np.arctan2(np.sin(heading), np.cos(heading)))
    result.update({
        "depth_abs_m": float(np.median(np.abs(depth - depth_true))),
        "depth_rel": float(np.median(np.abs(depth - depth_true) / depth_true)),
        "dims_abs_m": float(np.mean(np.abs(out["dimensions"][i, k] - y["dimensions"][i, t]))),
        "heading_deg": float(np.degrees(np.median(heading))),
        "orientation_similarity": float(np.mean((1 + np.cos(heading)) / 2)),
        "centre_3d_m": float(np.median(np.linalg.norm(out["locations"][i, k] - y["locations"][i, t], axis=-1))),
        "constant_depth_abs_m": float(np.median(np.abs(np.median(depth_true) - depth_true))),
    })
    return result


# === The cases ===

def build(task):
    import keras_centernet as kc

    body = dict(backbone=kc.backbones.ResNetBackbone(depth=18, width=32),
                neck=kc.necks.UpConvNeck(filters=(128, 64, 64), use_dcn=False),
                head_channels=64, max_objects=MAX_OBJECTS)
    if task == "pose":
        return kc.CenterNetPose(flip_probability=0.5, **body)
    return kc.CenterNet3D(num_classes=3, calibration=CALIBRATION.tolist(), **body)


def run_case(task, images_count, epochs, batch):
    import keras

    from keras_centernet import training

    started = time.perf_counter()
    make = pose_set if task == "pose" else street_set
    train_images, train_y = make(images_count, seed=0)
    val_images, val_y = make(128, seed=1)
    data_seconds = time.perf_counter() - started
    model = build(task)
    steps = images_count // batch
    schedule = training.learning_rate_schedule(1e-3, steps, epochs, schedule="cosine", warmup_epochs=3.0)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    marks = sorted({max(1, epochs * k // 4) for k in (1, 2, 3, 4)})
    score = score_pose if task == "pose" else score_ddd
    fit_y = train_y if task == "pose" else {k: v for k, v in train_y.items()
                                            if k not in ("rotation_y", "locations")}
    curve = []
    started = time.perf_counter()

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 not in marks:
                return
            point = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "loss": float(logs["loss"]),
                     **score(self.model, val_images, val_y)}
            curve.append(point)
            print(json.dumps({"task": task, "curve": curve, "params": model.count_params(),
                              "images": images_count, "epochs": epochs, "batch": batch,
                              "data_seconds": round(data_seconds),
                              "seconds": round(time.perf_counter() - started)}), flush=True)

    model.fit(train_images, fit_y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[Evaluate()])


def table(result):
    curve = result.get("curve", [])
    if result["task"] == "pose":
        header = ["epoch (steps)", "loss", "OKS AP", "OKS AP50", "box AP50", "people matched",
                  "joints within 0.1 x height (PCK@0.1)"]
        rows = [[f"{p['epoch']} ({p['step']})", f"{p['loss']:.3f}", f"{p['OKS_AP']:.3f}",
                 f"{p['OKS_AP50']:.3f}", f"{p['box_AP50']:.3f}", f"{p['people_matched']:.2f}",
                 f"{p['PCK']:.3f}"] for p in curve]
    else:
        header = ["epoch (steps)", "loss", "2D box AP50", "objects matched", "depth error m (median)",
                  "relative depth error", "dimension error m (mean)", "heading error deg (median)",
                  "orientation similarity", "3D centre error m (median)", "constant-depth guess error m"]
        rows = [[f"{p['epoch']} ({p['step']})", f"{p['loss']:.3f}", f"{p['box_AP50']:.3f}",
                 f"{p['matched']:.2f}"] + [f"{p[k]:.3f}" if k in p else "n/a" for k in (
                     "depth_abs_m", "depth_rel", "dims_abs_m", "heading_deg", "orientation_similarity",
                     "centre_3d_m", "constant_depth_abs_m")] for p in curve]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows] or ["| failed: no point reached |"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "pose_3d.md"))
    parser.add_argument("--tasks", nargs="+", choices=("pose", "ddd"), default=["pose", "ddd"])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds both cases may take")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 64 images, 2 epochs")
    parser.add_argument("--case", choices=("pose", "ddd"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs, args.batch = 64, 2, 16
    if args.case:
        run_case(args.case, args.images, args.epochs, args.batch)
        return
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.4")
    command = [sys.executable, os.path.abspath(__file__), "--images", str(args.images),
               "--epochs", str(args.epochs), "--batch", str(args.batch)]
    processes = {task: subprocess.Popen(command + ["--case", task], env=env, stdout=subprocess.PIPE,
                                        text=True) for task in args.tasks}
    deadline = time.monotonic() + args.budget
    results = {}
    for task, process in processes.items():
        try:
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        results[task] = json.loads(lines[-1]) if lines else {"task": task, "curve": []}
    import jax
    import keras

    text = [
        "# Pose and 3D: short synthetic trainings (`benchmarks/pose_3d.py`)",
        "",
        f"Device: {jax.devices()[0].device_kind}, JAX {jax.__version__}, Keras {keras.__version__}; "
        "both cases at once. The script's docstring says how each figure is taken. One run each.",
        "",
    ]
    titles = {"pose": "`CenterNetPose` on the synthetic stick figures",
              "ddd": "`CenterNet3D` on the synthetic street"}
    for task, result in results.items():
        text += [f"## {titles[task]}", ""]
        if result.get("curve"):
            text += [f"{result['images']} training images, {result['epochs']} epochs of batch "
                     f"{result['batch']}, {result['params']} parameters, "
                     f"{result['seconds']} s of training (+ {result['data_seconds']} s making the data).", ""]
        text += table(result) + [""]
    common.write_text(args.output, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
