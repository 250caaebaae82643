r"""Parity of the JAX FID Inception network with the TorchScript model under torch (a GPU
host with torch; issue 16 deliverable 2).

    python -m experiments.fid_parity [--count=256] [--source=procedural] \
        [--source_kwargs=resolution=64] [--weights=PATH] [--results_dir=experiments/results] \
        [--features_out=tests/evaluation/inception_torch_features.npz]

On the first `count` images of a data source (`lla.data.get_source`, uint8 RGB), two passes:

  network   both networks on the same preprocessed inputs [N, 299, 299, 3] (ours
            `inception.preprocess`, given to torch as NCHW);
  pipeline  torch: uint8 -> F.interpolate(bilinear, align_corners=False) -> x / 128 - 1 ->
            the archive's model; ours: `inception.features` (preprocess included).

Each pass reports the largest per-image relative error ‖ours − torch‖ / ‖torch‖ and the
largest elementwise |ours − torch| / max |torch|; the gate is both < 1e-3. torch runs in full
float32 (TF32 off), ours at Precision.HIGHEST. Also reported: FID(ours, torch) (about 0),
FID of the two halves of the images (small, though biased upward at N < 2048), FID against
uniform-noise images (large), and our features' throughput. Writes
`<results_dir>/<device>/fid_parity.json`, and the first 4 images with both networks' features
to `--features_out`, which `tests/evaluation/test_inception.py` compares with the CPU
network. Exits 1 when the gate fails.

Needs the weights (`bash scripts/fetch_fid_weights.sh`; the 87 MB file is over a device
call's 64 MiB carry, so bring it in two parts and `cat` them there) and torch, imported in
`main` so that this module imports without it. On the device machine point `--results_dir`
and `--features_out` under $OUT.
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np
from absl import app, flags

from experiments.benchmarking import parse_assignments, write_report
from lla import data
from lla.evaluation import fid, inception

flags.DEFINE_integer("count", 256, "images compared")
flags.DEFINE_string("source", "procedural", "data source name (lla.data.get_source)")
flags.DEFINE_list("source_kwargs", ["resolution=64"], "key=value arguments of the source")
flags.DEFINE_string("weights", None, "TorchScript archive (default: the fetch script's cache)")
flags.DEFINE_integer("batch_size", 64, "images per network call")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
flags.DEFINE_string("features_out", "tests/evaluation/inception_torch_features.npz",
                    "where the 4 stored images and features go")
FLAGS = flags.FLAGS
GATE = 1e-3
STORED = 4


def load_images(count: int, source_name: str, source_kwargs: dict) -> np.ndarray:
    """The first `count` examples of the source as uint8 RGB [count, R, R, 3]."""
    source = data.get_source(source_name, **source_kwargs)
    images = np.stack([source.example(i)[0] for i in range(count)])
    return np.broadcast_to(images, (*images.shape[:3], 3)).copy()


def errors(ours: np.ndarray, torch_out: np.ndarray) -> dict:
    """Max per-row ‖ours − torch‖/‖torch‖ and max |ours − torch| / max |torch| of [N, D]."""
    diff = ours.astype(np.float64) - torch_out
    rows = np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(torch_out, axis=1), 1e-30)
    return {"max_relative_error": float(rows.max()),
            "max_abs_error_over_max": float(np.abs(diff).max() / np.abs(torch_out).max())}


def main(argv) -> None:
    del argv
    try:
        import torch
        from torch.nn.functional import interpolate
    except ImportError:
        raise SystemExit("experiments.fid_parity compares against torch: run it where "
                         "PyTorch is installed (the GPU machine's python3)") from None

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = FLAGS.weights or str(inception.cache_dir() / inception.WEIGHTS_FILE)
    model = torch.jit.load(weights, map_location=device).eval()
    params = inception.load_params(weights)
    source_kwargs = parse_assignments(FLAGS.source_kwargs, "--source_kwargs")
    images = load_images(FLAGS.count, FLAGS.source, source_kwargs)
    batches = range(0, len(images), FLAGS.batch_size)

    @torch.inference_mode()
    def torch_run(x_nhwc: np.ndarray, resize: bool) -> np.ndarray:
        x = torch.from_numpy(x_nhwc).to(device).permute(0, 3, 1, 2).float()
        if resize:
            x = interpolate(x, size=(inception.SIZE, inception.SIZE), mode="bilinear",
                            align_corners=False) / 128 - 1
        return model(x).double().cpu().numpy()

    network = jax.jit(lambda p, x: inception.InceptionV3().apply({"params": p}, x))
    preprocess = jax.jit(inception.preprocess)
    ours_net, torch_net = [], []
    for start in batches:
        x = np.array(preprocess(images[start:start + FLAGS.batch_size]))  # writable
        ours_net.append(np.asarray(network(params, x)))
        torch_net.append(torch_run(x, resize=False))
    ours_net, torch_net = np.concatenate(ours_net), np.concatenate(torch_net)

    torch_pipe = np.concatenate([torch_run(images[s:s + FLAGS.batch_size], resize=True)
                                 for s in batches])
    ours_pipe = inception.features(images, params=params, batch_size=FLAGS.batch_size)
    start = time.perf_counter()
    inception.features(images, params=params, batch_size=FLAGS.batch_size, progress=False)
    seconds = time.perf_counter() - start

    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    noise_features = inception.features(noise, params=params, batch_size=FLAGS.batch_size)
    half = len(images) // 2
    report = {
        "device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
        "torch_version": torch.__version__, "weights": pathlib.Path(weights).name,
        "count": len(images), "source": FLAGS.source, "source_kwargs": source_kwargs,
        "image_shape": list(images.shape[1:]), "gate": GATE,
        "network": errors(ours_net, torch_net), "pipeline": errors(ours_pipe, torch_pipe),
        "fid_ours_vs_torch": fid.fid(ours_pipe, torch_pipe),
        "fid_two_halves": fid.fid(ours_pipe[:half], ours_pipe[half:]),
        "fid_vs_uniform_noise": fid.fid(ours_pipe, noise_features),
        "jax_features_images_per_s": len(images) / seconds,
    }
    report["passed"] = all(report[k]["max_relative_error"] < GATE
                           and report[k]["max_abs_error_over_max"] < GATE
                           for k in ("network", "pipeline"))
    for key, value in report.items():
        print(f"{key}: {value}")
    write_report(report, FLAGS.results_dir, "fid_parity")
    out = pathlib.Path(FLAGS.features_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images[:STORED], torch_features=torch_pipe[:STORED].astype(np.float32),
             jax_features=ours_pipe[:STORED], source=FLAGS.source,
             device_kind=report["device_kind"])
    print(f"wrote {out}")
    if not report["passed"]:
        raise SystemExit(f"parity gate failed: errors >= {GATE}")


if __name__ == "__main__":
    app.run(main)
