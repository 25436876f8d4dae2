"""Self-supervised pretraining (``emotune pretrain``): the methods (masked video autoencoding, BYOL, DINO), the frozen
probe that scores an encoder, and the trial that pretrains one configuration."""
