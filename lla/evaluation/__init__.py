"""Quality metrics computed outside training losses: per-frame image similarity (`frames`).

    from lla.evaluation import frames
    frames.psnr(prediction, truth)      # [..., H, W, C] in [-1, 1] -> [...] dB
    frames.ssim(prediction, truth)      # -> [...] in [-1, 1]
"""
