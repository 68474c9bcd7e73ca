"""Training throughput (images/s) of the default model sizes on this machine: one optimizer step of
the network alone (forward, backward, AdamW), fp32 vs bf16 autocast, with and without channels_last
and torch.compile.

    python bench/train_speed.py [--which ae unet] [--steps 5] [--compile]

(a) the KL-f4 autoencoders at 64x64, batch 32 (L1 + KL; the discriminator is extra, see below);
(b) the UNet of shapes-txt2img on 16x16x4 latents, batch 64, with its 32-token context.
"""
import argparse
import time

import torch

from core.models.autoencoder import AutoencoderConfig, DDConfig, build_autoencoder
from core.models.unet import UNetConfig, UNetModel
from core.train.losses import NLayerDiscriminator


def measure(step, n: int) -> float:
    step()                                                   # warm-up (oneDNN primitives, compile)
    step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def autoencoder_step(ch, mult, batch, amp, channels_last, compiled, disc):
    cfg = AutoencoderConfig("kl", 4, DDConfig(z_channels=4, resolution=64, ch=ch, ch_mult=mult, num_res_blocks=1))
    ae = build_autoencoder(cfg)
    d = NLayerDiscriminator(3, 32, 2) if disc else None
    x = torch.rand(batch, 3, 64, 64) * 2 - 1
    if channels_last:
        ae, x = ae.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    params = list(ae.parameters()) + (list(d.parameters()) if d else [])
    opt = torch.optim.AdamW(params, 1e-4)
    net = torch.compile(ae) if compiled else ae

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            rec, post = net(x)
            loss = (rec.float() - x).abs().sum() / batch + 1e-6 * post.kl().mean()
            if d is not None:
                loss = loss - d(rec).float().mean() + (d(torch.cat([x, rec.detach()]))).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in ae.parameters())


def unet_step(batch, amp, channels_last, compiled):
    cfg = UNetConfig(image_size=16, in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(2, 4), num_head_channels=32,
                     use_spatial_transformer=True, context_dim=64, legacy=False)
    unet = UNetModel(cfg)
    x, c = torch.randn(batch, 4, 16, 16), torch.randn(batch, 32, 64)
    t = torch.randint(0, 1000, (batch,))
    if channels_last:
        unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    net = torch.compile(unet) if compiled else unet

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = (net(x, t, context=c).float() - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in unet.parameters())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--which", nargs="+", default=["ae", "unet"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    variants = [(False, False, False), (True, False, False), (False, True, False), (True, True, False)]
    if args.compile:
        variants += [(False, False, True), (True, False, True)]
    if "ae" in args.which:
        for ch, mult in ((32, (1, 2, 4)), (64, (1, 2, 2))):
            for amp, cl, comp in variants:
                for disc in (False, True):
                    step, n = autoencoder_step(ch, mult, 32, amp, cl, comp, disc)
                    s = measure(step, args.steps)
                    print(f"KL-f4 AE ch {ch} mult {mult} ({n / 1e6:.2f}M) 64x64 b32 {'bf16' if amp else 'fp32'}"
                          f"{' channels_last' if cl else ''}{' compiled' if comp else ''}"
                          f"{' +disc' if disc else ''}: {s:.2f} s/step, {32 / s:.1f} img/s", flush=True)
    if "unet" in args.which:
        for amp, cl, comp in variants:
            step, n = unet_step(64, amp, cl, comp)
            s = measure(step, args.steps)
            print(f"UNet ({n / 1e6:.2f}M) 16x16x4 b64 {'bf16' if amp else 'fp32'}{' channels_last' if cl else ''}"
                  f"{' compiled' if comp else ''}: {s:.2f} s/step, {64 / s:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
