"""Quality metrics computed outside training losses: per-frame image similarity (`frames`),
FID and KID of generated images (`fid`, on features of the `inception` network, whose weights
`torchscript` reads from a TorchScript archive without torch), and of a sampler against its
own data source (`sample_quality`, behind `experiments/evaluate.py`), and whether samples
copy training images (`memorisation`, behind `experiments/evaluate.py --memorisation`).

    from lla.evaluation import frames
    frames.psnr(prediction, truth)      # [..., H, W, C] in [-1, 1] -> [...] dB
    frames.ssim(prediction, truth)      # -> [...] in [-1, 1]

    from lla.evaluation import fid, inception   # once: bash scripts/fetch_fid_weights.sh
    feats = inception.features(images)          # uint8 [N, H, W, 3] -> float32 [N, 2048]
    ref = fid.reference("fashion_mnist", 64, 10_000, load_images)  # cached features
    fid.frechet_distance(fid.statistics(feats), ref.statistics)    # FID, float64
    fid.kid(feats, ref.features)                                   # KID (mean, std)

    from lla.evaluation import sample_quality   # sample(key) -> uint8 [64, R, R, C]
    scores = sample_quality.score(sample, source, count=10_000, batch_size=64, key=key)

    from lla.evaluation import memorisation     # uint8 images, Inception features
    report = memorisation.check(samples, sample_feats, train, train_feats, held, held_feats)
    report.summary()                            # nearest-training ratios vs held-out images

The submodules are imported by name (`from lla.evaluation import fid`), so importing one
does not load the others.
"""
