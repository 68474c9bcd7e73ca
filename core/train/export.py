"""Export a run's EMA weights as a self-contained fp16 .safetensors that `core.load_model` reads.

    python -m core.train export runs/NAME --out weights/NAME.safetensors
    python -m core.train export weights/NAME.safetensors --out F [--first-stage AE] [--defaults JSON]

The second form re-exports a model file whose run is gone: the same tensors and record, with another
decoder swapped in and/or other sampling defaults.

An LDM file holds UNet + first stage + conditioner and its config (core.save_model), like a Stable
Diffusion checkpoint; an autoencoder file holds the autoencoder and its latent scale factor. The
metadata also carries (contracts.md):
    ldm_studio_name       display name
    ldm_studio_run_id     the run's identity (RunFolder.run_id): an export replaces an existing file only
                          when that file came from the same run (check_overwrite)
    ldm_studio_training   {"data", "steps", "wall_time_s", "machine", "metrics", "command"}
    ldm_studio_defaults   core.pipelines.defaults.Defaults' fields: {"sampler", "karras", "steps",
                          "guidance_scale", "eta", "width", "height", "noise_level", "back_projection"} (LDMs)

A text model trained on the shapes world keeps only the token-embedding rows of the BPE ids its
captions use (cond_stage vocab): 49408 x D rows of which ~40 were ever trained (6.3 MB of 22 MB).
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from core.checkpoints import load_model, save_model
from core.models.autoencoder import build_autoencoder
from core.models.clip_text import tokenize_clip
from core.capabilities import capabilities
from core.models.conditioners import TransformerEmbedderConfig
from core.models.diffusion import LatentDiffusion
from core.pipelines.defaults import Defaults
from core.train.checkpoint import ema_state_dict, first_stage_state_dict, load_checkpoint
from core.train.config import METADATA_SCALE_FACTOR, load_config
from core.train.data import describe_data
from core.train.run_folder import RunFolder

METADATA_RUN_ID = "ldm_studio_run_id"
DEFAULTS_KEYS = {f.name: f.type for f in dataclasses.fields(Defaults)}     # name -> str, bool, int, float


def _defaults(cfg, override: dict | None = None) -> dict:
    side = cfg.model.image_size * cfg.model.first_stage.ddconfig.downsample_factor
    guided = capabilities(cfg.model).guidance                         # has an unconditional embedding for CFG
    defaults = {"sampler": "ddim", "karras": False, "steps": 50, "guidance_scale": 3.0 if guided else 1.0,
                "eta": 0.0, "width": side, "height": side}
    return _merge_defaults(defaults, {**dict(cfg.export.get("defaults") or {}), **(override or {})})


def _merge_defaults(defaults: dict, given: dict) -> dict:
    """defaults updated by `given`, each value cast to its Defaults field's type; unknown keys raise."""
    unknown = sorted(set(given) - set(DEFAULTS_KEYS))
    if unknown:
        raise ValueError(f"sampling defaults have unknown keys {unknown}; valid: {sorted(DEFAULTS_KEYS)}")
    return {**defaults, **{k: DEFAULTS_KEYS[k](v) for k, v in given.items()}}


def shapes_vocab(n_captions: int = 4000) -> tuple[int, ...]:
    """The BPE ids of shapes-world captions (every word of the grammar appears in a few thousand),
    with the pad id 0 first: the rows a text encoder trained on the shapes world has learnt."""
    from core.world import caption, random_scene
    texts = [caption(random_scene(np.random.default_rng([7, i]))) for i in range(n_captions)] + [""]
    ids = set(tokenize_clip(texts, 77, pad_id=0).unique().tolist()) - {0}
    return (0, *sorted(ids))


def compact_vocab(model_cfg, sd: dict) -> tuple:
    """(model config, state dict) with the text encoder's token embedding cut to shapes_vocab()."""
    vocab = shapes_vocab()
    key = "cond_stage_model.transformer.token_emb.weight"
    sd = {**sd, key: sd[key][torch.tensor(vocab)]}
    cond = dataclasses.replace(model_cfg.cond_stage, vocab=vocab, vocab_size=len(vocab))
    return dataclasses.replace(model_cfg, cond_stage=cond), sd


def swap_decoder(sd: dict, first_stage: str | Path) -> dict:
    """An LDM state dict with the first stage of `first_stage` (an autoencoder file or run folder) in
    place of its own. Only a decoder may differ: the encoder (and quant_conv) must be the one the LDM
    was trained on, up to fp16 rounding, else its latent space would not be the LDM's."""
    new = first_stage_state_dict(first_stage)
    prefix = "first_stage_model."
    own = {k[len(prefix):] for k in sd if k.startswith(prefix)}
    if set(new) != own:
        raise ValueError(f"{first_stage} is not an autoencoder of this LDM's architecture "
                         f"({len(own ^ set(new))} keys differ)")
    changed = [k for k in new if k.startswith(("encoder.", "quant_conv."))
               and not torch.equal(new[k].half(), sd[prefix + k].half())]
    if changed:
        raise ValueError(f"{first_stage} has another encoder than the one this LDM was trained on ({len(changed)} "
                         f"tensors differ, e.g. {changed[0]}): its latents are not this LDM's. Only a decoder "
                         "fine-tuned with train.freeze_encoder can be swapped in")
    return {**sd, **{prefix + k: v for k, v in new.items()}}


def file_metadata(path: str | Path) -> dict:
    """A .safetensors file's metadata (the header only, no tensors); {} when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (OSError, SafetensorError):
        return {}


def exported_from(path: str | Path, run_id: str | None) -> bool:
    """Whether the model file `path` exists and was exported from the run `run_id`."""
    return run_id is not None and Path(path).is_file() and file_metadata(path).get(METADATA_RUN_ID) == run_id


def check_overwrite(out: Path, run_id: str | None) -> None:
    """Refuse to replace `out` unless it was exported from the run `run_id`: a run named like a
    shipped model (or any file copied into weights/) must never overwrite it."""
    if not out.exists() or exported_from(out, run_id):
        return
    meta = file_metadata(out)
    what = f"the model {meta['ldm_studio_name']!r}" if meta.get("ldm_studio_name") else "a model"
    raise ValueError(f"{out} already holds {what}, which was not exported from this run, so it is left as it is. "
                     f"Export under another file name (python -m core.train export RUN --out OTHER.safetensors), "
                     f"or move {out.name} out of {out.parent} first if you mean to replace it.")


def last_checkpoint(run_dir, out) -> tuple[RunFolder, str, dict]:
    """(the run, its id, its last checkpoint) to export to `out`: refused when the run has no checkpoint
    yet or `out` holds a file of another run (check_overwrite)."""
    run = RunFolder(run_dir)
    if not run.checkpoint_path.exists():
        raise FileNotFoundError(f"{run.path} has no checkpoint yet ({run.checkpoint_path}); train first")
    run_id = run.run_id()
    check_overwrite(Path(out), run_id)
    return run, run_id, load_checkpoint(run.checkpoint_path)


def export_run(run_dir: str | Path, out: str | Path, name: str | None = None,
               dtype: torch.dtype = torch.float16, defaults: dict | None = None,
               first_stage: str | Path | None = None) -> Path:
    """Write the EMA weights of `run_dir`'s last checkpoint to `out`; returns the path.

    defaults: sampling defaults stored with an LDM, over the config's export.defaults (for instance
    the guidance scale an evaluation found best). first_stage: an LDM's first stage taken from this
    autoencoder instead (a decoder fine-tuned on the same, frozen, encoder; swap_decoder)."""
    run, run_id, ckpt = last_checkpoint(run_dir, out)
    out = Path(out)
    cfg = load_config(ckpt["config"])
    sd = ema_state_dict(ckpt)
    record = {"data": describe_data(cfg.data), "steps": int(ckpt["step"]),
              "wall_time_s": round(float(ckpt.get("wall_time_s", 0.0)), 1), "machine": ckpt.get("machine", ""),
              "metrics": ckpt.get("metrics", {}), "command": " && ".join(dict.fromkeys(ckpt.get("commands", [])))}
    metadata = {"ldm_studio_name": name or cfg.export.get("name") or run.name, METADATA_RUN_ID: run_id}
    if cfg.stage == "autoencoder":
        if first_stage is not None:
            raise ValueError("first_stage= replaces an LDM's decoder; this run is an autoencoder")
        model = build_autoencoder(cfg.model)
        model.load_state_dict(sd)
        if ckpt.get("scale_factor") is None:
            raise ValueError(f"{run.checkpoint_path} has no latent scale factor; resume the run for a step to add it")
        metadata[METADATA_SCALE_FACTOR] = repr(float(ckpt["scale_factor"]))
        record["metrics"] = {**record["metrics"], "scale_factor": float(ckpt["scale_factor"])}
    else:
        if first_stage is not None:
            sd = swap_decoder(sd, first_stage)
            record["first_stage"] = f"decoder from {first_stage} (same encoder)"
        model_cfg = cfg.model
        cond = model_cfg.cond_stage
        if (isinstance(cond, TransformerEmbedderConfig) and cond.tokenizer == "clip" and cond.vocab is None
                and cfg.data.source == "shapes"):
            model_cfg, sd = compact_vocab(model_cfg, sd)
            record["vocab"] = f"{cond.vocab_size} -> {model_cfg.cond_stage.vocab_size} token rows (shapes-world captions)"
        model = LatentDiffusion(model_cfg)
        model.load_state_dict(sd)
        metadata["ldm_studio_defaults"] = json.dumps(_defaults(cfg, defaults))
    metadata["ldm_studio_training"] = json.dumps(record)
    return save_model(model, out, dtype=dtype, metadata=metadata)


def reexport_file(src: str | Path, out: str | Path, name: str | None = None, defaults: dict | None = None,
                  first_stage: str | Path | None = None) -> Path:
    """Rewrite an exported LDM file (its run folder gone) with another decoder and/or other sampling
    defaults: the other tensors, the config and the training record stay; the record notes the change."""
    if first_stage is None and not defaults and name is None:
        raise ValueError("nothing to change: give --first-stage, --defaults or --name")
    model = load_model(src, dtype=torch.float32)                # one read: the metadata comes with it
    metadata = model.metadata
    if Path(out).resolve() != Path(src).resolve():
        check_overwrite(Path(out), metadata.get(METADATA_RUN_ID))
    if "ldm_studio_defaults" not in metadata:
        raise ValueError(f"{Path(src).name} is not an LDM file exported by this project (no ldm_studio_defaults); "
                         "re-export works on those, export a run folder otherwise")
    record = json.loads(metadata.get("ldm_studio_training", "{}"))
    if first_stage is not None:
        model.load_state_dict(swap_decoder(model.state_dict(), first_stage))
        record["first_stage"] = f"decoder from {first_stage} (same encoder)"
    kept = {k: v for k, v in metadata.items()                   # save_model writes the config and format anew
            if k.startswith("ldm_studio_") and k not in ("ldm_studio_config", "ldm_studio_format")}
    kept["ldm_studio_defaults"] = json.dumps(_merge_defaults(json.loads(metadata["ldm_studio_defaults"]),
                                                             defaults or {}))
    kept["ldm_studio_training"] = json.dumps(record)
    if name is not None:
        kept["ldm_studio_name"] = name
    return save_model(model, out, dtype=torch.float16, metadata=kept)
