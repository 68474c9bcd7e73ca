"""Record the reference outputs of the tiny SDXL models with Stability's own `sgm` code.

NOT part of the test run and never imported by the product: it needs a throwaway environment with
the reference code and its dependencies, e.g.

    python -m venv --system-site-packages /tmp/sgm-venv
    /tmp/sgm-venv/bin/pip install transformers omegaconf kornia pytorch-lightning
    git -C <generative-models checkout> archive HEAD sgm | tar -x -C /tmp/gm
    cd /work/wt-sdxl && PYTHONPATH=/tmp/gm:. /tmp/sgm-venv/bin/python tests/data/sgm/record_reference.py

It builds the sgm modules (GeneralConditioner with HF CLIPTextModel / open_clip / ConcatTimestepEmbedderND,
UNetModel, DiscreteDenoiser, EulerEDMSampler, DPMPP2MSampler) for the tiny "sdxl" and "sdxl_refiner"
families of tests/tiny_models.py, loads OUR tiny models' weights into them (original key layout), and
writes their outputs to tests/data/sgm/reference.safetensors for tests/test_sdxl.py. Latents are 16x16:
at 8x8 the refiner's 4-level UNet reaches 1x1 pixels, where GroupNorm(32) over 64 channels normalises
pairs of numbers and amplifies float32 rounding ~1000-fold. Two adaptations,
both to run the 2023 reference as it ran then: open_clip >= 3 is batch-first, so the reference's
(L, N, D) permute is honoured by switching each block's MultiheadAttention to batch_first=False (as
open_clip 2.x was); the HF CLIP tokenizer is built offline from open_clip's bundled BPE files (the
same OpenAI vocabulary), with HF's CLIP settings (pad = <|endoftext|>).
"""
import gzip
import json
import sys
import tempfile
import types
from pathlib import Path

import open_clip
import torch
import yaml
from safetensors.torch import save_file



class _NoWatermark:                      # sgm.inference.helpers builds a watermarker at import; not used here
    def set_watermark(self, *args):
        pass


sys.modules.setdefault("imwatermark", types.SimpleNamespace(WatermarkEncoder=_NoWatermark))
from sgm.inference.helpers import Img2ImgDiscretizationWrapper  # noqa: E402
from sgm.models.autoencoder import AutoencoderKL
from sgm.modules.diffusionmodules.denoiser import DiscreteDenoiser
from sgm.modules.diffusionmodules.openaimodel import UNetModel
from sgm.modules.diffusionmodules.sampling import DPMPP2MSampler, EulerEDMSampler
from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
from sgm.modules.encoders.modules import (ConcatTimestepEmbedderND, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2,
                                          GeneralConditioner)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.tiny_models import FAMILIES, original_state_dict, tiny_model  # noqa: E402

OUT = Path(__file__).with_name("reference.safetensors")
PROMPTS = ["a large red circle in the center", "two small blue squares"]
STEPS, SCALE, IMG2IMG_STRENGTH = 10, 5.0, 0.6


def hf_tokenizer(folder: Path) -> CLIPTokenizer:
    """HF's CLIPTokenizer over the OpenAI BPE that open_clip bundles (no download)."""
    bpe = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}   # HF's spelling
    (folder / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1:49152 - 256 - 2 + 1]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


def sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def clip_l(params: dict, sd: dict, tokenizer) -> FrozenCLIPEmbedder:
    emb = FrozenCLIPEmbedder.__new__(FrozenCLIPEmbedder)
    torch.nn.Module.__init__(emb)
    tc = params["text_config"]
    model = CLIPTextModel(CLIPTextConfig(**tc, pad_token_id=49407, bos_token_id=49406, eos_token_id=49407,
                                         projection_dim=tc["hidden_size"]))
    weights = {k: v for k, v in sub(sd, "transformer.").items() if not k.endswith("position_ids")}
    own = model.state_dict()
    if not any(k.startswith("text_model.") for k in own):            # transformers >= 5 layout
        weights = {k.replace("text_model.", "", 1): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    emb.tokenizer, emb.transformer, emb.device, emb.max_length = tokenizer, model.eval(), "cpu", 77
    emb.layer, emb.layer_idx, emb.return_pooled = params["layer"], params["layer_idx"], False
    return emb


def openclip_bigg(params: dict, sd: dict) -> FrozenOpenCLIPEmbedder2:
    emb = FrozenOpenCLIPEmbedder2.__new__(FrozenOpenCLIPEmbedder2)
    torch.nn.Module.__init__(emb)
    vision = dict(layers=1, width=64, head_width=32, patch_size=8, image_size=16)
    model = open_clip.CLIP(embed_dim=params["embed_dim"], vision_cfg=vision, text_cfg=params["text_cfg"])
    del model.visual
    model.load_state_dict(sub(sd, "model."), strict=True)
    for block in model.transformer.resblocks:                        # open_clip 2.x: sequence-first
        block.attn.batch_first = False
    emb.model, emb.device, emb.max_length = model.eval(), "cpu", 77
    emb.return_pooled, emb.layer, emb.layer_idx, emb.legacy = True, "penultimate", 1, False
    return emb


def conditioner(family: str, sd: dict, tokenizer) -> GeneralConditioner:
    data = yaml.safe_load(FAMILIES[family])["model"]["params"]
    cond = GeneralConditioner([])
    embedders = []
    for n, entry in enumerate(data["conditioner_config"]["params"]["emb_models"]):
        name, params = entry["target"].rsplit(".", 1)[-1], entry["params"]
        own = sub(sd, f"conditioner.embedders.{n}.")
        if name == "FrozenCLIPEmbedder":
            emb = clip_l(params, own, tokenizer)
        elif name == "FrozenOpenCLIPEmbedder2":
            emb = openclip_bigg(params, own)
        else:
            emb = ConcatTimestepEmbedderND(params["outdim"])
        emb.input_key, emb.is_trainable, emb.ucg_rate, emb.legacy_ucg_val = entry["input_key"], False, 0.0, None
        embedders.append(emb)
    cond.embedders = torch.nn.ModuleList(embedders)
    return cond


def unet(family: str, sd: dict) -> OpenAIWrapper:
    params = dict(yaml.safe_load(FAMILIES[family])["model"]["params"]["network_config"]["params"])
    params.update(use_checkpoint=False, spatial_transformer_attn_type="softmax")
    net = UNetModel(**params)
    net.load_state_dict(sub(sd, "model.diffusion_model."), strict=True)
    return OpenAIWrapper(net.eval(), compile_model=False)


def batches(family: str):
    n = len(PROMPTS)
    sizes = {"original_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]]),
             "crop_coords_top_left": torch.tensor([[0, 0], [16, 32]]),
             "target_size_as_tuple": torch.tensor([[1024, 1024], [768, 1024]])}
    if family == "sdxl":    # base: the scripts zero the text embeddings for uc (force_uc_zero_embeddings)
        batch = {"txt": PROMPTS, **sizes}
        return batch, dict(batch), ["txt"]
    keep = {k: sizes[k] for k in ("original_size_as_tuple", "crop_coords_top_left")}
    batch = {"txt": PROMPTS, **keep, "aesthetic_score": torch.tensor([[6.0]] * n)}
    batch_uc = {"txt": [""] * n, **keep, "aesthetic_score": torch.tensor([[2.5]] * n)}
    return batch, batch_uc, []                      # refiner: "" with the negative aesthetic score


@torch.no_grad()
def record(family: str, tokenizer) -> dict:
    model = tiny_model(family)
    sd = original_state_dict(model, family)
    cond, net = conditioner(family, sd, tokenizer), unet(family, sd)
    denoiser = DiscreteDenoiser(
        scaling_config={"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"}, num_idx=1000,
        discretization_config={"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"})
    batch, batch_uc, zero = batches(family)
    c, uc = cond.get_unconditional_conditioning(batch, batch_uc=batch_uc, force_uc_zero_embeddings=zero)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 900])
    eps = net(x, t, c)
    x_T = torch.randn(2, 4, 16, 16, generator=g)
    out = {"weights_fingerprint": torch.stack([p.double().sum() for p in model.parameters()]).sum().float()[None],
           "c_crossattn": c["crossattn"], "c_vector": c["vector"], "uc_crossattn": uc["crossattn"],
           "uc_vector": uc["vector"], "x": x, "t": t, "eps": eps, "x_T": x_T, "denoiser_sigmas": denoiser.sigmas}
    for name, cls in (("euler", EulerEDMSampler), ("dpmpp_2m", DPMPP2MSampler)):
        sampler = cls(num_steps=STEPS, device="cpu",
                      discretization_config={"target": "sgm.modules.diffusionmodules.discretizer."
                                                       "LegacyDDPMDiscretization"},
                      guider_config={"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
                                     "params": {"scale": SCALE}})
        out[name] = sampler(lambda inp, sigma, cc: denoiser(net, inp, sigma, cc), x_T.clone(), cond=c, uc=uc)
    if family == "sdxl":
        # img2img as sgm's do_img2img: the discretisation pruned by Img2ImgDiscretizationWrapper, the
        # latent noised with the first kept sigma and divided by sqrt(1 + sigma^2) (the loop multiplies).
        sampler = EulerEDMSampler(num_steps=STEPS, device="cpu",
                                  discretization_config={"target": "sgm.modules.diffusionmodules.discretizer."
                                                                   "LegacyDDPMDiscretization"},
                                  guider_config={"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
                                                 "params": {"scale": SCALE}})
        sampler.discretization = Img2ImgDiscretizationWrapper(sampler.discretization, strength=IMG2IMG_STRENGTH)
        sigma = sampler.discretization(sampler.num_steps)[0]
        noised = (x + x_T * sigma) / torch.sqrt(1.0 + sigma ** 2)
        out["img2img_euler"] = sampler(lambda inp, s, cc: denoiser(net, inp, s, cc), noised, cond=c, uc=uc)
        # first stage: sgm's AutoencoderKL on a small latent, as DiffusionEngine.decode_first_stage
        data = yaml.safe_load(FAMILIES[family])["model"]["params"]
        vae_params = data["first_stage_config"]["params"]
        vae_params["ddconfig"]["attn_type"] = "vanilla"       # the same attention without xformers
        vae = AutoencoderKL(**vae_params).eval()
        vae.load_state_dict(sub(sd, "first_stage_model."), strict=True)
        out["vae_z"] = x[:1, :, :4, :4].contiguous()
        out["vae_decoded"] = vae.decode(out["vae_z"] / data["scale_factor"])
    if family == "sdxl":                          # zeros by construction: checked, not stored (size)
        assert not out.pop("uc_crossattn").any()
    else:                                         # the same grid as the base's
        out.pop("denoiser_sigmas")
    return {f"{family}.{k}": v.contiguous() for k, v in out.items()}


def main():
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = hf_tokenizer(Path(folder))
        tensors = {}
        for family in ("sdxl", "sdxl_refiner"):
            tensors.update(record(family, tokenizer))
    tensors["clip_l_tokens"] = tokenizer(PROMPTS + [""], padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt")["input_ids"]
    save_file(tensors, str(OUT), metadata={"prompts": json.dumps(PROMPTS), "steps": str(STEPS),
                                           "guidance_scale": str(SCALE), "img2img_strength": str(IMG2IMG_STRENGTH), "source": "Stability-AI/generative-models "
                                           "0ad7de9 (sgm), tests/data/sgm/record_reference.py"})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
