"""The training losses of both stages (Rombach et al. 2022, eq. 1 and eq. 25 / App. G).

First stage (the reference's `LPIPSWithDiscriminator` / `VQLPIPSWithDiscriminator`, taming-transformers
and latent-diffusion `ldm/modules/losses`):
    L = L_rec(x, D(E(x))) - L_adv(D(E(x))) + log D_psi(x) + L_reg
with L_rec = L1 + LPIPS (VGG16 features), a PatchGAN discriminator D_psi trained with the hinge
loss, the adversarial term weighted adaptively (Esser et al. 2021, eq. 7) and switched on after
`disc_start` steps, and L_reg = a small KL to N(0, I) (weight ~1e-6) or the VQ codebook loss.
Second stage: ||target - model(z_t, t, c)||^2 with target eps (eq. 1) or v (Salimans & Ho 2022).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("core.train")


# --------------------------------------------------------------------------------------------
# Diffusion (second stage)
# --------------------------------------------------------------------------------------------

def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, for x0, noise (B, C, H, W) and integer t (B,)."""
    a = alphas_cumprod[t].to(x0.dtype)[:, None, None, None]                      # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def offset_noise(noise: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """eps plus `strength` times one N(0, 1) value per sample and channel (Guttenberg 2023, "Diffusion
    with Offset Noise"). The schedule's last step keeps sqrt(abar_T) of the image (0.07 for SD's), so a
    model trained on plain eps learns that pure noise's per-channel mean is the image's: sampling from
    zero-mean noise then lands on the mean tone (grey where the data is white, black or grey) and the
    objects drawn on it come out vague. With the offset the model learns to set the tone itself."""
    offset = torch.randn(noise.shape[:2], generator=generator).to(noise.device, noise.dtype)   # (B, C)
    return noise + strength * offset[:, :, None, None]


def diffusion_target(x0, t, noise, alphas_cumprod, parameterization: str) -> torch.Tensor:
    """What the network learns to predict: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    if parameterization == "eps":
        return noise
    if parameterization == "v":
        a = alphas_cumprod[t].to(x0.dtype)[:, None, None, None]
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over C, H, W of the squared error per sample, then over the batch (the reference's l2);
    `weight` (B,) weighs each sample's term (min_snr_weight)."""
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))     # (B,)
    return per_sample.mean() if weight is None else (weight * per_sample).mean()


def min_snr_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, parameterization: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", eq. 7-8): the x0-loss weight min(SNR_t, gamma), written for the network's target, i.e.
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v, with SNR_t = abar / (1 - abar).
    Nearly noiseless steps (SNR >> gamma), whose gradients conflict with the rest, count less."""
    a = alphas_cumprod[t].double()
    snr = a / (1 - a)                                                                # (B,)
    if parameterization == "eps":
        w = snr.clamp(max=gamma) / snr
    elif parameterization == "v":
        w = snr.clamp(max=gamma) / (snr + 1)
    else:
        raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
    return w.float()


# --------------------------------------------------------------------------------------------
# First stage: config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutoencoderLossConfig:
    """`lossconfig.params` of a CompVis first-stage YAML, with the reference's names."""
    disc_start: int = 2000              # step from which the adversarial loss is on
    kl_weight: float = 1e-6             # KL models: weight of KL(q(z|x) || N(0, I))
    codebook_weight: float = 1.0        # VQ models: weight of the codebook + commitment loss
    pixelloss_weight: float = 1.0       # weight of L1
    pixel_l2_weight: float = 0.0        # ours: weight of a squared-error term beside L1. Without LPIPS
                                        # (no local VGG weights) L1 alone learns chroma very late: it
                                        # weighs a wrong object colour no more than background noise
    edge_weight: float = 0.0            # ours: the pixel terms weigh 1 + edge_weight * edge_map(x), so
                                        # the few pixels that carry a small shape's outline (a star's
                                        # points) count as much as the flat areas about it
    edge_gain: float = 1.0              # ours: edge_map's contrast gain; > 1 saturates the map at faint
                                        # outlines too (a purple star on grey spans a quarter of the range
                                        # a purple star on white does), so every outline weighs the same
    perceptual_weight: float = 1.0      # weight of LPIPS (only with local weights)
    disc_weight: float = 0.5            # scales the adaptive GAN weight
    disc_factor: float = 1.0            # 0 switches the GAN off entirely
    disc_num_layers: int = 3            # PatchGAN depth (3: 70x70 patches at 256 px)
    disc_in_channels: int = 3
    disc_ndf: int = 64                  # width of the first discriminator layer

    def __post_init__(self):
        if self.disc_start < 0 or self.disc_num_layers < 1 or self.disc_ndf < 1 or self.edge_weight < 0 \
                or self.edge_gain <= 0:
            raise ValueError(f"AutoencoderLossConfig: disc_start >= 0, disc_num_layers >= 1, disc_ndf >= 1, "
                             f"edge_weight >= 0 and edge_gain > 0 are needed, got {self}")


# --------------------------------------------------------------------------------------------
# PatchGAN discriminator (pix2pix / taming `NLayerDiscriminator`; key names `main.{i}`)
# --------------------------------------------------------------------------------------------

class NLayerDiscriminator(nn.Module):
    """Conv(4, s2) + LeakyReLU, then n_layers - 1 x [Conv(4, s2), BatchNorm, LeakyReLU], one more at
    stride 1, and a 1-channel Conv(4, s1): a map of real/fake logits, one per receptive-field patch."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        for m in self.modules():                     # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, H, W) -> (B, 1, h, w) logits
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll_loss, g_loss, last_layer: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """lambda = ||grad_L nll|| / (||grad_L g|| + 1e-4) at the decoder's last layer L, clamped to
    [0, 1e4], times disc_weight (Esser et al. 2021, eq. 7)."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


# --------------------------------------------------------------------------------------------
# LPIPS with VGG16 features (Zhang et al. 2018; taming's module tree, so its `vgg.pth` loads)
# --------------------------------------------------------------------------------------------

VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """d(x, y) = sum_l mean_hw( w_l . (f_l(x) - f_l(y))^2 ) over unit-normalised VGG16 features f_l;
    images in [-1, 1]; output (B, 1, 1, 1). Frozen: used only as a loss."""

    def __init__(self):
        super().__init__()
        # VGG16's convolutional part only (torchvision's `vgg16().features`, same indices); the weights
        # come from a file, and the 120M-parameter classifier is never built.
        from torchvision.models.vgg import cfgs, make_layers
        features = make_layers(cfgs["D"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.net = nn.Module()
        for k, (a, b) in enumerate(VGG_SLICES):
            part = nn.Sequential()
            for i in range(a, b):                         # torchvision's indices as keys: `net.slice2.5.weight`
                part.add_module(str(i), features[i])
            setattr(self.net, f"slice{k + 1}", part)
        for k, ch in enumerate(VGG_CHANNELS):
            setattr(self, f"lin{k}", nn.Module())
            getattr(self, f"lin{k}").model = nn.Sequential(nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)                       # always eval: its dropout stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)      # (2B, 3, H, W)
        total = 0.0
        for k in range(len(VGG_SLICES)):
            h = getattr(self.net, f"slice{k + 1}")(h)
            f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)   # unit length over channels
            fx, fy = f.chunk(2)
            d = getattr(self, f"lin{k}").model((fx - fy).pow(2))         # (B, 1, h, w)
            total = total + d.mean(dim=(2, 3), keepdim=True)
        return total                                                     # (B, 1, 1, 1)


def _lpips_key(key: str) -> str | None:
    """Map a key of taming's vgg.pth / LPIPS, or of torchvision's vgg16 file, to ours."""
    for prefix in ("loss.perceptual_loss.", "perceptual_loss."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("scaling_layer."):
        return key[len("scaling_layer."):]
    if key.startswith(("lin", "net.slice")):
        return key
    if key.startswith("features."):                         # torchvision: features.{i}.weight
        index = int(key.split(".")[1])
        for k, (a, b) in enumerate(VGG_SLICES):
            if a <= index < b:
                return f"net.slice{k + 1}.{key[len('features.'):]}"
    return None


def build_lpips(weight_files) -> LPIPS | None:
    """LPIPS from local weight files (taming's `vgg.pth` with lin*, plus VGG16 features either in the
    same file as `net.slice*` or in torchvision's vgg16 file as `features.*`); None without files."""
    if not weight_files:
        log.info("LPIPS perceptual loss is off: no local weights given (train.lpips_weights: taming's "
                 "vgg.pth and torchvision's vgg16 file). Training continues with L1 + GAN + regulariser.")
        return None
    if isinstance(weight_files, (str, Path)):
        weight_files = [weight_files]
    from core.checkpoints import read_checkpoint
    model = LPIPS()
    expected = set(model.state_dict())
    sd = {}
    for path in weight_files:
        tensors, _ = read_checkpoint(path)
        sd.update({new: v for k, v in tensors.items() if (new := _lpips_key(k)) in expected})
    missing = sorted(expected - set(sd))
    if any(not k.startswith(("shift", "scale")) for k in missing):
        raise ValueError(f"LPIPS weights incomplete: {len(missing)} tensors missing, e.g. {missing[:4]}; give "
                         "taming's vgg.pth (lin0..lin4) and VGG16 features (torchvision's vgg16 file)")
    model.load_state_dict({**model.state_dict(), **sd})
    log.info("LPIPS perceptual loss on (weights from %s)", ", ".join(str(p) for p in weight_files))
    return model


# --------------------------------------------------------------------------------------------
# The first-stage generator objective (eq. 25)
# --------------------------------------------------------------------------------------------

def edge_map(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, 1, H, W) in [0, 1]: half the largest per-channel range (max - min)
    of each pixel's 3x3 neighbourhood times `gain`, so 0 on flat areas and up to 1 on both sides of an edge."""
    spread = F.max_pool2d(x, 3, 1, 1) + F.max_pool2d(-x, 3, 1, 1)              # max - min
    return (gain * spread.amax(dim=1, keepdim=True) / 2).clamp(0.0, 1.0)


def autoencoder_loss(x, rec, reg, cfg: AutoencoderLossConfig, kind: str, lpips: LPIPS | None,
                     disc: nn.Module | None, last_layer: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """The autoencoder's loss and its logged terms.

    x, rec: (B, 3, H, W) in [-1, 1]; reg: KL per sample (B,) for kind 'kl', or the VQ codebook loss
    (scalar) for 'vq'; disc: the discriminator when the adversarial term is on, else None.
    KL models sum the per-pixel loss and average over the batch (the KL is a sum too, so 1e-6 is
    small); VQ models take the mean, as the two reference losses do.
    """
    x, rec = x.float(), rec.float()
    diff = x - rec
    rec_loss = diff.abs()                                                       # (B, 3, H, W)
    p_loss = lpips(x, rec) if lpips is not None else torch.zeros((), device=x.device)
    pixel = cfg.pixelloss_weight * rec_loss
    if cfg.pixel_l2_weight:
        pixel = pixel + cfg.pixel_l2_weight * diff.pow(2)
    if cfg.edge_weight:
        pixel = pixel * (1 + cfg.edge_weight * edge_map(x, cfg.edge_gain))
    per_pixel = pixel + cfg.perceptual_weight * p_loss
    if kind == "kl":
        nll = per_pixel.sum() / x.shape[0]
        reg_term = cfg.kl_weight * reg.mean()
    else:
        nll = per_pixel.mean()
        reg_term = cfg.codebook_weight * reg
    loss = nll + reg_term
    terms = {"l1": rec_loss.mean().item(), "nll": nll.item(), ("kl" if kind == "kl" else "codebook"): reg.mean().item()}
    if lpips is not None:
        terms["lpips"] = p_loss.mean().item()
    if disc is not None:
        g_loss = -disc(rec).float().mean()
        d_weight = adaptive_gan_weight(nll, g_loss, last_layer, cfg.disc_weight)
        loss = loss + d_weight * cfg.disc_factor * g_loss
        terms.update(g_loss=g_loss.item(), d_weight=d_weight.item())
    return loss, terms
