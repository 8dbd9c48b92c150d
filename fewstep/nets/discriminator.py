"""A small discriminator for the adversarial terms (ADD, DMD2's GAN head; seed 003). Its features are its
own, trained from scratch: never the classifier that fewstep's FD measures with (that would tune the metric)."""

from torch import nn


class Discriminator(nn.Module):
    """Real/fake logit of a clean sample: an MLP for flat data, a strided conv net for images; with classes,
    a projection discriminator (logit + <embed(y), features>)."""

    def __init__(self,
        shape,                          # One sample's shape: (dim,) or (C, H, W).
        num_classes     = 0,            # Class conditioning (projection): 0 = none.
        width           = 128,          # Hidden width (images: the last stage's channels).
    ):
        super().__init__()
        if len(shape) == 1:
            self.body = nn.Sequential(nn.Linear(shape[0], width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                      nn.Linear(width, width), nn.SiLU())
        else:
            c = [shape[0], width // 4, width // 2, width]
            layers = []
            for c_in, c_out in zip(c[:-1], c[1:]):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]
            self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, 1)
        self.label_emb = nn.Embedding(num_classes + 1, width) if num_classes else None

    def forward(self, x, class_labels=None):
        h = self.body(x)
        logit = self.head(h).flatten()
        if self.label_emb is not None and class_labels is not None:
            logit = logit + (self.label_emb(class_labels) * h).sum(1)
        return logit
