"""Model families (ViT, DiT, ConvSSM, LM), each exporting `Model` and presets."""
