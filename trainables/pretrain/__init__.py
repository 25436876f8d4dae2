"""Self-supervised pretraining (``emotune pretrain``): the methods (masked video autoencoding, BYOL, DINO), the frozen
probe that scores an encoder, and the trial that pretrains one configuration."""

#: What a pretraining trial writes into its checkpoint (``trainables.pretrain.run``): the encoder, and beside it the
#: subjects it was pretrained on. Torch-free here: the sweep's driver reads both (``cluster.inputs``).
ENCODER_FILE = "encoder.pt"
SUBJECTS_FILE = "pretrain_subjects.json"
